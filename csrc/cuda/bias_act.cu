// CUDA kernels of the bias_act family: the twin of csrc/cpu/bias_act.cpp, with the same functions,
// the same names and the same semantics. The math is csrc/gan_math.h's (bias_act_value,
// bias_act_derivative, bias_act_derivative_from_y); the argument checks are
// csrc/ganfast_common.h's (check_bias_act, parse_act, check_act_order) plus the few marked below.
//
// Layout: a contiguous x runs as is with channel c = (i / inner) % C, inner = prod(sizes[dim+1:]);
// a 4-D channels_last x with dim 1 runs as is with c = i % C (memory order); anything else is made
// contiguous. The output is empty_like of what runs (so channels_last stays channels_last). The
// backward takes y's layout by the same rule and brings x and grad_output to it (a copy only where
// their strides differ); a grad_output that is one value expanded (every stride 0, as the backward
// of a sum) is read as that one value.
//
// Kernels: map_kernel of cuda_utils.cuh (kThreads = 256, int64 indexing, 16-byte vectors
// grid-stride within one wave, a scalar instantiation where a pointer is not 16-byte aligned),
// specialised per dtype and activation; opmath (float for float, half and bfloat16, double for
// double) throughout. The bias values of a vector's elements are gathered with one division-free
// div_mod (BcastCursor) before the math. alpha, gain and clamp are converted to opmath on the host;
// the derivative order is a run-time argument.
//
// bias_act_backward_with_bias: bias_act_backward's order-1 pass as a term of channel_reduce.cuh's
// reduce kernels (batch_norm_act's): each block writes its elements of grad_input and sums them
// (as stored) per channel into partial [C][P]; channel_sum_kernel adds each channel's pieces in a
// fixed order (in double) into grad_bias. Two launches, no atomics, no host synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>

#include "../ganfast_common.h"
#include "channel_reduce.cuh"
#include "cuda_utils.cuh"

namespace ganfast::cuda {
namespace {

using at::Tensor;

// ---------------------------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------------------------

// Whether the kernels run over t's memory as is: contiguous, or 4-D channels_last with dim 1.
bool runs_as_is(const Tensor& t, int64_t dim) {
  return t.is_contiguous() || (t.dim() == 4 && dim == 1 && t.is_contiguous(at::MemoryFormat::ChannelsLast));
}

// The bias operand on the device: b[(i / inner) % C] at memory position i of `like` (which runs
// as is), or absent (data null: no bias).
template <typename scalar_t>
BcastRef<scalar_t> bias_ref(const std::optional<Tensor>& b, const Tensor& bias, const Tensor& like, int64_t dim) {
  BcastRef<scalar_t> r;
  if (!b.has_value() || !b->defined()) return r;
  r.data = bias.const_data_ptr<scalar_t>();
  if (like.is_contiguous()) {
    r.inner = 1;
    for (int64_t d = dim + 1; d < like.dim(); ++d) r.inner *= like.size(d);
    r.period = like.size(dim);
  } else {  // 4-D channels_last, dim 1: channels are the fastest dimension
    r.inner = 1;
    r.period = like.size(1);
  }
  r.inv_inner = 1.0 / static_cast<double>(r.inner);
  r.inv_period = 1.0 / static_cast<double>(r.period);
  return r;
}

void check_index_range(const char* op, int64_t n) {
  TORCH_CHECK(n < kMaxBroadcastIndex, op, ": a tensor of ", n, " elements is too large for the CUDA kernels");
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

// The bias values of the elements [i, i + W) in opmath, 0 where there is no bias.
template <int W, typename scalar_t>
__device__ __forceinline__ void gather_bias(const BcastRef<scalar_t>& b, int64_t i, at::opmath_type<scalar_t> (&out)[W]) {
  using acc_t = at::opmath_type<scalar_t>;
  if (b.data == nullptr) {
#pragma unroll
    for (int k = 0; k < W; ++k) out[k] = acc_t(0);
    return;
  }
  BcastCursor c;
  c.start(b, i);
#pragma unroll
  for (int k = 0; k < W; ++k) {
    out[k] = static_cast<acc_t>(load_ro(b.data + c.idx));
    if (k + 1 < W) c.advance(b);
  }
}

template <typename T>
struct ActArgs {
  T alpha, gain, clamp;
};

// y = bias_act_value<A>(x + b[c]).
template <typename scalar_t, int V, ActKind A>
struct BiasActMap {
  static constexpr int kWidth = V;
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  BcastRef<scalar_t> b;
  scalar_t* y;
  int64_t n;
  ActArgs<acc_t> p;

  __device__ __forceinline__ void run(int64_t tid, int64_t nthreads) const {
    vec_loop<V>(n, tid, nthreads, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      acc_t bias[W];
      gather_bias<W>(b, i, bias);
      const Vec<scalar_t, W> xv = load_vec<W>(x + i);
      Vec<scalar_t, W> out;
#pragma unroll
      for (int k = 0; k < W; ++k)
        out.v[k] = static_cast<scalar_t>(
            math::bias_act_value<A>(static_cast<acc_t>(xv.v[k]) + bias[k], p.alpha, p.gain, p.clamp));
      store_vec<W>(y + i, out);
    });
  }
};

// out = g * d^order y / dv^order, from v = x + b[c] (kFromY false) or from y (kFromY true);
// g = grad_output, or its one value g[0] where g_is_scalar.
template <typename scalar_t, int V, ActKind A, bool kFromY>
struct BiasActBackwardMap {
  static constexpr int kWidth = V;
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g;
  bool g_is_scalar;
  const scalar_t* src;  // x (kFromY false) or y
  BcastRef<scalar_t> b;  // unused with kFromY
  scalar_t* out;
  int64_t n;
  ActArgs<acc_t> p;
  int order;

