// CPU kernels of the bias_act family (bias + activation + gain + clamp, and its derivatives of
// every order). The math is csrc/gan_math.h's; the argument handling is csrc/ganfast_common.h's
// (shared with csrc/cuda/bias_act.cu); the loops are cpu_loops.h's.
//
// The bias of element i is b[c], c its index along dim. The kernels never divide per element:
//   contiguous, dim not last:  rows of inner = prod(sizes[dim+1:]) elements share one channel
//                              (chunked_row_for: the bias is a loop-invariant of the row);
//   contiguous with dim last, or 4-D channels_last with dim 1:  c = i % C, walked as a periodic
//                              pattern of the bias (chunked_cyclic_for) at least kMinPeriod long,
//                              so the inner loop is long even for a few channels;
//   anything else:             a contiguous copy.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../ganfast_common.h"
#include "cpu_alloc.h"
#include "channel_loops.h"
#include "cpu_loops.h"

namespace ganfast::cpu {
namespace {

using at::Tensor;

// Whether bias_act walks t (x, or y in the backward) in its own memory order.
bool walkable(const Tensor& t, int64_t dim) {
  return t.is_contiguous() || (t.dim() == 4 && dim == 1 && t.is_contiguous(at::MemoryFormat::ChannelsLast));
}

// How the elements of a walkable tensor meet the bias (channel_loops.h's walk; Plain without one).
ChannelWalk make_walk(const Tensor& t, bool has_bias, int64_t dim) {
  ChannelWalk w;
  w.n = t.numel();
  if (!has_bias || w.n == 0) return w;
  int64_t inner = 1;
  for (int64_t d = dim + 1; d < t.dim(); ++d) inner *= t.size(d);
  // not contiguous: 4-D channels_last with dim 1, c = i % C
  return make_channel_walk(w.n, t.size(dim), inner, t.is_contiguous());
}

// The bias in the compute dtype (b converted to x's dtype first, as the loss operands are):
// per channel for Rows, the periodic pattern for Cyclic.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
std::vector<acc_t> bias_values(const std::optional<Tensor>& b, const ChannelWalk& w) {
  if (w.mode == ChannelWalk::Plain) return {};
  const Tensor bt = b->to(c10::CppTypeToScalarType<scalar_t>::value).contiguous();
  const scalar_t* bp = bt.const_data_ptr<scalar_t>();
  const int64_t count = w.mode == ChannelWalk::Rows ? w.channels : w.len;
  std::vector<acc_t> values(static_cast<size_t>(count));
  for (int64_t j = 0; j < count; ++j) values[j] = static_cast<acc_t>(bp[j % w.channels]);
  return values;
}

// f(i, v) for every element i, v = x[i] + b[c] in the compute dtype (x[i] where there is no bias).
template <typename acc_t, typename scalar_t, typename F>
void for_each_biased(const ChannelWalk& w, const std::vector<acc_t>& bias, const scalar_t* x, const F& f) {
  const acc_t* bp = bias.data();
  switch (w.mode) {
    case ChannelWalk::Plain:
      chunked_for(w.n, [&](int64_t i) { f(i, static_cast<acc_t>(x[i])); });
      break;
    case ChannelWalk::Rows: {
      const int64_t channels = w.channels;
      chunked_row_for(
          w.n, w.len, [&](int64_t s) { return bp[s % channels]; },
          [&](acc_t bias_c, int64_t i) { f(i, static_cast<acc_t>(x[i]) + bias_c); });
      break;
    }
    case ChannelWalk::Cyclic:
      chunked_cyclic_for(w.n, w.len, [&](int64_t j, int64_t i) { f(i, static_cast<acc_t>(x[i]) + bp[j]); });
      break;
  }
}

// t in the dtype and memory layout of `like` (a dense tensor of t's shape); t itself when it
// already is (an expanded grad_output is materialised once).
Tensor like_layout(const Tensor& t, const Tensor& like) {
  if (t.scalar_type() == like.scalar_type() && t.strides() == like.strides()) return t;
  return empty_output_like(like).copy_(t);
}

// Calls f with the derivative order: a compile-time constant for the smooth activations (whose
// orders check_act_order limits to 1..kMaxActOrder), an int for the piecewise-linear ones (any
// order). A runtime order leaves act_derivative's nested order selects in the loop, which GCC
// does not vectorise (sigmoid's first derivative: ~10 ns per element instead of ~0.5); the
// piecewise-linear activations vectorise either way.
template <ActKind A, typename F>
void dispatch_order(int order, F&& f) {
  if constexpr (!math::act_is_piecewise_linear(A)) {
    static_assert(math::kMaxActOrder == 3, "dispatch_order: add the new orders");
    if (order == 1) return f(std::integral_constant<int, 1>{});
    if (order == 2) return f(std::integral_constant<int, 2>{});
    return f(std::integral_constant<int, 3>{});
  } else {
    f(order);
  }
}

// Calls f(scalar_t tag, A) for the dtype and the activation.
template <typename F>
void dispatch_bias_act(const Tensor& t, ActKind act, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "ganfast_bias_act", [&] {
    dispatch_act(act, [&](auto a) { f(scalar_t(0), a); });
  });
}

Tensor bias_act(const Tensor& x, const std::optional<Tensor>& b, int64_t dim, c10::string_view act_name,
                double alpha, double gain, double clamp) {
  constexpr const char* op = "ganfast::bias_act";
  const int64_t d = check_bias_act(op, x, b, dim);
  const ActKind act = parse_act(act_name);
  const bool has_bias = b.has_value() && b->defined();
  const Tensor xw = walkable(x, d) ? x : x.contiguous();
  Tensor y = empty_output_like(xw);
  const ChannelWalk w = make_walk(xw, has_bias, d);
  if (w.n == 0) return y;
  dispatch_bias_act(xw, act, [&](auto tag, auto a) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr ActKind A = decltype(a)::value;
    const acc_t al = static_cast<acc_t>(alpha), ga = static_cast<acc_t>(gain), cl = static_cast<acc_t>(clamp);
    const std::vector<acc_t> bias = bias_values<scalar_t>(b, w);
    const scalar_t* xp = xw.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    for_each_biased(w, bias, xp, [&](int64_t i, acc_t v) {
      yp[i] = static_cast<scalar_t>(math::bias_act_value<A>(v, al, ga, cl));
    });
  });
  return y;
}


