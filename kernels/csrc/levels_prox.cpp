// The whole proximal step of one LAQ (linear m-bit) or LAT-approx (ternary) weight on CPU:
// `kernels.levels_step.levels_prox_step_`.
//
// For each group (the whole tensor, or one row of the (G, n) view) it clips W to [-clip, clip]
// in place, takes d = sqrt(v) + eps_d, alternates alpha = least squares of b and b = levels(W /
// alpha) (kernels/mbit.py's and kernels/ternary.py's references), and writes w_hat = alpha * b.
// Passes over memory, each one at::parallel_for over "pieces" (at most kPiece consecutive
// elements of one group):
//   pass A    reads W, v; writes the clipped W; sums the first scale's terms (b0 from the warm
//             start alpha0, or sign(W) / TWN's pattern without one), d W^2 and max|W|;
//             TWN's start needs mean|W| first: one extra pass that reads W only (cold start);
//   iteration reads W, v; sums the next scale's terms for the active groups only;
//   write     reads W; writes w_hat.
// A group stops when alpha moved by less than `tol` (the references' rule), when the objective
// sum d (W - alpha b)^2 improved by at most `rtol` of itself (rtol > 0), or after max_iter scale
// updates. The objective after a scale update is S - 2 alpha N + alpha^2 D (S = sum d W^2,
// N = sum d b W, D = sum d b^2), in double, so it costs nothing beyond the sums.
//
// Rounding: levels are the references' float32 operations in their order (correctly rounded
// division, floor(|u| k + 0.5), no contraction: -ffp-contract=off), so for the same alpha the
// levels are the references' bit for bit. Sums run in float lanes inside a block and in double
// across blocks and pieces, in a fixed order (not the thread count's): scales agree with the
// references to float32 rounding.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kPiece = 1 << 14;  // elements per piece: 64 KiB of each float32 array
constexpr int64_t kBlock = 256;      // elements per float partial sum
constexpr float kTiny = std::numeric_limits<float>::min();  // kernels._common.TINY

struct Sums {
  double num = 0.0;   // sum d b W (ternary: sum d |b| |W|)
  double den = 0.0;   // sum d b^2 (ternary: sum d |b|)
  double sdww = 0.0;  // sum d W^2 (pass A only)
  double sabs = 0.0;  // sum |W| (pass A only)
  float peak = 0.0f;  // max |W| (pass A only)
};

// Level of one float32 value. kTernary: +-1 where |s| > param (delta), else 0. Linear: u =
// clip(s / max(param, tiny), -1, 1), b = sign(u) floor(|u| k + 0.5) / k (param = alpha).
template <bool kTernary>
inline float level(float s, float param, float kf) {
  if constexpr (kTernary) {
    return s > param ? 1.0f : (s < -param ? -1.0f : 0.0f);
  } else {
    float u = s / std::max(param, kTiny);
    u = std::min(std::max(u, -1.0f), 1.0f);
    // floor(y) for y = |u| k + 0.5 in [0.5, k + 0.5]: truncation, which vectorises (floorf
    // did not, here), and equals floor for y >= 0 below 2^31.
    const float f = static_cast<float>(static_cast<int32_t>(std::fabs(u) * kf + 0.5f));
    return std::copysign(f / kf, u);  // sign(u) * f / k; u = 0 gives f = 0
  }
}

