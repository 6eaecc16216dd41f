// CPU kernels of the batch_norm_act family (BatchNorm statistics + normalise + affine +
// activation, and its fused backward). The math is csrc/gan_math.h's (batch_norm_act_value,
// batch_norm_act_dz, batch_norm_grad_input); the argument checks csrc/ganfast_common.h's (shared
// with csrc/cuda/batch_norm_act.cu); the loop shapes those of cpu_loops.h.
//
// Layouts, walked in memory order without a division per element:
//   Rows    NCHW contiguous with prod(sizes[2:]) = inner > 1: rows of `inner` elements share one
//           channel, c = row % C (the per-channel values are loop invariants of the row);
//   Cyclic  the channel is the fastest dimension (channels_last, channels_last_3d, any dense
//           (N, *, C) order, or a contiguous (N, C) / inner == 1 input): c = i % C, walked as a
//           periodic pattern of period len = C * ceil(kMinPeriod / C), so the inner loop is long
//           even for a few channels;
//   anything else is made contiguous first. The output is empty_like of what runs (channels_last
//   stays channels_last).
//
// Passes. Forward, training: one statistics pass (per channel sum of (x - K) and of (x - K)^2),
// then one elementwise pass; the running statistics (C values) are updated in between. K, the
// channel's first value, shifts the data: E[x^2] - E[x]^2 loses every digit where |mean| >> std
// (the output of a convolution with a bias), while with the shift the two terms are of the size of
// the variance itself; one pass and vectorised, unlike Welford's update. Eval: the elementwise
// pass only. Backward: one reduction pass (sum dz, sum dz (x - mean), dz = dy f'(z) recomputed
// from x) and one elementwise pass (dz recomputed again rather than stored: one read of x and dy
// costs less than a write and a read of dz).
//
// Reductions are deterministic for any number of threads: the elements of a channel are cut into
// fixed pieces (at most kChunk elements, summed in 16 float lanes (Rows) or in the len lanes of the
// periodic pattern (Cyclic), in the compute type), the pieces run in parallel, and their partial
// sums are added in a fixed order in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../ganfast_common.h"
#include "cpu_alloc.h"
#include "cpu_loops.h"

