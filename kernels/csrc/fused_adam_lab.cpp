// Fused Adam + clip + LAB (or BWN) step on CPU: `kernels.fused._fused_adam_lab_step_cpp`.
//
// The formulas are in kernels/fused.py's module docstring. Two passes over all the tensors of
// one call, each a single at::parallel_for over "pieces" (at most kPiece consecutive elements of
// one group: a whole tensor, or one row for per-channel scales):
//   pass 1 reads W, g, m, v, writes W, m, v (Adam's update, then the clip) and sums
//          d|W| and d over its piece in double precision;
//   pass 2 adds up the pieces of each group in a fixed order (so the result does not depend on
//          the thread count), divides, and writes w_hat = alpha * sign(W) (reads W, writes w_hat).
// 36 bytes per weight in all, against 28 for Adam alone.
//
// Rounding follows torch's CPU kernels op for op (what `_fused_adam_lab_step_torch` calls):
//   lerp_(g, w):      fma(w, g - m, m) for w < 0.5, else fma(w - 1, g - m, g) (torch's vector lerp)
//   mul_/addcmul_:    fma((1 - beta2) * g, g, v * beta2)     (torch's vector addcmul)
//   sqrt, div, add:   sqrt(v) / sqrt(1 - beta2^t) + eps
//   addcdiv_:         W + (-step_size * m) / denom
//   clamp_:           min(max(W, -clip), clip)
// The build passes -ffp-contract=off so that the compiler adds no other fused multiply-adds.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kPiece = 1 << 14;  // elements per piece: 64 KiB of each float32 array
constexpr int64_t kLanes = 16;       // independent float partial sums: vectorisable reductions

struct Piece {
  int32_t tensor;  // index into the call's tensor lists
  int64_t group;   // global group (row) index over all tensors: where its sums go
  int64_t start;   // first element (flat index in the tensor)
  int64_t size;    // elements
};

struct TensorArgs {
  float* w;
  const float* g;
  float* m;
  float* v;
  float* out;
  float step_size;   // lr / (1 - beta1^t)
  float bias2_sqrt;  // sqrt(1 - beta2^t)
};

// Adam + clip over one piece; returns (sum d|W|, sum d) of the piece (d = 1 without curvature).
// The element loop is a plain loop that the compiler vectorises; it stores each element's terms
// of the sums in a block buffer, which is then added up in kLanes float lanes and into doubles.
template <bool kCurvature>
std::pair<double, double> adam_clip_sums(const TensorArgs& t, int64_t start, int64_t n,
                                         float coeff, bool coeff_small, float beta2,
                                         float one_minus_beta2, float eps, float clip,
                                         float eps_d) {
  float* __restrict w = t.w + start;
  const float* __restrict g = t.g + start;
  float* __restrict m = t.m + start;
  float* __restrict v = t.v + start;
  const float neg_step = -t.step_size;
  const float b2s = t.bias2_sqrt;
  double num = 0.0, den = 0.0;
  constexpr int64_t kBlock = 512;  // a multiple of kLanes
  alignas(64) float terms_num[kBlock];
  alignas(64) float terms_den[kBlock];
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t len = std::min(kBlock, n - b0);
    float* __restrict wb = w + b0;
    const float* __restrict gb = g + b0;
    float* __restrict mb = m + b0;
    float* __restrict vb = v + b0;
    for (int64_t j = 0; j < len; ++j) {
      const float gj = gb[j], mj = mb[j];
      const float mn = std::fma(coeff, gj - mj, coeff_small ? mj : gj);
      const float vn = std::fma(one_minus_beta2 * gj, gj, vb[j] * beta2);
      const float sv = std::sqrt(vn);
      float wn = wb[j] + (neg_step * mn) / (sv / b2s + eps);
      wn = std::min(std::max(wn, -clip), clip);
      mb[j] = mn;
      vb[j] = vn;
      wb[j] = wn;
      if constexpr (kCurvature) {
        const float d = sv + eps_d;
        terms_num[j] = d * std::fabs(wn);
        terms_den[j] = d;
      } else {
        terms_num[j] = std::fabs(wn);
      }
    }
    for (int64_t j = len; j < ((len + kLanes - 1) / kLanes) * kLanes; ++j) {
      terms_num[j] = 0.0f;
      terms_den[j] = 0.0f;
    }
    float lane_num[kLanes] = {0};
    float lane_den[kLanes] = {0};
    // One loop per sum: GCC vectorises each into one 16-lane register, not the two together.
    for (int64_t j = 0; j < len; j += kLanes) {
      for (int64_t k = 0; k < kLanes; ++k) lane_num[k] += terms_num[j + k];
    }
    if constexpr (kCurvature) {
      for (int64_t j = 0; j < len; j += kLanes) {
        for (int64_t k = 0; k < kLanes; ++k) lane_den[k] += terms_den[j + k];
      }
    }
    for (int64_t k = 0; k < kLanes; ++k) {
      num += lane_num[k];
      den += lane_den[k];
    }
  }
  if constexpr (!kCurvature) den = static_cast<double>(n);
  return {num, den};
}

// w_hat = alpha * sign(W) with sign(+-0) = +1 (copysign of W + 0, as the torch reference).
void write_signs(const float* __restrict w, float* __restrict out, int64_t n, float alpha) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::copysign(alpha, w[i] + 0.0f);
}