// kMode: 0 = levels from `param` (an iteration, or pass A with a warm start), 1 = b = sign(W)
// with sign(0) = +1 (LAQ's cold start), 2 = no scale terms (pass A before TWN's threshold).
// kFirst: pass A (clip W in place, sum d W^2, |W| and max|W|).
template <bool kTernary, int kMode, bool kFirst>
Sums piece_sums(float* __restrict w, const float* __restrict v, int64_t n, float param, float kf,
                float clip, float eps_d) {
  Sums s;
  alignas(64) float tn[kBlock], td[kBlock], ts[kBlock], ta[kBlock];
  float peak = 0.0f;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t len = std::min(kBlock, n - b0);
    float* __restrict wb = w + b0;
    const float* __restrict vb = v == nullptr ? nullptr : v + b0;
    if constexpr (kFirst) {  // the clip and pass A's own terms, then the scale's below (in L1)
#pragma omp simd reduction(max : peak)
      for (int64_t j = 0; j < len; ++j) {
        const float x = std::min(std::max(wb[j], -clip), clip);
        wb[j] = x;
        const float d = vb == nullptr ? 1.0f : std::sqrt(vb[j]) + eps_d;
        const float a = std::fabs(x);
        ts[j] = (d * x) * x;
        ta[j] = a;
        peak = std::max(peak, a);
      }
    }
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      const float x = wb[j];
      const float d = vb == nullptr ? 1.0f : std::sqrt(vb[j]) + eps_d;
      if constexpr (kMode == 0) {
        if constexpr (kTernary) {
          const float a = std::fabs(x);
          const float db = a > param ? d : 0.0f;  // d * |b|
          tn[j] = db * a;
          td[j] = db;
        } else {
          const float b = level<false>(x, param, kf);
          const float db = d * b;
          tn[j] = db * x;
          td[j] = db * b;
        }
      } else if constexpr (kMode == 1) {  // (d * sign(W)) * W = d |W|; (d * b) * b = d
        tn[j] = d * std::fabs(x);
        td[j] = d;
      }
    }
    float fn = 0.0f, fd = 0.0f, fs = 0.0f, fa = 0.0f;
    if constexpr (kMode != 2) {
#pragma omp simd reduction(+ : fn, fd)
      for (int64_t j = 0; j < len; ++j) {
        fn += tn[j];
        fd += td[j];
      }
    }
    if constexpr (kFirst) {
#pragma omp simd reduction(+ : fs, fa)
      for (int64_t j = 0; j < len; ++j) {
        fs += ts[j];
        fa += ta[j];
      }
    }
    s.num += fn;
    s.den += fd;
    s.sdww += fs;
    s.sabs += fa;
  }
  s.peak = peak;
  return s;
}

template <bool kTernary>
void write_levels(const float* __restrict w, float* __restrict out, int64_t n, float alpha,
                  float param, float kf) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = alpha * level<kTernary>(w[i], param, kf);
}

struct Piece {
  int64_t group;
  int64_t start;
  int64_t size;
};

template <bool kTernary, int kMode, bool kFirst>
void run_pass(const std::vector<Piece>& pieces, const std::vector<int64_t>& todo, float* w,
              const float* v, const std::vector<float>& param, float kf, float clip, float eps_d,
              std::vector<Sums>& out) {
  at::parallel_for(0, static_cast<int64_t>(todo.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const Piece& pc = pieces[todo[t]];
      out[todo[t]] = piece_sums<kTernary, kMode, kFirst>(
          w + pc.start, v == nullptr ? nullptr : v + pc.start, pc.size, param[pc.group], kf, clip,
          eps_d);
    }
  });
}

template <bool kTernary>
void pass_dispatch(int mode, bool first, const std::vector<Piece>& pieces,
                   const std::vector<int64_t>& todo, float* w, const float* v,
                   const std::vector<float>& param, float kf, float clip, float eps_d,
                   std::vector<Sums>& out) {
  if (first) {
    if (mode == 0) run_pass<kTernary, 0, true>(pieces, todo, w, v, param, kf, clip, eps_d, out);
    else if (mode == 1) run_pass<kTernary, 1, true>(pieces, todo, w, v, param, kf, clip, eps_d, out);
    else run_pass<kTernary, 2, true>(pieces, todo, w, v, param, kf, clip, eps_d, out);
  } else {
    run_pass<kTernary, 0, false>(pieces, todo, w, v, param, kf, clip, eps_d, out);
  }
}

}  // namespace