namespace ganfast::cpu {
namespace {

using at::Tensor;

constexpr int64_t kMinPeriod = 256;

// Whether every element (n, c, s) of t sits at ((n * S) + s) * C + c from its first: the channel is
// the fastest dimension, the rest in order (size-1 dimensions may have any stride).
bool channels_fastest(const Tensor& t) {
  int64_t expected = 1;
  auto ok = [&](int64_t d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
    return true;
  };
  if (!ok(1)) return false;
  for (int64_t d = t.dim() - 1; d >= 2; --d)
    if (!ok(d)) return false;
  return ok(0);
}

int64_t inner_size(const Tensor& t) {
  int64_t inner = 1;
  for (int64_t d = 2; d < t.dim(); ++d) inner *= t.size(d);
  return inner;
}

// The tensor the kernels run over: t itself when it is NCHW contiguous or channels-fastest.
Tensor walkable(const Tensor& t) {
  return t.is_contiguous() || channels_fastest(t) ? t : t.contiguous();
}

struct Walk {
  enum Mode { Rows, Cyclic } mode = Rows;
  int64_t n = 0;         // elements
  int64_t channels = 1;  // C
  int64_t len = 1;       // Rows: elements per row (inner); Cyclic: the period of the pattern
};

// t is walkable (see above).
Walk make_walk(const Tensor& t) {
  Walk w;
  w.n = t.numel();
  w.channels = t.size(1);
  const int64_t inner = inner_size(t);
  if (t.is_contiguous() && inner > 1) {
    w.mode = Walk::Rows;
    w.len = inner;
  } else {
    w.mode = Walk::Cyclic;
    w.len = w.channels * ((kMinPeriod + w.channels - 1) / std::max<int64_t>(w.channels, 1));
  }
  return w;
}

// Per-channel values as the loops read them: one per channel (Rows) or the periodic pattern of
// length len (Cyclic), in the compute type.
template <typename acc_t>
std::vector<acc_t> slots(const Walk& w, const std::vector<double>& per_channel) {
  const int64_t count = w.mode == Walk::Rows ? w.channels : w.len;
  std::vector<acc_t> v(static_cast<size_t>(count));
  for (int64_t j = 0; j < count; ++j) v[j] = static_cast<acc_t>(per_channel[j % w.channels]);
  return v;
}

template <typename acc_t>
struct Two {
  acc_t a, b;
};

// ---- the loops ---------------------------------------------------------------------------------
// A term functor T has `P param(int64_t slot) const` (the per-channel values of a slot, read from
// arrays) and `Two<acc_t> term(const P&, int64_t i) const` (reductions) or
// `void apply(const P&, int64_t i) const` (elementwise passes).

// The two sums of term over [begin, end), all in one channel, in 16 lanes (counted-blocks form:
// see block_sum_range in cpu_loops.h on -fwrapv).
template <typename acc_t, typename T, typename P>
GANFAST_CPU_CLONES Two<acc_t> rows_piece_sum(int64_t begin, int64_t end, const T& t, const P p) {
  acc_t la[kLanes] = {}, lb[kLanes] = {};
  const int64_t blocks = (end - begin) / kLanes;
  for (int64_t k = 0; k < blocks; ++k) {
    const int64_t i = begin + k * kLanes;
    for (int j = 0; j < kLanes; ++j) {
      const Two<acc_t> v = t.term(p, i + j);
      la[j] += v.a;
      lb[j] += v.b;
    }
  }
  Two<acc_t> r{0, 0};
  for (int j = 0; j < kLanes; ++j) {
    r.a += la[j];
    r.b += lb[j];
  }
  for (int64_t i = begin + blocks * kLanes; i < end; ++i) {
    const Two<acc_t> v = t.term(p, i);
    r.a += v.a;
    r.b += v.b;
  }
  return r;
}

// The two sums of term over [begin, end) (begin a multiple of len) into the len lanes la, lb.
template <typename acc_t, typename T>
GANFAST_CPU_CLONES void cyclic_piece_sum(int64_t begin, int64_t end, int64_t len, const T& t, acc_t* __restrict la,
                                         acc_t* __restrict lb) {
  for (int64_t base = begin; base < end; base += len) {
    const int64_t jn = std::min(len, end - base);
    for (int64_t j = 0; j < jn; ++j) {
      const Two<acc_t> v = t.term(t.param(j), base + j);
      la[j] += v.a;
      lb[j] += v.b;
    }
  }
}

// Per channel c, the two sums of term over its elements: {sums[c], sums[C + c]}, in double.
template <typename acc_t, typename T>
std::vector<double> channel_sums(const Walk& w, const T& t) {
  const int64_t C = w.channels;
  std::vector<double> sums(static_cast<size_t>(2 * C), 0.0);
  if (w.n == 0) return sums;
  if (w.mode == Walk::Rows) {
    const int64_t inner = w.len, rows = w.n / inner;
    const int64_t pieces = (inner + kChunk - 1) / kChunk;  // per row
    const int64_t tasks = rows * pieces;
    std::vector<double> part(static_cast<size_t>(2 * tasks));
    const int64_t grain = std::max<int64_t>(1, kChunk / std::min(inner, kChunk));
    at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
      for (int64_t k = t0; k < t1; ++k) {
        const int64_t s = k / pieces, q = k % pieces;
        const int64_t b = s * inner + q * kChunk, e = s * inner + std::min(inner, (q + 1) * kChunk);
        const Two<acc_t> r = rows_piece_sum<acc_t>(b, e, t, t.param(s % C));
        part[2 * k] = static_cast<double>(r.a);
        part[2 * k + 1] = static_cast<double>(r.b);
      }
    });
    for (int64_t k = 0; k < tasks; ++k) {  // row order: for each channel, samples in order
      const int64_t c = (k / pieces) % C;
      sums[c] += part[2 * k];
      sums[C + c] += part[2 * k + 1];
    }
    return sums;
  }
  const int64_t len = w.len;
  const int64_t piece = len * std::max<int64_t>(1, kChunk / len);
  const int64_t tasks = (w.n + piece - 1) / piece;
  std::vector<double> part(static_cast<size_t>(2 * tasks * len));
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> la(static_cast<size_t>(len)), lb(static_cast<size_t>(len));
    for (int64_t k = t0; k < t1; ++k) {
      std::fill(la.begin(), la.end(), acc_t(0));
      std::fill(lb.begin(), lb.end(), acc_t(0));
      cyclic_piece_sum<acc_t>(k * piece, std::min(w.n, (k + 1) * piece), len, t, la.data(), lb.data());
      for (int64_t j = 0; j < len; ++j) {
        part[2 * k * len + j] = static_cast<double>(la[j]);
        part[(2 * k + 1) * len + j] = static_cast<double>(lb[j]);
      }
    }
  });
  for (int64_t k = 0; k < tasks; ++k)
    for (int64_t j = 0; j < len; ++j) {
      sums[j % C] += part[2 * k * len + j];
      sums[C + j % C] += part[(2 * k + 1) * len + j];
    }
  return sums;
}

