// CPU kernels of the batch_norm_act family (BatchNorm statistics + normalise + affine +
// activation, and its fused backward), which also serve instance_norm_act: instance norm over x
// (N, C, *) is batch norm over the view (1, N * C, S) of contiguous x (instance k = n * C + c, affine
// parameter k % C, mapped where the per-channel coefficients are made: affine_coefficients). The
// math is csrc/gan_math.h's (batch_norm_act_value, batch_norm_act_dz, batch_norm_grad_input); the
// argument checks csrc/ganfast_common.h's (shared with csrc/cuda/batch_norm_act.cu); the loop
// shapes those of cpu_loops.h.
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
// Conditional BatchNorm (weight / bias (N, C), one per sample; issue 12): the statistics pass walks
// NCHW-contiguous x by channel as above; the elementwise passes and the backward's reduction walk its
// view (1, N * C, S) by instance k = n * C + c (instance_norm_act's view), whose coefficients
// (scale = w[n, c] invstd[c], shift) are loop invariants of a row. The backward's reduction gives per
// instance (sum_s dz, sum_s dz (x - mean)): the (N, C) bias / weight gradients, and, w-weighted and
// summed over the samples on the host, the per-channel terms of the input gradient
// (gan_math.h batch_norm_grad_input_per_sample). Same passes as the (C,) path: one reduction, one
// elementwise pass each way (a channels_last input is made contiguous first).
//
// Reductions are deterministic for any number of threads: the elements of a channel are cut into
// fixed pieces (Rows: at most kRowsPiece elements, summed in 16 float lanes; Cyclic: at most kChunk,
// in the len lanes of the periodic pattern; in the compute type), the pieces run in parallel, and their partial
// sums are added in a fixed order in double (channel_loops.h, shared with bias_act's bias gradient).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../ganfast_common.h"
#include "cpu_alloc.h"
#include "channel_loops.h"
#include "cpu_loops.h"