// One proximal step of a float32 CPU weight viewed as (groups, n).
//   w       contiguous, clipped in place to [-clip, clip] (clip <= 0: left as it is);
//   v       Adam's second moment (d = sqrt(v) + eps_d) or None (d = 1);
//   out     contiguous, receives w_hat;
//   alpha0  (groups,) warm start: b0 = levels(W / alpha0) (ternary: I_{alpha0/2}(W)), or None:
//           b0 = sign(W) (linear) or TWN's I_{0.7 mean|W|}(W) (ternary);
//   k       positive linear levels (2^(bits-1) - 1), or 0 for ternary.
// Returns (alpha (groups,) float32, scale updates per group (int64), objective per group after
// its last scale update (float64), objective per update of group 0 (float64)).
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<double>> levels_prox(
    at::Tensor w, std::optional<at::Tensor> v, at::Tensor out, std::optional<at::Tensor> alpha0,
    int64_t groups, int64_t k, int64_t max_iter, double tol, double rtol, bool secant,
    double clip, double eps_d) {
  auto check = [](const at::Tensor& t, const char* what, int64_t numel) {
    TORCH_CHECK(t.device().is_cpu(), what, ": expected a CPU tensor");
    TORCH_CHECK(t.scalar_type() == at::kFloat, what, ": expected float32");
    TORCH_CHECK(t.is_contiguous(), what, ": expected a contiguous tensor");
    TORCH_CHECK(t.numel() == numel, what, ": expected ", numel, " elements, got ", t.numel());
  };
  const int64_t numel = w.numel();
  TORCH_CHECK(groups >= 1 && numel % groups == 0 && numel > 0, "levels_prox: ", groups,
              " groups do not divide ", numel, " elements");
  TORCH_CHECK(max_iter >= 1, "levels_prox: max_iter must be >= 1");
  TORCH_CHECK(k >= 0 && k <= 127, "levels_prox: k must be in [0, 127]");
  check(w, "w", numel);
  check(out, "out", numel);
  if (v) check(*v, "v", numel);
  if (alpha0) check(*alpha0, "alpha0", groups);
  const bool ternary = k == 0;
  const float kf = static_cast<float>(k);
  const float clipf = clip > 0 ? static_cast<float>(clip) : std::numeric_limits<float>::infinity();
  const float eps_df = static_cast<float>(eps_d);
  const float tolf = static_cast<float>(tol);
  float* wp = w.data_ptr<float>();
  const float* vp = v ? v->data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();

  const int64_t cols = numel / groups;
  std::vector<Piece> pieces;
  std::vector<int64_t> first_piece(groups + 1);
  for (int64_t g = 0; g < groups; ++g) {
    first_piece[g] = static_cast<int64_t>(pieces.size());
    for (int64_t c = 0; c < cols; c += kPiece) pieces.push_back({g, g * cols + c, std::min(kPiece, cols - c)});
  }
  first_piece[groups] = static_cast<int64_t>(pieces.size());
  std::vector<int64_t> todo(pieces.size());
  for (size_t i = 0; i < todo.size(); ++i) todo[i] = static_cast<int64_t>(i);
  std::vector<Sums> sums(pieces.size());

  // param: the levels' parameter of the pass (alpha for linear levels, delta for ternary).
  std::vector<float> param(groups, 0.0f), alpha(groups, 0.0f), peak(groups, 0.0f);
  std::vector<double> sdww(groups, 0.0), objective(groups, 0.0);
  std::vector<int64_t> updates(groups, 0);
  std::vector<char> active(groups, 1);
  std::vector<double> history;
  int mode = 1;
  if (alpha0) {
    const float* a0 = alpha0->data_ptr<float>();
    for (int64_t g = 0; g < groups; ++g) param[g] = ternary ? a0[g] * 0.5f : a0[g];
    mode = 0;
  } else if (ternary) {
    mode = 2;
  }
  auto pass = [&](int m, bool first) {
    if (ternary) pass_dispatch<true>(m, first, pieces, todo, wp, vp, param, kf, clipf, eps_df, sums);
    else pass_dispatch<false>(m, first, pieces, todo, wp, vp, param, kf, clipf, eps_df, sums);
  };
  auto group_total = [&](int64_t g) {
    Sums t;
    for (int64_t p = first_piece[g]; p < first_piece[g + 1]; ++p) {
      t.num += sums[p].num;
      t.den += sums[p].den;
    }
    return t;
  };
  pass(mode, true);
  for (int64_t g = 0; g < groups; ++g) {
    double s = 0.0, a = 0.0;
    float pk = 0.0f;
    for (int64_t p = first_piece[g]; p < first_piece[g + 1]; ++p) {
      s += sums[p].sdww;
      a += sums[p].sabs;
      pk = std::max(pk, sums[p].peak);
    }
    sdww[g] = s;
    peak[g] = pk;
    if (mode == 2) {  // TWN's threshold 0.7 * mean|W| (float32, as the reference)
      param[g] = 0.7f * static_cast<float>(a / static_cast<double>(cols));
    }
  }
  if (mode == 2) pass(0, false);

  // One scale update per group from the current sums (levels of `x[g]`): alpha = F(x), the
  // least-squares scale of those levels; returns whether any group is still active. Without
  // `secant` the next x is F(x) (the references' alternation) and alpha the last F(x). With it,
  // the next x is the secant step towards the fixed point x = F(x) through the last two points
  // (the alternation converges linearly, about 0.6 per update on LAQ's MLP; the secant step
  // superlinearly), falling back to F(x) when that step is not finite, not positive or more than
  // 8 |F(x) - x| away; alpha is the F(x) of least objective so far.
  std::vector<float> x(groups, 0.0f), x_prev(groups, 0.0f), g_prev(groups, 0.0f);
  std::vector<char> has_prev(groups, 0);
  std::vector<double> best(groups, std::numeric_limits<double>::infinity());
  for (int64_t g = 0; g < groups; ++g) x[g] = ternary ? param[g] * 2.0f : param[g];
  auto update = [&](bool first) {
    bool any = false;
    for (int64_t g = 0; g < groups; ++g) {
      if (!active[g]) continue;
      const Sums t = group_total(g);
      const float num = static_cast<float>(t.num), den = static_cast<float>(t.den);
      const float ratio = num / std::max(den, kTiny);
      const bool ok = ternary ? den > 0.0f : (den > 0.0f && ratio > 0.0f);
      const float next = ok ? ratio : peak[g];
      const double a = next;
      const double obj = sdww[g] - 2.0 * a * t.num + a * a * t.den;
      const float moved = next - x[g];
      // A secant step that raised the objective by more than rtol (rounding included): go on
      // from the best point by a plain update. One that neither raised nor lowered it stops.
      const bool failed = secant && obj - best[g] > rtol * std::fabs(best[g]);
      bool keep = true;
      if (!first) {
        keep = std::fabs(moved) >= tolf;
        if (rtol > 0.0 && !failed && best[g] - obj <= rtol * std::fabs(best[g])) keep = false;
      }
      ++updates[g];
      if (g == 0) history.push_back(obj);
      if (updates[g] >= max_iter) keep = false;
      float x_next = next;
      if (!failed && (!secant || obj <= best[g])) {
        alpha[g] = next;
        objective[g] = obj;
        best[g] = std::min(best[g], obj);
      }
      if (failed) {
        x_next = alpha[g];
      } else if (secant && has_prev[g] && moved != g_prev[g]) {
        const float step = x[g] - moved * (x[g] - x_prev[g]) / (moved - g_prev[g]);
        if (std::isfinite(step) && step > 0.0f && std::fabs(step - x[g]) <= 8.0f * std::fabs(moved)) {
          x_next = step;
        }
      }
      x_prev[g] = x[g];
      g_prev[g] = moved;
      has_prev[g] = !failed && (!first || alpha0.has_value());
      x[g] = x_next;
      active[g] = keep;
      param[g] = ternary ? x_next * 0.5f : x_next;
      any = any || keep;
    }
    return any;
  };
  bool any = update(true);
  while (any) {
    todo.clear();
    for (int64_t g = 0; g < groups; ++g) {
      if (active[g]) {
        for (int64_t p = first_piece[g]; p < first_piece[g + 1]; ++p) todo.push_back(p);
      }
    }
    pass(0, false);
    any = update(false);
  }

  for (int64_t g = 0; g < groups; ++g) param[g] = ternary ? alpha[g] * 0.5f : alpha[g];
  const int64_t n_pieces = static_cast<int64_t>(pieces.size());
  at::parallel_for(0, n_pieces, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const Piece& pc = pieces[p];
      if (ternary) write_levels<true>(wp + pc.start, op + pc.start, pc.size, alpha[pc.group], param[pc.group], kf);
      else write_levels<false>(wp + pc.start, op + pc.start, pc.size, alpha[pc.group], param[pc.group], kf);
    }
  });

  at::Tensor alphas = at::empty({groups}, at::TensorOptions().dtype(at::kFloat));
  at::Tensor counts = at::empty({groups}, at::TensorOptions().dtype(at::kLong));
  at::Tensor objs = at::empty({groups}, at::TensorOptions().dtype(at::kDouble));
  for (int64_t g = 0; g < groups; ++g) {
    alphas.data_ptr<float>()[g] = alpha[g];
    counts.data_ptr<int64_t>()[g] = updates[g];
    objs.data_ptr<double>()[g] = objective[g];
  }
  return {alphas, counts, objs, history};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("levels_prox", &levels_prox,
        "LAQ (linear levels) / LAT-approx proximal step of one float32 CPU weight");
}