// t.apply(param, i) for every element.
template <typename T>
void channel_for(const Walk& w, const T& t) {
  if (w.mode == Walk::Rows) {
    const int64_t C = w.channels;
    chunked_row_for(
        w.n, w.len, [&](int64_t s) { return t.param(s % C); }, [&](const auto& p, int64_t i) { t.apply(p, i); });
  } else {
    chunked_cyclic_for(w.n, w.len, [&](int64_t j, int64_t i) { t.apply(t.param(j), i); });
  }
}

// ---- the terms ---------------------------------------------------------------------------------

// Statistics: (x - K, (x - K)^2), K the channel's shift.
template <typename scalar_t, typename acc_t>
struct StatsTerm {
  const scalar_t* x;
  const acc_t* shift;
  acc_t param(int64_t j) const { return shift[j]; }
  Two<acc_t> term(acc_t k, int64_t i) const {
    const acc_t d = static_cast<acc_t>(x[i]) - k;
    return {d, d * d};
  }
};

template <typename acc_t>
struct Affine {
  acc_t scale, shift;
};

// out = f(x * scale + shift).
template <typename scalar_t, typename acc_t, ActKind A>
struct ForwardTerm {
  const scalar_t* x;
  scalar_t* out;
  const acc_t* scale;
  const acc_t* shift;
  acc_t alpha;
  Affine<acc_t> param(int64_t j) const { return {scale[j], shift[j]}; }
  void apply(const Affine<acc_t>& p, int64_t i) const {
    out[i] = static_cast<scalar_t>(math::batch_norm_act_value<A>(static_cast<acc_t>(x[i]), p.scale, p.shift, alpha));
  }
};

template <typename acc_t>
struct DzParam {
  acc_t scale, shift, mean;
};

// Backward reduction: (dz, dz (x - mean)), dz = dy f'(x * scale + shift).
template <typename scalar_t, typename acc_t, ActKind A>
struct BackwardSumTerm {
  const scalar_t* g;
  const scalar_t* x;
  const acc_t *scale, *shift, *mean;
  acc_t alpha;
  DzParam<acc_t> param(int64_t j) const { return {scale[j], shift[j], mean[j]}; }
  Two<acc_t> term(const DzParam<acc_t>& p, int64_t i) const {
    const acc_t xv = static_cast<acc_t>(x[i]);
    const acc_t dz = math::batch_norm_act_dz<A>(static_cast<acc_t>(g[i]), xv, p.scale, p.shift, alpha);
    return {dz, dz * (xv - p.mean)};
  }
};

template <typename acc_t>
struct GradInputParam {
  acc_t scale, shift, mean, a, mean_dz, k;
};

// Backward elementwise: dx = a (dz - mean_dz - (x - mean) k).
template <typename scalar_t, typename acc_t, ActKind A>
struct GradInputTerm {
  const scalar_t* g;
  const scalar_t* x;
  scalar_t* out;
  const acc_t *scale, *shift, *mean, *a, *mean_dz, *k;
  acc_t alpha;
  GradInputParam<acc_t> param(int64_t j) const { return {scale[j], shift[j], mean[j], a[j], mean_dz[j], k[j]}; }
  void apply(const GradInputParam<acc_t>& p, int64_t i) const {
    const acc_t xv = static_cast<acc_t>(x[i]);
    const acc_t dz = math::batch_norm_act_dz<A>(static_cast<acc_t>(g[i]), xv, p.scale, p.shift, alpha);
    out[i] = static_cast<scalar_t>(math::batch_norm_grad_input(dz, xv, p.mean, p.a, p.mean_dz, p.k));
  }
};