  __device__ __forceinline__ void run(int64_t tid, int64_t nthreads) const {
    const acc_t g0 = g_is_scalar ? static_cast<acc_t>(load_ro(g)) : acc_t(0);
    vec_loop<V>(n, tid, nthreads, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      acc_t d[W];
      if constexpr (kFromY) {
        const Vec<scalar_t, W> yv = load_vec<W>(src + i);
#pragma unroll
        for (int k = 0; k < W; ++k)
          d[k] = math::bias_act_derivative_from_y<A>(static_cast<acc_t>(yv.v[k]), p.alpha, p.gain, p.clamp, order);
      } else {
        acc_t bias[W];
        gather_bias<W>(b, i, bias);
        const Vec<scalar_t, W> xv = load_vec<W>(src + i);
#pragma unroll
        for (int k = 0; k < W; ++k)
          d[k] = math::bias_act_derivative<A>(static_cast<acc_t>(xv.v[k]) + bias[k], p.alpha, p.gain, p.clamp,
                                              order);
      }
      Vec<scalar_t, W> o;
      if (g_is_scalar) {
#pragma unroll
        for (int k = 0; k < W; ++k) o.v[k] = static_cast<scalar_t>(g0 * d[k]);
      } else {
        const Vec<scalar_t, W> gv = load_vec<W>(g + i);
#pragma unroll
        for (int k = 0; k < W; ++k) o.v[k] = static_cast<scalar_t>(static_cast<acc_t>(gv.v[k]) * d[k]);
      }
      store_vec<W>(out + i, o);
    });
  }
};

// bias_act_backward_with_bias's term (channel_reduce.cuh): dx = g * f'(v) (order 1) from
// v = x + b[c] (kFromY false) or from y, written, and summed as stored (the bias gradient).
template <typename scalar_t_, ActKind A, bool kFromY>
struct BiasGradTerm {
  using scalar_t = scalar_t_;
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kGrad = true;
  static constexpr int kSums = 1;
  static constexpr bool kWrites = true;
  const scalar_t* x;  // x, or y (kFromY)
  const scalar_t* g;
  scalar_t* out;
  const scalar_t* bias;  // b in x's dtype (unused kFromY)
  ActArgs<acc_t> p;
  struct Param {
    acc_t b;
  };
  __device__ __forceinline__ Param param(int64_t c) const {
    if constexpr (kFromY) {
      return {acc_t(0)};
    } else {
      return {static_cast<acc_t>(load_ro(bias + c))};
    }
  }
  __device__ __forceinline__ scalar_t write(const Param& prm, acc_t xv, acc_t gv, acc_t& a) const {
    acc_t d;
    if constexpr (kFromY) {
      d = math::bias_act_derivative_from_y<A>(xv, p.alpha, p.gain, p.clamp, 1);
    } else {
      d = math::bias_act_derivative<A>(xv + prm.b, p.alpha, p.gain, p.clamp, 1);
    }
    const scalar_t o = static_cast<scalar_t>(gv * d);
    a += static_cast<acc_t>(o);
    return o;
  }
};

// Calls f(scalar_t tag, A) for the dtype and the activation.
template <typename F>
void dispatch_bias_act(at::ScalarType t, ActKind act, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "ganfast_bias_act_cuda", [&] {
    dispatch_act(act, [&](auto a) { f(scalar_t(0), a); });
  });
}

