// Packed linear layer on the CPU: y = x @ (scale[:, None] * lut[codes]).T + bias, reading the
// packed codes directly (kernels/packed_matmul.py has the layout and the torch reference).
//
// Fast path, bits 1 and 2: table lookup (the classic LUT-GEMV). A byte of a packed row holds
// C = 8 / bits codes; split it into indices of IDX bits (IDX = 8: the whole byte, or 4: a nibble),
// each covering IDX / bits consecutive inputs. For every such group of inputs and every batch
// element, a table holds the 2^IDX possible partial dot products sum_k lut[code_k] * x_k. A row's
// dot product is then in * bits / IDX table reads and adds instead of `in` multiply-adds, and the
// weights move as bits: 1/32 (1-bit) or 1/16 (2-bit) of float32's bytes.
//   tables:  (groups, 2^IDX, BC) float, BC = batch elements per pass (1..16), built per pass
//   per row: acc[BC] += table[g][index_g(row)][:]   (a vector add of BC floats per group)
// The groups are processed in tiles whose tables fit in L1/L2; the accumulators (out, BC) carry
// over from tile to tile. Rows are split over torch's threads (at::parallel_for).
//
// Generic path, any bits 1..8: each thread decodes one row at a time into a float buffer of `in`
// values (lut[code]) and takes its dot products with the batch; no weight matrix is materialised.
#include <torch/extension.h>
#include <immintrin.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

