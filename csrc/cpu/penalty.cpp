// CPU kernels of the penalty family (interpolate, penalty_from_grad and their derivatives). The
// math is csrc/gan_math.h's; the argument handling is csrc/ganfast_common.h's (shared with
// csrc/cuda/penalty.cu); the loops are cpu_loops.h's.
//
// Every op here is per sample: a sample is a row of numel / B elements of memory, so a tensor
// whose samples are blocks of memory (NCHW contiguous, channels_last) is walked as it is, any
// other layout as a contiguous copy. Per-sample values (eps, the penalty's scale) are held
// constant along a row (chunked_row_for); per-sample sums (norms, dots) are row_sums, fixed
// pieces added in order, so every result is the same for any number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../ganfast_common.h"
#include "cpu_alloc.h"
#include "cpu_loops.h"

namespace ganfast::cpu {
namespace {

using at::Tensor;

// The tensor a per-sample kernel walks: t itself when its samples are blocks of memory, else a
// contiguous copy.
Tensor as_sample_blocks(const Tensor& t) { return samples_are_blocks(t) ? t : t.contiguous(); }

// t in the dtype and memory layout of `like` (a dense tensor of t's shape); t itself when it
// already is (an expanded or otherwise strided t is materialised once).
Tensor like_layout(const Tensor& t, const Tensor& like) {
  if (t.scalar_type() == like.scalar_type() && t.strides() == like.strides()) return t;
  return empty_output_like(like).copy_(t);
}

// The upstream gradient of the penalty: one value, read as a 0-dim tensor in grad's dtype.
Tensor prepare_penalty_grad_output(const char* op, const Tensor& grad_output, const Tensor& grad) {
  check_penalty_grad_output(op, grad_output, grad);
  return grad_output.reshape({}).to(grad.scalar_type());
}

template <typename F>
void dispatch_penalty(const Tensor& grad, PenaltyKind kind, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "ganfast_penalty", [&] {
    dispatch_penalty_kind(kind, [&](auto k) { f(scalar_t(0), k); });
  });
}

// ---- interpolate ----

Tensor interpolate(const Tensor& real, const Tensor& fake, const Tensor& eps) {
  constexpr const char* op = "ganfast::interpolate";
  check_interpolate(op, real, fake, eps);
  const bool as_is = samples_are_blocks(real) && fake.strides() == real.strides();
  const Tensor r = as_is ? real : real.contiguous();
  const Tensor f = as_is ? fake : fake.contiguous();
  Tensor out = empty_output_like(r);
  const int64_t n = r.numel(), batch = r.size(0);
  if (n == 0) return out;
  const Tensor e = eps.to(r.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "ganfast_interpolate", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    const scalar_t* fp = f.const_data_ptr<scalar_t>();
    const scalar_t* ep = e.const_data_ptr<scalar_t>();
    scalar_t* yp = out.mutable_data_ptr<scalar_t>();
    chunked_row_for(
        n, n / batch, [&](int64_t b) { return static_cast<acc_t>(ep[b]); },
        [&](acc_t w, int64_t i) {
          yp[i] = static_cast<scalar_t>(math::interpolate(static_cast<acc_t>(rp[i]), static_cast<acc_t>(fp[i]), w));
        });
  });
  return out;
}


std::tuple<Tensor, Tensor> interpolate_backward(const Tensor& grad_output, const Tensor& eps) {
  constexpr const char* op = "ganfast::interpolate_backward";
  check_interpolate_backward(op, grad_output, eps);
  const Tensor g = as_sample_blocks(grad_output);
  Tensor grad_real = empty_output_like(g), grad_fake = empty_output_like(g);
  const int64_t n = g.numel(), batch = g.size(0);
  if (n == 0) return {grad_real, grad_fake};
  const Tensor e = eps.to(g.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "ganfast_interpolate_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* ep = e.const_data_ptr<scalar_t>();
    scalar_t* rp = grad_real.mutable_data_ptr<scalar_t>();
    scalar_t* fp = grad_fake.mutable_data_ptr<scalar_t>();
    chunked_row_for(
        n, n / batch, [&](int64_t b) { return static_cast<acc_t>(ep[b]); },
        [&](acc_t w, int64_t i) {
          const acc_t v = static_cast<acc_t>(gp[i]);
          rp[i] = static_cast<scalar_t>(w * v);
          fp[i] = static_cast<scalar_t>((acc_t(1) - w) * v);
        });
  });
  return {grad_real, grad_fake};
}

// ---- penalty_from_grad ----

std::tuple<Tensor, Tensor> penalty_from_grad(const Tensor& grad, c10::string_view kind_name, double center) {
  constexpr const char* op = "ganfast::penalty_from_grad";
  check_penalty_grad(op, grad);
  const PenaltyKind kind = parse_penalty_kind(kind_name);
  const Tensor g = as_sample_blocks(grad);
  const int64_t batch = g.size(0);
  const int64_t len = batch == 0 ? 0 : g.numel() / batch;
  const auto compute = g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor penalty = at::empty({}, g.options());
  Tensor norms = at::empty({batch}, g.options().dtype(compute));
  dispatch_penalty(g, kind, [&](auto tag, auto k) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr PenaltyKind K = decltype(k)::value;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const std::vector<double> sq = row_sums<acc_t>(batch, len, [&](int64_t i) {
      const acc_t v = static_cast<acc_t>(gp[i]);
      return v * v;
    });
    acc_t* np = norms.mutable_data_ptr<acc_t>();
    const acc_t c = static_cast<acc_t>(center);
    double total = 0;
    for (int64_t b = 0; b < batch; ++b) {
      np[b] = static_cast<acc_t>(std::sqrt(sq[b]));
      total += static_cast<double>(math::penalty_value<K>(np[b], c));
    }
    // the mean of nothing is NaN, as torch's
    *penalty.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(total / static_cast<double>(batch));
  });
  return {penalty, norms};
}