void check_tensor(const at::Tensor& t, const char* what, size_t i) {
  TORCH_CHECK(t.device().is_cpu(), what, "[", i, "]: expected a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, what, "[", i, "]: expected float32");
  TORCH_CHECK(t.is_contiguous(), what, "[", i, "]: expected a contiguous tensor");
}

}  // namespace

// One fused step over all tensors. `rows[i]` is the number of groups of tensor i (1: one scale
// per tensor; shape[0]: one per row); its numel must be a multiple. Returns the float32 scales
// of all groups, concatenated in tensor order; writes w_hat into `outs`.
at::Tensor adam_lab_step(std::vector<at::Tensor> latents, std::vector<at::Tensor> grads,
                         std::vector<at::Tensor> exp_avgs, std::vector<at::Tensor> exp_avg_sqs,
                         std::vector<at::Tensor> outs, std::vector<double> step_sizes,
                         std::vector<double> bias2_sqrts, std::vector<int64_t> rows, double beta1,
                         double beta2, double eps, double clip, double eps_d, bool curvature) {
  const size_t count = latents.size();
  TORCH_CHECK(grads.size() == count && exp_avgs.size() == count && exp_avg_sqs.size() == count &&
                  outs.size() == count && step_sizes.size() == count &&
                  bias2_sqrts.size() == count && rows.size() == count,
              "adam_lab_step: lists of different lengths");
  std::vector<TensorArgs> args(count);
  std::vector<Piece> pieces;
  std::vector<int64_t> group_first_piece;  // per global group: index of its first piece
  int64_t n_groups = 0;
  for (size_t i = 0; i < count; ++i) {
    const at::Tensor* all[] = {&latents[i], &grads[i], &exp_avgs[i], &exp_avg_sqs[i], &outs[i]};
    const char* names[] = {"latents", "grads", "exp_avgs", "exp_avg_sqs", "outs"};
    for (int k = 0; k < 5; ++k) {
      check_tensor(*all[k], names[k], i);
      TORCH_CHECK(all[k]->numel() == latents[i].numel(), names[k], "[", i, "]: size mismatch");
    }
    const int64_t numel = latents[i].numel();
    TORCH_CHECK(rows[i] >= 1 && numel % rows[i] == 0, "rows[", i, "]: ", rows[i],
                " does not divide ", numel);
    args[i] = {latents[i].data_ptr<float>(), grads[i].data_ptr<float>(),
               exp_avgs[i].data_ptr<float>(), exp_avg_sqs[i].data_ptr<float>(),
               outs[i].data_ptr<float>(), static_cast<float>(step_sizes[i]),
               static_cast<float>(bias2_sqrts[i])};
    const int64_t cols = numel / rows[i];
    for (int64_t r = 0; r < rows[i]; ++r) {
      group_first_piece.push_back(static_cast<int64_t>(pieces.size()));
      for (int64_t c = 0; c < cols; c += kPiece) {
        pieces.push_back({static_cast<int32_t>(i), n_groups, r * cols + c,
                          std::min(kPiece, cols - c)});
      }
      ++n_groups;
    }
  }
  group_first_piece.push_back(static_cast<int64_t>(pieces.size()));
  const int64_t n_pieces = static_cast<int64_t>(pieces.size());
  std::vector<double> num(n_pieces), den(n_pieces);

  const float w1 = static_cast<float>(1.0 - beta1);  // lerp's weight, as torch rounds it
  const bool small = std::fabs(w1) < 0.5f;
  const float coeff = small ? w1 : w1 - 1.0f;
  const float b2 = static_cast<float>(beta2), omb2 = static_cast<float>(1.0 - beta2);
  const float epsf = static_cast<float>(eps), clipf = static_cast<float>(clip);
  const float eps_df = static_cast<float>(eps_d);

  at::parallel_for(0, n_pieces, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const Piece& pc = pieces[p];
      const auto sums = curvature
          ? adam_clip_sums<true>(args[pc.tensor], pc.start, pc.size, coeff, small, b2, omb2,
                                 epsf, clipf, eps_df)
          : adam_clip_sums<false>(args[pc.tensor], pc.start, pc.size, coeff, small, b2, omb2,
                                  epsf, clipf, eps_df);
      num[p] = sums.first;
      den[p] = sums.second;
    }
  });

  at::Tensor alphas = at::empty({n_groups}, at::TensorOptions().dtype(at::kFloat));
  float* alpha = alphas.data_ptr<float>();
  const double tiny = std::numeric_limits<float>::min();
  for (int64_t gi = 0; gi < n_groups; ++gi) {
    double a = 0.0, b = 0.0;
    for (int64_t p = group_first_piece[gi]; p < group_first_piece[gi + 1]; ++p) {
      a += num[p];
      b += den[p];
    }
    alpha[gi] = static_cast<float>(a / std::max(b, tiny));
  }

  at::parallel_for(0, n_pieces, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const Piece& pc = pieces[p];
      const TensorArgs& t = args[pc.tensor];
      write_signs(t.w + pc.start, t.out + pc.start, pc.size, alpha[pc.group]);
    }
  });
  return alphas;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("adam_lab_step", &adam_lab_step,
        "Fused Adam + clip + LAB/BWN binarization over a list of float32 CPU tensors");
}