namespace {

// One call's operands; x rows have stride ldx and hold `in` values (the table paths read codes up
// to whole bytes or words: x is taken as 0 past `in`, where the padding codes sit).
struct Problem {
  const float* x; int64_t ldx, in;
  const uint8_t* W; int64_t row_bytes, out;
  const float *lut, *scale, *bias;  // bias may be null
  float* y;                          // (batch, out)
};

// Bytes of tables per tile: L2-resident on current x86 cores (the rows stream through it).
constexpr int64_t TILE_TABLE_BYTES = 256 * 1024;

// Tables for groups [g0, g0 + ng) and one pass of BC batch elements.
// x: (BC, ldx) float32, zero-padded past `in`; T: (ng, 2^IDX, BC).
template <int BITS, int IDX, int BC>
void build_tables(const float* x, int64_t ldx, const float* lut, int64_t g0, int64_t ng, float* T) {
  constexpr int ENTRIES = 1 << IDX;
  constexpr int CODES = IDX / BITS;  // inputs per group
  constexpr int LEVELS = 1 << BITS;
  at::parallel_for(0, ng, 16, [&](int64_t gb, int64_t ge) {
    for (int64_t g = gb; g < ge; ++g) {
      float* t = T + g * ENTRIES * BC;
      for (int b = 0; b < BC; ++b) t[b] = 0.0f;
      // Grow the table one code position at a time: entries [0, span) hold sums over codes
      // 0..k-1; code k with value c moves entry v to v + c * span. Bit order: code k of the group
      // is bits [k * BITS, (k + 1) * BITS) of the index, as in the packed row.
      for (int k = 0; k < CODES; ++k) {
        const int span = 1 << (k * BITS);
        float xk[BC];
        for (int b = 0; b < BC; ++b) xk[b] = x[b * ldx + (g0 + g) * CODES + k];
        for (int c = LEVELS - 1; c >= 0; --c) {  // c = 0 last: it updates the entries in place
          const float l = lut[c];
          for (int v = 0; v < span; ++v) {
            const float* src = t + v * BC;
            float* dst = t + (c * span + v) * BC;
            for (int b = 0; b < BC; ++b) dst[b] = src[b] + l * xk[b];
          }
        }
      }
    }
  });
}

// acc (out, BC) += sum over groups [g0, g0 + ng) of T[g][index_g(row)], rows split over threads.
template <int IDX, int BC>
void accumulate(const uint8_t* W, int64_t row_bytes, int64_t out, const float* T, int64_t g0,
                int64_t ng, float* acc, bool first) {
  constexpr int ENTRIES = 1 << IDX;
  constexpr int PER_BYTE = 8 / IDX;
  const int64_t byte0 = g0 / PER_BYTE, nbytes = ng / PER_BYTE;
  at::parallel_for(0, out, 64, [&](int64_t ob, int64_t oe) {
    for (int64_t o = ob; o < oe; ++o) {
      const uint8_t* w = W + o * row_bytes + byte0;
      float* a = acc + o * BC;
      if constexpr (BC == 1) {
        // Four independent sums hide the latency of the table reads.
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        int64_t i = 0;
        if constexpr (IDX == 8) {
          for (; i + 4 <= nbytes; i += 4) {
            s0 += T[(i + 0) * ENTRIES + w[i + 0]];
            s1 += T[(i + 1) * ENTRIES + w[i + 1]];
            s2 += T[(i + 2) * ENTRIES + w[i + 2]];
            s3 += T[(i + 3) * ENTRIES + w[i + 3]];
          }
          for (; i < nbytes; ++i) s0 += T[i * ENTRIES + w[i]];
        } else {
          for (; i + 2 <= nbytes; i += 2) {
            s0 += T[(2 * i + 0) * ENTRIES + (w[i] & 15)];
            s1 += T[(2 * i + 1) * ENTRIES + (w[i] >> 4)];
            s2 += T[(2 * i + 2) * ENTRIES + (w[i + 1] & 15)];
            s3 += T[(2 * i + 3) * ENTRIES + (w[i + 1] >> 4)];
          }
          for (; i < nbytes; ++i) {
            s0 += T[(2 * i) * ENTRIES + (w[i] & 15)];
            s1 += T[(2 * i + 1) * ENTRIES + (w[i] >> 4)];
          }
        }
        const float s = (s0 + s1) + (s2 + s3);
        a[0] = first ? s : a[0] + s;
      } else {
        float s[BC];
        for (int b = 0; b < BC; ++b) s[b] = first ? 0.0f : a[b];
        for (int64_t i = 0; i < nbytes; ++i) {
          if constexpr (IDX == 8) {
            const float* t = T + (i * ENTRIES + w[i]) * BC;
            for (int b = 0; b < BC; ++b) s[b] += t[b];
          } else {
            const float* lo = T + ((2 * i) * ENTRIES + (w[i] & 15)) * BC;
            const float* hi = T + ((2 * i + 1) * ENTRIES + (w[i] >> 4)) * BC;
            for (int b = 0; b < BC; ++b) s[b] += lo[b] + hi[b];
          }
        }
        for (int b = 0; b < BC; ++b) a[b] = s[b];
      }
    }
  });
}

// One pass of BC batch rows through the table path; y rows [0, BC) of the pass, (BC, out).
template <int BITS, int IDX, int BC>
void lut_pass(const float* x, int64_t ldx, int64_t rows, const uint8_t* W, int64_t row_bytes,
              int64_t out, const float* lut, const float* scale, const float* bias, float* y) {
  constexpr int ENTRIES = 1 << IDX;
  const int64_t groups = row_bytes * (8 / IDX);
  int64_t tile = std::max<int64_t>(1, TILE_TABLE_BYTES / (ENTRIES * BC * sizeof(float)));
  tile = std::min(groups, (tile + 1) / 2 * 2);  // whole bytes when IDX = 4
  std::vector<float> T(static_cast<size_t>(tile * ENTRIES * BC));
  std::vector<float> acc(static_cast<size_t>(out * BC));
  for (int64_t g0 = 0; g0 < groups; g0 += tile) {
    const int64_t ng = std::min(tile, groups - g0);
    build_tables<BITS, IDX, BC>(x, ldx, lut, g0, ng, T.data());
    accumulate<IDX, BC>(W, row_bytes, out, T.data(), g0, ng, acc.data(), g0 == 0);
  }
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t o = 0; o < out; ++o)
      y[b * out + o] = scale[o] * acc[o * BC + b] + (bias ? bias[o] : 0.0f);
}