// ---- host helpers ------------------------------------------------------------------------------

// A per-channel operand as C doubles; `fill` where absent.
std::vector<double> channel_values(const std::optional<Tensor>& t, int64_t C, double fill) {
  std::vector<double> v(static_cast<size_t>(C), fill);
  if (!t.has_value() || !t->defined()) return v;
  const Tensor d = t->to(at::kDouble).contiguous();
  const double* p = d.const_data_ptr<double>();
  for (int64_t c = 0; c < C; ++c) v[c] = p[c];
  return v;
}

Tensor channel_tensor(const std::vector<double>& v, at::ScalarType dtype) {
  Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kDouble));
  std::copy(v.begin(), v.end(), t.mutable_data_ptr<double>());
  return t.to(dtype);
}

// t in the dtype and strides of `like` (dense, of t's shape); t itself when it already is.
Tensor like_layout(const Tensor& t, const Tensor& like) {
  if (t.scalar_type() == like.scalar_type() && t.strides() == like.strides()) return t;
  return empty_output_like(like).copy_(t);
}

template <typename F>
void dispatch_batch_norm_act(const Tensor& t, ActKind act, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "ganfast_batch_norm_act", [&] {
    dispatch_act(act, [&](auto a) { f(scalar_t(0), a); });
  });
}