Tensor bias_act_backward(const Tensor& grad_output, const std::optional<Tensor>& x, const std::optional<Tensor>& b,
                         const Tensor& y, int64_t dim, c10::string_view act_name, double alpha, double gain,
                         double clamp, int64_t order) {
  constexpr const char* op = "ganfast::bias_act_backward";
  const ActKind act = parse_act(act_name);
  const int64_t d = check_bias_act_backward(op, grad_output, x, b, y, dim, act, act_name, alpha, order);
  const bool has_x = x.has_value() && x->defined();
  const bool has_bias = has_x && b.has_value() && b->defined();
  // y's layout rules (x and grad_output are brought to it); the bias walk is y's.
  const Tensor yw = walkable(y, d) ? y : y.contiguous();
  Tensor out = empty_output_like(yw);
  const ChannelWalk w = make_walk(yw, has_bias, d);
  if (w.n == 0) return out;
  const Tensor gw = like_layout(grad_output, yw);
  const Tensor xw = has_x ? like_layout(*x, yw) : Tensor();
  // Every order past kMaxActOrder is 0 (piecewise-linear activations, the only ones allowed there).
  const int ord = static_cast<int>(std::min<int64_t>(order, math::kMaxActOrder + 1));
  dispatch_bias_act(yw, act, [&](auto tag, auto a) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr ActKind A = decltype(a)::value;
    const acc_t al = static_cast<acc_t>(alpha), ga = static_cast<acc_t>(gain), cl = static_cast<acc_t>(clamp);
    const scalar_t* gp = gw.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    const std::vector<acc_t> bias = has_x ? bias_values<scalar_t>(b, w) : std::vector<acc_t>();
    dispatch_order<A>(ord, [&](auto order_k) {
      if (has_x) {
        for_each_biased(w, bias, xw.const_data_ptr<scalar_t>(), [&](int64_t i, acc_t v) {
          const int k = order_k;
          op_[i] = static_cast<scalar_t>(static_cast<acc_t>(gp[i]) * math::bias_act_derivative<A>(v, al, ga, cl, k));
        });
      } else {
        const scalar_t* yp = yw.const_data_ptr<scalar_t>();
        chunked_for(w.n, [&](int64_t i) {
          const int k = order_k;
          op_[i] = static_cast<scalar_t>(static_cast<acc_t>(gp[i]) *
                                         math::bias_act_derivative_from_y<A>(static_cast<acc_t>(yp[i]), al, ga, cl, k));
        });
      }
    });
  });
  return out;
}