Tensor penalty_from_grad_backward(const Tensor& grad_output, const Tensor& grad, const Tensor& norms,
                                  c10::string_view kind_name, double center) {
  constexpr const char* op = "ganfast::penalty_from_grad_backward";
  check_penalty_grad(op, grad);
  check_penalty_norms(op, grad, norms);
  const Tensor gamma = prepare_penalty_grad_output(op, grad_output, grad);
  const PenaltyKind kind = parse_penalty_kind(kind_name);
  const Tensor g = as_sample_blocks(grad);
  Tensor out = empty_output_like(g);
  const int64_t n = g.numel(), batch = g.size(0);
  if (n == 0) return out;
  const Tensor nrm = norms.contiguous();
  dispatch_penalty(g, kind, [&](auto tag, auto k) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr PenaltyKind K = decltype(k)::value;
    const acc_t scale = static_cast<acc_t>(*gamma.const_data_ptr<scalar_t>()) / static_cast<acc_t>(batch);
    const acc_t c = static_cast<acc_t>(center);
    const acc_t* np = nrm.const_data_ptr<acc_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* yp = out.mutable_data_ptr<scalar_t>();
    chunked_row_for(
        n, n / batch, [&](int64_t b) { return scale * math::penalty_scale<K>(np[b], c); },
        [&](acc_t s, int64_t i) { yp[i] = static_cast<scalar_t>(s * static_cast<acc_t>(gp[i])); });
  });
  return out;
}

// ---- penalty_from_grad_double_backward ----


std::tuple<Tensor, Tensor> penalty_from_grad_double_backward(const Tensor& grad_grad, const Tensor& grad_output,
                                                             const Tensor& grad, const Tensor& norms,
                                                             c10::string_view kind_name, double center) {
  constexpr const char* op = "ganfast::penalty_from_grad_double_backward";
  check_penalty_grad(op, grad);
  check_penalty_norms(op, grad, norms);
  const Tensor gamma = prepare_penalty_grad_output(op, grad_output, grad);
  check_penalty_grad_grad(op, grad_grad, grad);
  const PenaltyKind kind = parse_penalty_kind(kind_name);
  const Tensor g = as_sample_blocks(grad);
  const Tensor v = like_layout(grad_grad, g);
  Tensor d_grad = empty_output_like(g);
  Tensor d_grad_output = at::empty({}, g.options());
  const int64_t n = g.numel(), batch = g.size(0);
  const int64_t len = batch == 0 ? 0 : n / batch;
  const Tensor nrm = norms.contiguous();
  dispatch_penalty(g, kind, [&](auto tag, auto k) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr PenaltyKind K = decltype(k)::value;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    const acc_t* np = nrm.const_data_ptr<acc_t>();
    const acc_t c = static_cast<acc_t>(center);
    // dot_b = <V_b, g_b>
    const std::vector<double> dots = row_sums<acc_t>(batch, len, [&](int64_t i) {
      return static_cast<acc_t>(vp[i]) * static_cast<acc_t>(gp[i]);
    });
    // Per sample: s(n_b) and s'(n_b) / n_b * dot_b.
    struct Coef {
      acc_t s, u;
    };
    std::vector<Coef> coef(static_cast<size_t>(batch));
    double total = 0;
    for (int64_t b = 0; b < batch; ++b) {
      const acc_t dot = static_cast<acc_t>(dots[b]);
      const acc_t s = math::penalty_scale<K>(np[b], c);
      coef[b] = {s, math::penalty_scale_dn_over_n<K>(np[b], c) * dot};
      total += static_cast<double>(s * dot);
    }
    // d/d grad_output of a backward whose output is empty is 0 (as torch's), not 0 / 0.
    *d_grad_output.mutable_data_ptr<scalar_t>() =
        static_cast<scalar_t>(batch == 0 ? 0.0 : total / static_cast<double>(batch));
    if (n == 0) return;
    const acc_t scale = static_cast<acc_t>(*gamma.const_data_ptr<scalar_t>()) / static_cast<acc_t>(batch);
    scalar_t* yp = d_grad.mutable_data_ptr<scalar_t>();
    chunked_row_for(
        n, len, [&](int64_t b) { return coef[b]; },
        [&](const Coef& p, int64_t i) {
          yp[i] = static_cast<scalar_t>(
              scale * (p.s * static_cast<acc_t>(vp[i]) + p.u * static_cast<acc_t>(gp[i])));
        });
  });
  return {d_grad_output, d_grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("interpolate", &interpolate);
  m.impl("interpolate_backward", &interpolate_backward);
  m.impl("penalty_from_grad", &penalty_from_grad);
  m.impl("penalty_from_grad_backward", &penalty_from_grad_backward);
  m.impl("penalty_from_grad_double_backward", &penalty_from_grad_double_backward);
}

}  // namespace ganfast::cpu