namespace ganfast::cpu {
namespace {

using at::Tensor;

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

using Walk = ChannelWalk;
template <typename acc_t>
using Two = Sums<acc_t, 2>;

// t is walkable (see above).
Walk make_walk(const Tensor& t) { return make_channel_walk(t.numel(), t.size(1), inner_size(t), t.is_contiguous()); }

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

template <typename acc_t>
struct PerSampleGradParam {
  acc_t scale, shift, mean, p, q;
};

// Backward elementwise of conditional BatchNorm (per-sample weight): dx = a dz - p - (x - mean) q with
// a = scale (gan_math.h batch_norm_grad_input_per_sample); one slot per instance (n, c).
template <typename scalar_t, typename acc_t, ActKind A>
struct PerSampleGradInputTerm {
  const scalar_t* g;
  const scalar_t* x;
  scalar_t* out;
  const acc_t *scale, *shift, *mean, *p, *q;
  acc_t alpha;
  PerSampleGradParam<acc_t> param(int64_t j) const { return {scale[j], shift[j], mean[j], p[j], q[j]}; }
  void apply(const PerSampleGradParam<acc_t>& pr, int64_t i) const {
    const acc_t xv = static_cast<acc_t>(x[i]);
    const acc_t dz = math::batch_norm_act_dz<A>(static_cast<acc_t>(g[i]), xv, pr.scale, pr.shift, alpha);
    out[i] = static_cast<scalar_t>(math::batch_norm_grad_input_per_sample(dz, xv, pr.mean, pr.scale, pr.p, pr.q));
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

// An affine operand per instance k = n * C + c (N * C doubles): (N, C) as is, (C,) repeated over the
// samples, `fill` where absent.
std::vector<double> sample_values(const std::optional<Tensor>& t, int64_t N, int64_t C, double fill) {
  std::vector<double> v(static_cast<size_t>(N * C), fill);
  if (!t.has_value() || !t->defined()) return v;
  const Tensor d = t->to(at::kDouble).contiguous();
  const double* p = d.const_data_ptr<double>();
  const int64_t period = d.numel();  // C or N * C
  for (int64_t k = 0; k < N * C; ++k) v[k] = p[k % period];
  return v;
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

// ---- the passes both families run ---------------------------------------------------------------
// Over a walk of `channels` channels (batch_norm_act: C; instance_norm_act: the N * C instances of the
// view (1, N * C, S)), with per-channel coefficients the caller made from its parameters.

// The mean and biased variance of each channel (M values each, M > 0) from one statistics pass.
void channel_statistics(const Tensor& x, const Walk& w, int64_t M, std::vector<double>& mean,
                        std::vector<double>& var) {
  const int64_t C = w.channels;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ganfast_batch_norm_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    // K[c]: the channel's first element (sample 0, position 0).
    std::vector<double> k(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c)
      k[c] = static_cast<double>(static_cast<acc_t>(xp[w.mode == Walk::Rows ? c * w.len : c]));
    const std::vector<acc_t> shift = slots<acc_t>(w, k);
    const std::vector<double> s = channel_sums<acc_t, 2>(w, StatsTerm<scalar_t, acc_t>{xp, shift.data()});
    for (int64_t c = 0; c < C; ++c) {
      const double d = s[c] / static_cast<double>(M);
      mean[c] = k[c] + d;
      var[c] = std::max(s[C + c] / static_cast<double>(M) - d * d, 0.0);
    }
  });
}

// out = f(x * scale[c] + shift[c]), one elementwise pass (w.n > 0).
void normalize_act(const Tensor& x, Tensor& out, const Walk& w, ActKind act, double alpha,
                   const std::vector<double>& scale, const std::vector<double>& shift) {
  dispatch_batch_norm_act(x, act, [&](auto tag, auto a) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr ActKind A = decltype(a)::value;
    const std::vector<acc_t> sc = slots<acc_t>(w, scale), sh = slots<acc_t>(w, shift);
    channel_for(w, ForwardTerm<scalar_t, acc_t, A>{x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                                   sc.data(), sh.data(), static_cast<acc_t>(alpha)});
  });
}

// The backward's two passes: per channel (sum dz, sum dz (x - mean)), returned as s[0 .. C) and
// s[C .. 2C) (C = w.channels), then grad_input (centred by the batch terms when `centre`: training
// with M > 0). scale / shift / mean / invstd per channel, a = scale.
std::vector<double> backward_passes(const Tensor& g, const Tensor& x, Tensor& grad_input, const Walk& w, ActKind act,
                                    double alpha, const std::vector<double>& scale, const std::vector<double>& shift,
                                    const std::vector<double>& mean, const std::vector<double>& invstd, int64_t M,
                                    bool centre) {
  const int64_t C = w.channels;
  std::vector<double> s;
  dispatch_batch_norm_act(x, act, [&](auto tag, auto act_tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr ActKind A = decltype(act_tag)::value;
    const std::vector<acc_t> sc = slots<acc_t>(w, scale), sh = slots<acc_t>(w, shift), mu = slots<acc_t>(w, mean);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const acc_t al = static_cast<acc_t>(alpha);
    s = channel_sums<acc_t, 2>(w, BackwardSumTerm<scalar_t, acc_t, A>{gp, xp, sc.data(), sh.data(), mu.data(), al});
    if (w.n == 0) return;
    std::vector<double> mean_dz(static_cast<size_t>(C), 0.0), k(static_cast<size_t>(C), 0.0);
    if (centre) {
      for (int64_t c = 0; c < C; ++c) {
        mean_dz[c] = s[c] / static_cast<double>(M);
        k[c] = invstd[c] * invstd[c] * s[C + c] / static_cast<double>(M);
      }
    }
    const std::vector<acc_t> av = slots<acc_t>(w, scale), mdz = slots<acc_t>(w, mean_dz), kv = slots<acc_t>(w, k);
    channel_for(w, GradInputTerm<scalar_t, acc_t, A>{gp, xp, grad_input.mutable_data_ptr<scalar_t>(), sc.data(),
                                                     sh.data(), mu.data(), av.data(), mdz.data(), kv.data(), al});
  });
  return s;
}

// Conditional BatchNorm's backward over the instance walk w (N * C instances k = n * C + c of the
// view (1, N * C, S)): one reduction pass gives per instance (sum_s dz, sum_s dz (x - mean)), returned
// as s[0 .. NC) and s[NC .. 2 NC); the per-channel training terms p, q (gan_math.h
// batch_norm_grad_input_per_sample) are their w-weighted sums over the samples (host, in order:
// deterministic); then one elementwise pass writes grad_input. Per instance: wv (the weight), scale,
// shift, mean_k, invstd_k; C channels; M values per channel.
std::vector<double> backward_passes_per_sample(const Tensor& g, const Tensor& x, Tensor& grad_input, const Walk& w,
                                               ActKind act, double alpha, int64_t C, const std::vector<double>& wv,
                                               const std::vector<double>& scale, const std::vector<double>& shift,
                                               const std::vector<double>& mean_k, const std::vector<double>& invstd_k,
                                               int64_t M, bool centre) {
  const int64_t NC = w.channels;
  std::vector<double> s;
  dispatch_batch_norm_act(x, act, [&](auto tag, auto act_tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr ActKind A = decltype(act_tag)::value;
    const std::vector<acc_t> sc = slots<acc_t>(w, scale), sh = slots<acc_t>(w, shift), mu = slots<acc_t>(w, mean_k);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const acc_t al = static_cast<acc_t>(alpha);
    s = channel_sums<acc_t, 2>(w, BackwardSumTerm<scalar_t, acc_t, A>{gp, xp, sc.data(), sh.data(), mu.data(), al});
    if (w.n == 0) return;
    std::vector<double> p(static_cast<size_t>(NC), 0.0), q(static_cast<size_t>(NC), 0.0);
    if (centre) {
      std::vector<double> m1(static_cast<size_t>(C), 0.0), m2(static_cast<size_t>(C), 0.0);
      for (int64_t k = 0; k < NC; ++k) {  // samples in order
        m1[k % C] += wv[k] * s[k];
        m2[k % C] += wv[k] * s[NC + k];
      }
      for (int64_t k = 0; k < NC; ++k) {
        const double is = invstd_k[k];
        p[k] = is * m1[k % C] / static_cast<double>(M);
        q[k] = is * is * is * m2[k % C] / static_cast<double>(M);
      }
    }
    const std::vector<acc_t> pv = slots<acc_t>(w, p), qv = slots<acc_t>(w, q);
    channel_for(w, PerSampleGradInputTerm<scalar_t, acc_t, A>{gp, xp, grad_input.mutable_data_ptr<scalar_t>(),
                                                              sc.data(), sh.data(), mu.data(), pv.data(), qv.data(),
                                                              al});
  });
  return s;
}

// scale[k] = w[k % period] invstd[k], shift[k] = b[k % period] - mean[k] scale[k] over the walk's
// channels: the channel-to-parameter mapping (period = C: batch norm's identity; instance norm's
// instance k = n * C + c takes parameter c).
void affine_coefficients(const std::vector<double>& wv, const std::vector<double>& bv, const std::vector<double>& mean,
                         const std::vector<double>& invstd, std::vector<double>& scale, std::vector<double>& shift) {
  const size_t period = wv.size();
  for (size_t k = 0; k < mean.size(); ++k) {
    scale[k] = wv[k % period] * invstd[k];
    shift[k] = bv[k % period] - mean[k] * scale[k];
  }
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
  const bool per_sample = batch_norm_per_sample(weight, bias);
  // Per sample: the statistics walk NCHW contiguous x by channel, the elementwise pass its view
  // (1, N * C, S) by instance (n, c), whose affine coefficients are then loop invariants of a row.
  const Tensor x = per_sample ? input.contiguous() : walkable(input);
  Tensor out = empty_output_like(x);
  const int64_t C = x.size(1);
  const Walk w = make_walk(x);
  const auto compute = batch_norm_compute_dtype(x.scalar_type());

  std::vector<double> mean(static_cast<size_t>(C), 0.0), invstd(static_cast<size_t>(C));
  if (training) {
    std::vector<double> var(static_cast<size_t>(C), 0.0);
    if (M > 0) channel_statistics(x, w, M, mean, var);
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

  if (w.n > 0 && per_sample) {
    const int64_t N = x.size(0), NC = N * C;
    const std::vector<double> wv = sample_values(weight, N, C, 1.0), bv = sample_values(bias, N, C, 0.0);
    std::vector<double> scale(static_cast<size_t>(NC)), shift(static_cast<size_t>(NC));
    for (int64_t k = 0; k < NC; ++k) {
      scale[k] = wv[k] * invstd[k % C];
      shift[k] = bv[k] - mean[k % C] * scale[k];
    }
    const Tensor xi = instance_view(x);
    Tensor out_i = out.view(xi.sizes());
    normalize_act(xi, out_i, make_walk(xi), act, alpha, scale, shift);
  } else if (w.n > 0) {
    std::vector<double> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C));
    affine_coefficients(channel_values(weight, C, 1.0), channel_values(bias, C, 0.0), mean, invstd, scale, shift);
    normalize_act(x, out, w, act, alpha, scale, shift);
  }
  return {out, channel_tensor(mean, compute), channel_tensor(invstd, compute)};
}

// The gradient of an affine operand from its per-instance gradient (N * C values, index n * C + c):
// (N, C) as is where the operand is per sample, else summed over the samples in order: (C,).
Tensor affine_grad(const std::vector<double>& per_instance, int64_t N, int64_t C, bool operand_per_sample,
                   at::ScalarType dtype) {
  if (operand_per_sample) return channel_tensor(per_instance, dtype).view({N, C});
  std::vector<double> v(static_cast<size_t>(C), 0.0);
  for (int64_t k = 0; k < N * C; ++k) v[k % C] += per_instance[k];
  return channel_tensor(v, dtype);
}

// batch_norm_act_backward with a per-sample weight or bias (x NCHW contiguous, walked by instance).
std::tuple<Tensor, Tensor, Tensor> batch_norm_act_backward_per_sample(
    const Tensor& grad_output, const Tensor& input, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& bias, const Tensor& save_mean, const Tensor& save_invstd, bool training, ActKind act,
    double alpha, int64_t M) {
  const Tensor x = input.contiguous();
  const int64_t N = x.size(0), C = x.size(1), NC = N * C;
  const Tensor xi = instance_view(x);
  const Tensor g = grad_output.to(x.scalar_type()).contiguous().view(xi.sizes());
  Tensor grad_input = empty_output_like(x);
  Tensor gi = grad_input.view(xi.sizes());
  const Walk w = make_walk(xi);
  const auto param_dtype = weight.has_value() && weight->defined() ? weight->scalar_type() : input.scalar_type();
  const std::vector<double> mean = channel_values(save_mean, C, 0.0), invstd = channel_values(save_invstd, C, 1.0);
  const std::vector<double> wv = sample_values(weight, N, C, 1.0), bv = sample_values(bias, N, C, 0.0);
  std::vector<double> scale(static_cast<size_t>(NC)), shift(static_cast<size_t>(NC)), mean_k(static_cast<size_t>(NC)),
      invstd_k(static_cast<size_t>(NC));
  for (int64_t k = 0; k < NC; ++k) {
    mean_k[k] = mean[k % C];
    invstd_k[k] = invstd[k % C];
    scale[k] = wv[k] * invstd_k[k];
    shift[k] = bv[k] - mean_k[k] * scale[k];
  }
  const std::vector<double> s = backward_passes_per_sample(g, xi, gi, w, act, alpha, C, wv, scale, shift, mean_k,
                                                           invstd_k, M, training && M > 0);
  std::vector<double> gw(static_cast<size_t>(NC)), gb(static_cast<size_t>(NC));
  for (int64_t k = 0; k < NC; ++k) {
    gb[k] = s[k];
    gw[k] = s[NC + k] * invstd_k[k];
  }
  auto ps = [](const std::optional<Tensor>& t) { return t.has_value() && t->defined() && t->dim() == 2; };
  return {grad_input, affine_grad(gw, N, C, ps(weight), param_dtype), affine_grad(gb, N, C, ps(bias), param_dtype)};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_act_backward(const Tensor& grad_output, const Tensor& input,
                                                           const std::optional<Tensor>& weight,
                                                           const std::optional<Tensor>& bias,
                                                           const Tensor& save_mean, const Tensor& save_invstd,
                                                           bool training, c10::string_view act_name, double alpha) {
  constexpr const char* op = "ganfast::batch_norm_act_backward";
  const int64_t M = check_batch_norm_act_backward(op, grad_output, input, weight, bias, save_mean, save_invstd);
  const ActKind act = parse_act(act_name);
  if (batch_norm_per_sample(weight, bias))
    return batch_norm_act_backward_per_sample(grad_output, input, weight, bias, save_mean, save_invstd, training, act,
                                              alpha, M);
  const Tensor x = walkable(input);
  Tensor grad_input = empty_output_like(x);
  const int64_t C = x.size(1);
  const Walk w = make_walk(x);
  const Tensor g = like_layout(grad_output, x);
  const auto param_dtype = weight.has_value() && weight->defined() ? weight->scalar_type() : input.scalar_type();

  const std::vector<double> mean = channel_values(save_mean, C, 0.0), invstd = channel_values(save_invstd, C, 1.0);
  std::vector<double> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C));
  affine_coefficients(channel_values(weight, C, 1.0), channel_values(bias, C, 0.0), mean, invstd, scale, shift);
  const std::vector<double> s =
      backward_passes(g, x, grad_input, w, act, alpha, scale, shift, mean, invstd, M, training && M > 0);
  std::vector<double> grad_weight(static_cast<size_t>(C)), grad_bias(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    grad_bias[c] = s[c];
    grad_weight[c] = s[C + c] * invstd[c];
  }
  return {grad_input, channel_tensor(grad_weight, param_dtype), channel_tensor(grad_bias, param_dtype)};
}