template <int BITS, int IDX>
void lut_linear(const float* x, int64_t ldx, int64_t batch, const uint8_t* W, int64_t row_bytes,
                int64_t out, const float* lut, const float* scale, const float* bias, float* y) {
  // Passes of 16 batch rows; the last pass takes the smallest size that holds the rest. Its
  // extra rows read zeros (x is padded) and are not written.
  for (int64_t b0 = 0; b0 < batch; b0 += 16) {
    const int64_t r = std::min<int64_t>(16, batch - b0);
    const float* xb = x + b0 * ldx;
    float* yb = y + b0 * out;
    if (r == 1) lut_pass<BITS, IDX, 1>(xb, ldx, r, W, row_bytes, out, lut, scale, bias, yb);
    else if (r <= 2) lut_pass<BITS, IDX, 2>(xb, ldx, r, W, row_bytes, out, lut, scale, bias, yb);
    else if (r <= 4) lut_pass<BITS, IDX, 4>(xb, ldx, r, W, row_bytes, out, lut, scale, bias, yb);
    else if (r <= 8) lut_pass<BITS, IDX, 8>(xb, ldx, r, W, row_bytes, out, lut, scale, bias, yb);
    else lut_pass<BITS, IDX, 16>(xb, ldx, r, W, row_bytes, out, lut, scale, bias, yb);
  }
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
// AVX-512 path, bits 1, 2 and 4: 16-entry tables (one per nibble of a row: 4, 2 or 1 inputs)
// held in one zmm register each, and 16 output rows per step. A gather reads one 32-bit word
// (8 nibbles) from each of 16 rows; for nibble m, _mm512_permutexvar_ps(word >> 4m, table) looks
// up all 16 rows' partial sums at once (it reads only the low 4 bits of each lane).
//   tables: (BC, groups, 16) float, groups = 8 per word of a row
constexpr int SIMD_ROWS = 16;

// Transpose 16 x 16 int32: r[i][c] becomes r[c][i]. Stage 1 and 2 transpose 4 x 4 blocks inside
// each 128-bit lane (after them s[4i + j] lane L holds column 4L + j of rows 4i..4i+3); stage 3
// transposes the 4 x 4 grid of lanes across the vectors s[j], s[4 + j], s[8 + j], s[12 + j].
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  __m512i s[16];
  for (int i = 0; i < 4; ++i) {
    s[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    s[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    s[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    s[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512i p0 = _mm512_shuffle_i32x4(s[j], s[4 + j], 0x44);       // a0 a1 b0 b1
    const __m512i p1 = _mm512_shuffle_i32x4(s[j], s[4 + j], 0xEE);       // a2 a3 b2 b3
    const __m512i p2 = _mm512_shuffle_i32x4(s[8 + j], s[12 + j], 0x44);  // c0 c1 d0 d1
    const __m512i p3 = _mm512_shuffle_i32x4(s[8 + j], s[12 + j], 0xEE);  // c2 c3 d2 d3
    r[j] = _mm512_shuffle_i32x4(p0, p2, 0x88);       // a0 b0 c0 d0: column j
    r[4 + j] = _mm512_shuffle_i32x4(p0, p2, 0xDD);   // column 4 + j
    r[8 + j] = _mm512_shuffle_i32x4(p1, p3, 0x88);   // column 8 + j
    r[12 + j] = _mm512_shuffle_i32x4(p1, p3, 0xDD);  // column 12 + j
  }
}

template <int BITS, int BC>
void simd_pass(const Problem& P, const float* x, int64_t rows, float* y) {
  const uint8_t* W = P.W;
  const int64_t row_bytes = P.row_bytes, out = P.out, ldx = P.ldx, in = P.in;
  const float *lut = P.lut, *scale = P.scale, *bias = P.bias;
  constexpr int CODES = 4 / BITS;  // inputs per nibble
  constexpr int64_t MASK = (1 << BITS) - 1;
  const int64_t words = (row_bytes + 3) / 4;
  const int64_t groups = words * 8;
  // L[k][v]: the lut value of code k of nibble v; a table is sum_k L[k] * x_k (fixed order, fma).
  alignas(64) float L[CODES][16];
  for (int k = 0; k < CODES; ++k)
    for (int v = 0; v < 16; ++v) L[k][v] = lut[(v >> (k * BITS)) & MASK];
  std::unique_ptr<float[]> Tbuf(new float[BC * groups * 16 + 16]);  // every entry is written
  float* T = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(Tbuf.get()) + 63) & ~uintptr_t(63));
  at::parallel_for(0, groups, 64, [&](int64_t gb, int64_t ge) {
    __m512 Lv[CODES];  // in registers: stores to T cannot alias them
    for (int k = 0; k < CODES; ++k) Lv[k] = _mm512_load_ps(L[k]);
    for (int b = 0; b < BC; ++b) {
      const float* xb = x + b * ldx;
      for (int64_t g = gb; g < ge; ++g) {
        __m512 t = _mm512_setzero_ps();
        if ((g + 1) * CODES <= in) {
          for (int k = 0; k < CODES; ++k)
            t = _mm512_fmadd_ps(Lv[k], _mm512_set1_ps(xb[g * CODES + k]), t);
        } else {  // past `in`: x is 0 (the codes there are padding)
          for (int k = 0; k < CODES && g * CODES + k < in; ++k)
            t = _mm512_fmadd_ps(Lv[k], _mm512_set1_ps(xb[g * CODES + k]), t);
        }
        _mm512_store_ps(T + (b * groups + g) * 16, t);
      }
    }
  });
  const int64_t blocks = (out + SIMD_ROWS - 1) / SIMD_ROWS;
  at::parallel_for(0, blocks, 4, [&](int64_t rb, int64_t re) {
    alignas(64) int32_t offs[SIMD_ROWS];
    alignas(64) float res[SIMD_ROWS];
    for (int64_t r = rb; r < re; ++r) {
      const int64_t o0 = r * SIMD_ROWS;
      // Rows past `out` repeat the last row (valid memory); their results are not stored.
      for (int i = 0; i < SIMD_ROWS; ++i)
        offs[i] = static_cast<int32_t>((std::min(o0 + i, out - 1) - o0) * row_bytes);
      const uint8_t* base = W + o0 * row_bytes;
      // Independent sums per batch row (4 at BC = 1, 2 at BC = 2) hide the latency of the adds.
      constexpr int A = BC >= 4 ? 1 : 4 / BC;
      __m512 acc[BC][A];
      for (int b = 0; b < BC; ++b)
        for (int a = 0; a < A; ++a) acc[b][a] = _mm512_setzero_ps();
      // acc += the tables of word w, looked up with the 16 rows' words in `word`.
      auto add_word = [&](__m512i word, int64_t w) {
        const float* tw = T + w * 8 * 16;
#pragma GCC unroll 8
        for (int m = 0; m < 8; ++m) {
          const __m512i idx = _mm512_srli_epi32(word, 4 * m);
          for (int b = 0; b < BC; ++b)
            acc[b][m % A] = _mm512_add_ps(acc[b][m % A], _mm512_permutexvar_ps(
                idx, _mm512_load_ps(tw + b * groups * 16 + m * 16)));
        }
      };
      // 16 words (64 bytes) of each row: 16 row loads and a 16 x 16 transpose, so that vector c
      // holds word w + c of every row (a gather per word costs several times more). The last
      // chunk of a row is a masked load: no byte past the row is read, missing bytes are 0.
      for (int64_t w = 0; w < words; w += 16) {
        const int64_t nb = std::min<int64_t>(64, row_bytes - 4 * w);
        const __mmask64 k = nb == 64 ? ~__mmask64(0) : (__mmask64(1) << nb) - 1;
        __m512i r[16];
        for (int i = 0; i < SIMD_ROWS; ++i) r[i] = _mm512_maskz_loadu_epi8(k, base + offs[i] + 4 * w);
        transpose16(r);
        const int nw = static_cast<int>((nb + 3) / 4);
        for (int c = 0; c < nw; ++c) add_word(r[c], w + c);
      }
      const int n = static_cast<int>(std::min<int64_t>(SIMD_ROWS, out - o0));
      for (int b = 0; b < rows; ++b) {
        __m512 sum = acc[b][0];
        for (int a = 1; a < A; ++a) sum = _mm512_add_ps(sum, acc[b][a]);
        _mm512_store_ps(res, sum);
        for (int i = 0; i < n; ++i)
          y[b * out + o0 + i] = scale[o0 + i] * res[i] + (bias ? bias[o0 + i] : 0.0f);
      }
    }
  });
}

template <int BITS>
void simd_linear(const Problem& P, int64_t batch) {
  for (int64_t b0 = 0; b0 < batch; b0 += 8) {
    const int64_t r = std::min<int64_t>(8, batch - b0);
    const float* xb = P.x + b0 * P.ldx;
    float* yb = P.y + b0 * P.out;
    if (r == 1) simd_pass<BITS, 1>(P, xb, r, yb);
    else if (r <= 2) simd_pass<BITS, 2>(P, xb, r, yb);
    else if (r <= 4) simd_pass<BITS, 4>(P, xb, r, yb);
    else simd_pass<BITS, 8>(P, xb, r, yb);
  }
}
#endif  // __AVX512F__ && __AVX512BW__

// Any bits: decode a row's codes to floats (lut values), then its dot products with the batch.
void decode_linear(const float* x, int64_t ldx, int64_t batch, int64_t in, const uint8_t* W,
                   int64_t row_bytes, int64_t out, int bits, const float* lut, const float* scale,
                   const float* bias, float* y) {
  const unsigned mask = (1u << bits) - 1u;
  at::parallel_for(0, out, 16, [&](int64_t ob, int64_t oe) {
    std::vector<float> w(static_cast<size_t>(in));
    for (int64_t o = ob; o < oe; ++o) {
      const uint8_t* p = W + o * row_bytes;
      for (int64_t j = 0; j < in; ++j) {
        const int64_t bit = j * bits, byte = bit >> 3;
        unsigned v = p[byte];
        if (byte + 1 < row_bytes) v |= static_cast<unsigned>(p[byte + 1]) << 8;
        w[j] = lut[(v >> (bit & 7)) & mask];
      }
      for (int64_t b = 0; b < batch; ++b) {
        const float* xb = x + b * ldx;
        float s = 0.0f;
        for (int64_t j = 0; j < in; ++j) s += w[j] * xb[j];
        y[b * out + o] = scale[o] * s + (bias ? bias[o] : 0.0f);
      }
    }
  });
}

// x: (batch, ldx) float, zero-padded from in_features to ldx >= row_bytes * 8 / bits for the byte
// table paths (they read whole bytes of codes); packed: (out, row_bytes) uint8; lut: (2^bits,);
// scale: (out,); bias: (out,) or None; relu: y = max(y, 0) (NaN stays NaN, as torch.relu). Shapes
// are checked by the caller (packed_matmul.py); here every operand becomes contiguous float32.
// Returns y: (batch, out) float32.
torch::Tensor packed_linear_impl(torch::Tensor x, torch::Tensor packed, int64_t bits,
                                 int64_t in_features, torch::Tensor lut, torch::Tensor scale,
                                 std::optional<torch::Tensor> bias_opt, int64_t idx_bits) {
  // The Python wrapper checks everything with clear messages; these only keep a caller that skips
  // it (bench.deploy's per-call fast path) from reading out of bounds.
  TORCH_CHECK(bits >= 1 && bits <= 8 && in_features >= 0, "packed_linear: bad bits or in_features");
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= in_features && packed.dim() == 2 &&
              packed.scalar_type() == torch::kUInt8 &&
              packed.size(1) == (in_features * bits + 7) / 8,
              "packed_linear: x (batch, >= in) and packed (out, ceil(in * bits / 8)) uint8 expected");
  TORCH_CHECK(lut.numel() == (int64_t{1} << bits) && scale.numel() == packed.size(0) &&
              (!bias_opt.has_value() || bias_opt->numel() == packed.size(0)),
              "packed_linear: lut needs 2^bits values, scale and bias one per output row");
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu() && lut.device().is_cpu() &&
              scale.device().is_cpu() && (!bias_opt.has_value() || bias_opt->device().is_cpu()),
              "packed_linear: CPU tensors expected");
  x = x.to(torch::kFloat).contiguous();
  packed = packed.contiguous();
  lut = lut.to(torch::kFloat).contiguous();
  scale = scale.to(torch::kFloat).contiguous();
  torch::Tensor bias;
  if (bias_opt.has_value()) bias = bias_opt->to(torch::kFloat).contiguous();
  const int64_t batch = x.size(0), ldx = x.size(1);
  const int64_t out = packed.size(0), row_bytes = packed.size(1);
  auto y = torch::empty({batch, out}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  const float* lp = lut.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  if (batch == 0 || out == 0) return y;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  if (idx_bits == 0 && (bits == 1 || bits == 2 || bits == 4)) {
    const Problem P{xp, ldx, in_features, wp, row_bytes, out, lp, sp, bp, yp};
    if (bits == 1) simd_linear<1>(P, batch);
    else if (bits == 2) simd_linear<2>(P, batch);
    else simd_linear<4>(P, batch);
    return y;
  }
#endif
  if (bits == 1 && idx_bits == 8) lut_linear<1, 8>(xp, ldx, batch, wp, row_bytes, out, lp, sp, bp, yp);
  else if (bits == 1 && idx_bits == 4) lut_linear<1, 4>(xp, ldx, batch, wp, row_bytes, out, lp, sp, bp, yp);
  else if (bits == 2 && idx_bits == 8) lut_linear<2, 8>(xp, ldx, batch, wp, row_bytes, out, lp, sp, bp, yp);
  else if (bits == 2 && idx_bits == 4) lut_linear<2, 4>(xp, ldx, batch, wp, row_bytes, out, lp, sp, bp, yp);
  else decode_linear(xp, ldx, batch, in_features, wp, row_bytes, out, static_cast<int>(bits), lp,
                     sp, bp, yp);
  return y;
}

torch::Tensor packed_linear(torch::Tensor x, torch::Tensor packed, int64_t bits,
                            int64_t in_features, torch::Tensor lut, torch::Tensor scale,
                            std::optional<torch::Tensor> bias_opt, int64_t idx_bits, bool relu) {
  auto y = packed_linear_impl(x, packed, bits, in_features, lut, scale, bias_opt, idx_bits);
  if (relu) {  // the epilogue of a Linear -> ReLU pair, without a second op call
    float* yp = y.data_ptr<float>();
    const int64_t n = y.numel();
    for (int64_t i = 0; i < n; ++i) yp[i] = std::max(yp[i], 0.0f);  // max(NaN, 0) is NaN
  }
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("packed_linear", &packed_linear,
        "y = x @ (scale * lut[codes]).T + bias from row-packed codes (see packed_matmul.cpp)");
#if defined(__AVX512F__) && defined(__AVX512BW__)
  m.attr("simd") = true;
#else
  m.attr("simd") = false;
#endif
}