// bias_act_backward_with_bias's term: writes dx = g * f'(v) (order 1; v = x + b[c], or from y) and
// sums it as stored (rounded to scalar_t, so grad_bias is the sum of grad_input's own values).
template <typename scalar_t, typename acc_t, ActKind A, bool kFromY>
struct BiasGradTerm {
  const scalar_t* g;
  const scalar_t* src;  // x, or y (kFromY)
  scalar_t* out;
  const acc_t* bias;  // the walk's slots (unused kFromY)
  acc_t alpha, gain, clamp;
  acc_t param(int64_t j) const {
    if constexpr (kFromY) {
      return acc_t(0);
    } else {
      return bias[j];
    }
  }
  Sums<acc_t, 1> term(acc_t bias_c, int64_t i) const {
    const acc_t s = static_cast<acc_t>(src[i]);
    acc_t d;
    if constexpr (kFromY) {
      d = math::bias_act_derivative_from_y<A>(s, alpha, gain, clamp, 1);
    } else {
      d = math::bias_act_derivative<A>(s + bias_c, alpha, gain, clamp, 1);
    }
    const scalar_t o = static_cast<scalar_t>(static_cast<acc_t>(g[i]) * d);
    out[i] = o;
    return {{static_cast<acc_t>(o)}};
  }
};

std::tuple<Tensor, Tensor> bias_act_backward_with_bias(const Tensor& grad_output, const std::optional<Tensor>& x,
                                                       const std::optional<Tensor>& b, const Tensor& y, int64_t dim,
                                                       c10::string_view act_name, double alpha, double gain,
                                                       double clamp) {
  constexpr const char* op = "ganfast::bias_act_backward_with_bias";
  const ActKind act = parse_act(act_name);
  const int64_t d = check_bias_act_backward_with_bias(op, grad_output, x, b, y, dim, act, act_name, alpha);
  const bool has_x = x.has_value() && x->defined();
  // bias_act_backward's layout rules: y's (x and grad_output are brought to it).
  const Tensor yw = walkable(y, d) ? y : y.contiguous();
  Tensor out = empty_output_like(yw);
  const ChannelWalk w = make_walk(yw, true, d);
  std::vector<double> sums(static_cast<size_t>(b->size(0)), 0.0);
  if (w.n > 0) {
    const Tensor gw = like_layout(grad_output, yw);
    const Tensor xw = has_x ? like_layout(*x, yw) : Tensor();
    dispatch_bias_act(yw, act, [&](auto tag, auto a) {
      using scalar_t = decltype(tag);
      using acc_t = at::opmath_type<scalar_t>;
      constexpr ActKind A = decltype(a)::value;
      const acc_t al = static_cast<acc_t>(alpha), ga = static_cast<acc_t>(gain), cl = static_cast<acc_t>(clamp);
      const scalar_t* gp = gw.const_data_ptr<scalar_t>();
      scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
      if (has_x) {
        const std::vector<acc_t> bias = bias_values<scalar_t>(b, w);
        sums = channel_sums<acc_t, 1>(w, BiasGradTerm<scalar_t, acc_t, A, false>{
                                             gp, xw.const_data_ptr<scalar_t>(), op_, bias.data(), al, ga, cl});
      } else if constexpr (A != ActKind::Softplus && A != ActKind::Swish) {
        // (softplus and swish always take x: check_bias_act_backward)
        sums = channel_sums<acc_t, 1>(w, BiasGradTerm<scalar_t, acc_t, A, true>{
                                             gp, yw.const_data_ptr<scalar_t>(), op_, nullptr, al, ga, cl});
      }
    });
  }
  return {out, channel_tensor(sums, b->scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("bias_act", &bias_act);
  m.impl("bias_act_backward", &bias_act_backward);
  m.impl("bias_act_backward_with_bias", &bias_act_backward_with_bias);
}

}  // namespace ganfast::cpu