// instance_norm_act: batch_norm_act's passes over the view (1, N * C, S) of the contiguous input (a
// Rows walk of N * C channels: S > 1), the affine parameters mapped by k % C.
std::tuple<Tensor, Tensor, Tensor> instance_norm_act(const Tensor& input, const std::optional<Tensor>& weight,
                                                     const std::optional<Tensor>& bias, double eps,
                                                     c10::string_view act_name, double alpha) {
  constexpr const char* op = "ganfast::instance_norm_act";
  const int64_t S = check_instance_norm_act(op, input, weight, bias, eps);
  const ActKind act = parse_act(act_name);
  const Tensor x = instance_view(input.contiguous());
  Tensor out_view = empty_output_like(x);
  const int64_t C = input.size(1), NC = x.size(1);
  const Walk w = make_walk(x);
  std::vector<double> mean(static_cast<size_t>(NC), 0.0), var(static_cast<size_t>(NC), 0.0),
      invstd(static_cast<size_t>(NC));
  if (S > 0 && NC > 0) channel_statistics(x, w, S, mean, var);
  for (int64_t k = 0; k < NC; ++k) invstd[k] = 1.0 / std::sqrt(var[k] + eps);
  if (w.n > 0) {
    std::vector<double> scale(static_cast<size_t>(NC)), shift(static_cast<size_t>(NC));
    affine_coefficients(channel_values(weight, C, 1.0), channel_values(bias, C, 0.0), mean, invstd, scale, shift);
    normalize_act(x, out_view, w, act, alpha, scale, shift);
  }
  const auto compute = batch_norm_compute_dtype(x.scalar_type());
  return {out_view.view(input.sizes()), channel_tensor(mean, compute), channel_tensor(invstd, compute)};
}