// ---------------------------------------------------------------------------------------------
// The ops
// ---------------------------------------------------------------------------------------------

Tensor bias_act(const Tensor& x, const std::optional<Tensor>& b, int64_t dim, c10::string_view act_name,
                double alpha, double gain, double clamp) {
  constexpr const char* op = "ganfast::bias_act";
  const int64_t d = check_bias_act(op, x, b, dim);
  const ActKind act = parse_act(act_name);
  const Tensor xs = runs_as_is(x, d) ? x : x.contiguous();
  Tensor y = at::empty_like(xs);
  const int64_t n = xs.numel();
  if (n == 0) return y;
  check_index_range(op, n);
  const bool has_b = b.has_value() && b->defined();
  const Tensor bias = has_b ? b->to(xs.scalar_type()).contiguous() : Tensor();
  const c10::cuda::CUDAGuard device_guard(xs.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const c10::DeviceIndex device = xs.device().index();
  dispatch_bias_act(xs.scalar_type(), act, [&](auto tag, auto a) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr ActKind A = decltype(a)::value;
    const scalar_t* xp = xs.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const BcastRef<scalar_t> br = bias_ref<scalar_t>(b, bias, xs, d);
    const ActArgs<acc_t> p{static_cast<acc_t>(alpha), static_cast<acc_t>(gain), static_cast<acc_t>(clamp)};
    dispatch_bool(is_aligned(xp) && is_aligned(yp), [&](auto aligned) {
      constexpr int V = decltype(aligned)::value ? kVec<scalar_t> : 1;
      launch_map(BiasActMap<scalar_t, V, A>{xp, br, yp, n, p}, NoSeg{}, device, stream);
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
  // The output takes y's layout where the kernels run over it as is, else contiguous.
  Tensor out = runs_as_is(y, d) ? at::empty_like(y) : at::empty(y.sizes(), y.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  check_index_range(op, n);
  const Tensor src = to_layout_of(has_x ? *x : y, out);
  const bool g_is_scalar = is_expanded_scalar(grad_output);
  const Tensor g = g_is_scalar ? grad_output.as_strided({}, {}).to(out.scalar_type())
                               : to_layout_of(grad_output, out);
  const bool use_b = has_x && b.has_value() && b->defined();
  const Tensor bias = use_b ? b->to(out.scalar_type()).contiguous() : Tensor();
  // Piecewise-linear activations accept any order >= 1; every order past kMaxActOrder is the same.
  const int ord = static_cast<int>(std::min<int64_t>(order, math::kMaxActOrder + 1));
  const c10::cuda::CUDAGuard device_guard(out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const c10::DeviceIndex device = out.device().index();
  dispatch_bias_act(out.scalar_type(), act, [&](auto tag, auto a) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr ActKind A = decltype(a)::value;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* sp = src.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    const ActArgs<acc_t> p{static_cast<acc_t>(alpha), static_cast<acc_t>(gain), static_cast<acc_t>(clamp)};
    const bool aligned = is_aligned(sp) && is_aligned(op_) && (g_is_scalar || is_aligned(gp));
    dispatch_bool(aligned, [&](auto aligned_tag) {
      constexpr int V = decltype(aligned_tag)::value ? kVec<scalar_t> : 1;
      if (has_x) {
        const BcastRef<scalar_t> br = use_b ? bias_ref<scalar_t>(b, bias, out, d) : BcastRef<scalar_t>{};
        launch_map(BiasActBackwardMap<scalar_t, V, A, false>{gp, g_is_scalar, sp, br, op_, n, p, ord}, NoSeg{},
                   device, stream);
      } else if constexpr (A != ActKind::Softplus && A != ActKind::Swish) {
        // (softplus and swish always take x: check_bias_act_backward)
        launch_map(BiasActBackwardMap<scalar_t, V, A, true>{gp, g_is_scalar, sp, {}, op_, n, p, ord}, NoSeg{},
                   device, stream);
      }
    });
  });
  return out;
}

std::tuple<Tensor, Tensor> bias_act_backward_with_bias(const Tensor& grad_output, const std::optional<Tensor>& x,
                                                       const std::optional<Tensor>& b, const Tensor& y, int64_t dim,
                                                       c10::string_view act_name, double alpha, double gain,
                                                       double clamp) {
  constexpr const char* op = "ganfast::bias_act_backward_with_bias";
  const ActKind act = parse_act(act_name);
  const int64_t d = check_bias_act_backward_with_bias(op, grad_output, x, b, y, dim, act, act_name, alpha);
  const bool has_x = x.has_value() && x->defined();
  // bias_act_backward's layout: y's where the kernels run over it as is, else contiguous.
  Tensor out = runs_as_is(y, d) ? at::empty_like(y) : at::empty(y.sizes(), y.options());
  const int64_t n = out.numel(), C = b->size(0);
  if (n == 0) return {out, at::zeros({C}, b->options())};
  check_index_range(op, n);
  const Geometry geo = channel_geometry(out, d, n / C);
  const Tensor src = to_layout_of(has_x ? *x : y, out);
  const Tensor g = to_layout_of(grad_output, out);
  const Tensor bias = b->to(out.scalar_type()).contiguous();
  const auto compute = out.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor grad_bias = at::empty({C}, out.options().dtype(compute));
  const c10::cuda::CUDAGuard device_guard(out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_bias_act(out.scalar_type(), act, [&](auto tag, auto a) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr ActKind A = decltype(a)::value;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* sp = src.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    const ActArgs<acc_t> p{static_cast<acc_t>(alpha), static_cast<acc_t>(gain), static_cast<acc_t>(clamp)};
    const bool aligned = is_aligned(sp) && is_aligned(gp) && is_aligned(op_);
    int64_t P = 0;
    Tensor partial;
    if (has_x) {
      const BiasGradTerm<scalar_t, A, false> t{sp, gp, op_, bias.const_data_ptr<scalar_t>(), p};
      partial = launch_reduce(op, t, geo, aligned, out, stream, &P);
    } else if constexpr (A != ActKind::Softplus && A != ActKind::Swish) {
      // (softplus and swish always take x: check_bias_act_backward)
      const BiasGradTerm<scalar_t, A, true> t{sp, gp, op_, nullptr, p};
      partial = launch_reduce(op, t, geo, aligned, out, stream, &P);
    }
    GANFAST_LAUNCH(static_cast<unsigned int>(C), kThreads, 0, stream, channel_sum_kernel<acc_t>)(
        partial.const_data_ptr<acc_t>(), P, grad_bias.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, grad_bias.to(b->scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CUDA, m) {
  m.impl("bias_act", &bias_act);
  m.impl("bias_act_backward", &bias_act_backward);
  m.impl("bias_act_backward_with_bias", &bias_act_backward_with_bias);
}

}  // namespace ganfast::cuda