// ---- the ops -----------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor> batch_norm_act(const Tensor& input, const std::optional<Tensor>& weight,
                                                  const std::optional<Tensor>& bias,
                                                  const std::optional<Tensor>& running_mean,
                                                  const std::optional<Tensor>& running_var, bool training,
                                                  double momentum, double eps, c10::string_view act_name,
                                                  double alpha) {
  constexpr const char* op = "ganfast::batch_norm_act";
  const int64_t M = check_batch_norm_act(op, input, weight, bias, running_mean, running_var, training, eps);
  const ActKind act = parse_act(act_name);
  const bool has_running = running_mean.has_value() && running_mean->defined();
  const Tensor x = walkable(input);
  Tensor out = empty_output_like(x);
  const int64_t C = x.size(1);
  const Walk w = make_walk(x);
  const auto compute = batch_norm_compute_dtype(x.scalar_type());

  std::vector<double> mean(static_cast<size_t>(C), 0.0), invstd(static_cast<size_t>(C));
  if (training) {
    std::vector<double> var(static_cast<size_t>(C), 0.0);
    if (M > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ganfast_batch_norm_stats", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        // K[c]: the channel's first element (sample 0, position 0).
        std::vector<double> k(static_cast<size_t>(C));
        for (int64_t c = 0; c < C; ++c)
          k[c] = static_cast<double>(static_cast<acc_t>(xp[w.mode == Walk::Rows ? c * w.len : c]));
        const std::vector<acc_t> shift = slots<acc_t>(w, k);
        const std::vector<double> s = channel_sums<acc_t>(w, StatsTerm<scalar_t, acc_t>{xp, shift.data()});
        for (int64_t c = 0; c < C; ++c) {
          const double d = s[c] / static_cast<double>(M);
          mean[c] = k[c] + d;
          var[c] = std::max(s[C + c] / static_cast<double>(M) - d * d, 0.0);
        }
      });
    }
    for (int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(var[c] + eps);
    if (has_running && M > 0) {  // an empty batch leaves them alone, as torch's batch_norm
      const std::vector<double> rm = channel_values(running_mean, C, 0.0), rv = channel_values(running_var, C, 1.0);
      std::vector<double> new_rm(static_cast<size_t>(C)), new_rv(static_cast<size_t>(C));
      const double unbias = static_cast<double>(M) / static_cast<double>(M - 1);
      for (int64_t c = 0; c < C; ++c) {
        new_rm[c] = (1.0 - momentum) * rm[c] + momentum * mean[c];
        new_rv[c] = (1.0 - momentum) * rv[c] + momentum * var[c] * unbias;
      }
      running_mean->copy_(channel_tensor(new_rm, at::kDouble));
      running_var->copy_(channel_tensor(new_rv, at::kDouble));
    }
  } else {
    mean = channel_values(running_mean, C, 0.0);
    const std::vector<double> rv = channel_values(running_var, C, 1.0);
    for (int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(rv[c] + eps);
  }

  if (w.n > 0) {
    const std::vector<double> wv = channel_values(weight, C, 1.0), bv = channel_values(bias, C, 0.0);
    std::vector<double> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) {
      scale[c] = wv[c] * invstd[c];
      shift[c] = bv[c] - mean[c] * scale[c];
    }
    dispatch_batch_norm_act(x, act, [&](auto tag, auto a) {
      using scalar_t = decltype(tag);
      using acc_t = at::opmath_type<scalar_t>;
      constexpr ActKind A = decltype(a)::value;
      const std::vector<acc_t> sc = slots<acc_t>(w, scale), sh = slots<acc_t>(w, shift);
      channel_for(w, ForwardTerm<scalar_t, acc_t, A>{x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                                     sc.data(), sh.data(), static_cast<acc_t>(alpha)});
    });
  }
  return {out, channel_tensor(mean, compute), channel_tensor(invstd, compute)};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_act_backward(const Tensor& grad_output, const Tensor& input,
                                                           const std::optional<Tensor>& weight,
                                                           const std::optional<Tensor>& bias,
                                                           const Tensor& save_mean, const Tensor& save_invstd,
                                                           bool training, c10::string_view act_name, double alpha) {
  constexpr const char* op = "ganfast::batch_norm_act_backward";
  const int64_t M = check_batch_norm_act_backward(op, grad_output, input, weight, bias, save_mean, save_invstd);
  const ActKind act = parse_act(act_name);
  const Tensor x = walkable(input);
  Tensor grad_input = empty_output_like(x);
  const int64_t C = x.size(1);
  const Walk w = make_walk(x);
  const Tensor g = like_layout(grad_output, x);
  const auto param_dtype = weight.has_value() && weight->defined() ? weight->scalar_type() : input.scalar_type();

  const std::vector<double> mean = channel_values(save_mean, C, 0.0), invstd = channel_values(save_invstd, C, 1.0);
  const std::vector<double> wv = channel_values(weight, C, 1.0), bv = channel_values(bias, C, 0.0);
  std::vector<double> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C)), a(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = wv[c] * invstd[c];
    shift[c] = bv[c] - mean[c] * scale[c];
    a[c] = scale[c];
  }
  std::vector<double> grad_weight(static_cast<size_t>(C)), grad_bias(static_cast<size_t>(C));
  dispatch_batch_norm_act(x, act, [&](auto tag, auto act_tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr ActKind A = decltype(act_tag)::value;
    const std::vector<acc_t> sc = slots<acc_t>(w, scale), sh = slots<acc_t>(w, shift), mu = slots<acc_t>(w, mean);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const acc_t al = static_cast<acc_t>(alpha);
    const std::vector<double> s =
        channel_sums<acc_t>(w, BackwardSumTerm<scalar_t, acc_t, A>{gp, xp, sc.data(), sh.data(), mu.data(), al});
    std::vector<double> mean_dz(static_cast<size_t>(C), 0.0), k(static_cast<size_t>(C), 0.0);
    for (int64_t c = 0; c < C; ++c) {
      grad_bias[c] = s[c];
      grad_weight[c] = s[C + c] * invstd[c];
      if (training && M > 0) {
        mean_dz[c] = s[c] / static_cast<double>(M);
        k[c] = invstd[c] * invstd[c] * s[C + c] / static_cast<double>(M);
      }
    }
    if (w.n == 0) return;
    const std::vector<acc_t> av = slots<acc_t>(w, a), mdz = slots<acc_t>(w, mean_dz), kv = slots<acc_t>(w, k);
    channel_for(w, GradInputTerm<scalar_t, acc_t, A>{gp, xp, grad_input.mutable_data_ptr<scalar_t>(), sc.data(),
                                                     sh.data(), mu.data(), av.data(), mdz.data(), kv.data(), al});
  });
  return {grad_input, channel_tensor(grad_weight, param_dtype), channel_tensor(grad_bias, param_dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("batch_norm_act", &batch_norm_act);
  m.impl("batch_norm_act_backward", &batch_norm_act_backward);
}

}  // namespace ganfast::cpu