std::tuple<Tensor, Tensor, Tensor> instance_norm_act_backward(const Tensor& grad_output, const Tensor& input,
                                                              const std::optional<Tensor>& weight,
                                                              const std::optional<Tensor>& bias,
                                                              const Tensor& save_mean, const Tensor& save_invstd,
                                                              c10::string_view act_name, double alpha) {
  constexpr const char* op = "ganfast::instance_norm_act_backward";
  const int64_t S =
      check_instance_norm_act_backward(op, grad_output, input, weight, bias, save_mean, save_invstd);
  const ActKind act = parse_act(act_name);
  const Tensor x = instance_view(input.contiguous());
  const Tensor g = grad_output.to(x.scalar_type()).contiguous().view(x.sizes());
  Tensor gi_view = empty_output_like(x);
  const int64_t C = input.size(1), NC = x.size(1);
  const Walk w = make_walk(x);
  const auto param_dtype = weight.has_value() && weight->defined() ? weight->scalar_type() : input.scalar_type();
  const std::vector<double> mean = channel_values(save_mean, NC, 0.0), invstd = channel_values(save_invstd, NC, 1.0);
  std::vector<double> scale(static_cast<size_t>(NC)), shift(static_cast<size_t>(NC));
  affine_coefficients(channel_values(weight, C, 1.0), channel_values(bias, C, 0.0), mean, invstd, scale, shift);
  const std::vector<double> s = backward_passes(g, x, gi_view, w, act, alpha, scale, shift, mean, invstd, S, S > 0);
  // grad_weight / grad_bias: the per-instance sums (in double, from the reduction above) added over
  // the samples n = 0 .. N-1 in order: the tiny (N, C) -> (C) sum, on the host, deterministic.
  std::vector<double> grad_weight(static_cast<size_t>(C), 0.0), grad_bias(static_cast<size_t>(C), 0.0);
  for (int64_t k = 0; k < NC; ++k) {
    grad_bias[k % C] += s[k];
    grad_weight[k % C] += s[NC + k] * invstd[k];
  }
  return {gi_view.view(input.sizes()), channel_tensor(grad_weight, param_dtype),
          channel_tensor(grad_bias, param_dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("batch_norm_act", &batch_norm_act);
  m.impl("batch_norm_act_backward", &batch_norm_act_backward);
  m.impl("instance_norm_act", &instance_norm_act);
  m.impl("instance_norm_act_backward", &instance_norm_act_backward);
}

}  // namespace ganfast::cpu
