// CUDA kernels of the losses family: the twin of csrc/cpu/losses.cpp, with the same functions,
// the same names and the same semantics. The math is csrc/gan_math.h's; the argument handling
// is csrc/ganfast_common.h's (shared with the CPU backend, so both accept and reject the same
// inputs with the same messages).
//
// Kernel shapes (kThreads = 256 threads a block, int64 indexing throughout):
//  * map_kernel:    y_i = [upstream_i *] f(i) for every i, grid-stride over 16-byte vectors of
//                   the contiguous operands (16 / sizeof(scalar_t) elements; a scalar tail),
//                   with a scalar-load instantiation when a pointer is not 16-byte aligned.
//                   Up to two segments in one launch: blocks [0, B0) write the first output,
//                   [B0, B0 + B1) the second (gan_d_loss_backward writes both gradients).
//  * reduce_kernel: sum of f(i), one launch, deterministic. Each thread accumulates in opmath
//                   (float, double for float64), each block reduces with warp shuffles in a
//                   fixed order and stores its partial (as double) in a workspace; the last
//                   block to arrive (atomic counter, zeroed by cudaMemsetAsync on the stream)
//                   adds the partials in a fixed order in double and writes the 0-dim output,
//                   dividing by N in double as the CPU does. A one-block grid (a small batch of
//                   logits) needs neither workspace nor counter. Up to two segments (the real
//                   and fake halves of gan_d_loss): every block covers both halves with its own
//                   accumulator each, so the halves share one launch and one final combine
//                   (sum_real / N_real + sum_fake / N_fake).
// Grids: one vector per thread up to one wave (the blocks the GPU holds at once, from the
// occupancy calculator, cached per kernel and device), grid-stride beyond; a reduction adds a
// block per kReduceVectorsPerThread vectors a thread.
// The upstream gradient is read on the device: no host synchronisation anywhere, so a step that
// calls these ops can be captured in a CUDA graph. Empty inputs launch nothing.
// map_kernel, the vector and reduction helpers and the grid sizing are in cuda_utils.cuh (shared
// with the other op families).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../ganfast_common.h"
#include "cuda_utils.cuh"

namespace ganfast::cuda {
namespace {

using at::Tensor;

enum GradMode : int { kNoGrad, kScalarGrad, kTensorGrad };

// ---------------------------------------------------------------------------------------------
// The reduce kernel (map_kernel and the helpers are in cuda_utils.cuh)
// ---------------------------------------------------------------------------------------------

// Each segment S has sum(tid, nthreads) (this thread's share, in opmath) and divisor; the output
// is s0 / divisor0 [+ s1 / divisor1], computed in double and written in scalar_t. With a grid of
// more than one block, partials holds gridDim.x doubles per segment and counter starts at 0.
template <typename scalar_t, typename S0, typename S1>
__global__ void __launch_bounds__(kThreads)
    reduce_kernel(const S0 s0, const S1 s1, double* partials, unsigned int* counter, scalar_t* out) {
  constexpr bool kTwo = kPresent<S1>;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * kThreads;
  double p0 = static_cast<double>(block_sum(s0.sum(tid, nthreads)));
  double p1 = 0.0;
  if constexpr (kTwo) p1 = static_cast<double>(block_sum(s1.sum(tid, nthreads)));

  if (gridDim.x > 1) {
    __shared__ bool is_last;
    if (threadIdx.x == 0) {
      partials[blockIdx.x] = p0;
      if constexpr (kTwo) partials[gridDim.x + blockIdx.x] = p1;
      __threadfence();  // the partials are visible before the counter says so
      is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    // The last block: the partials in a fixed order, in double (read through L2: __ldcg).
    p0 = 0.0;
    for (unsigned int j = threadIdx.x; j < gridDim.x; j += kThreads) p0 += __ldcg(partials + j);
    p0 = block_sum(p0);
    if constexpr (kTwo) {
      p1 = 0.0;
      for (unsigned int j = threadIdx.x; j < gridDim.x; j += kThreads) p1 += __ldcg(partials + gridDim.x + j);
      p1 = block_sum(p1);
    }
  }
  if (threadIdx.x == 0) {
    double value = p0 / s0.divisor;  // divisor 1 for "sum": exact
    if constexpr (kTwo) value += p1 / s1.divisor;
    *out = static_cast<scalar_t>(value);
  }
}

// One launch of reduce_kernel over one or two segments of `units` vectors (and tail elements)
// together, writing the 0-dim `out`.
template <typename scalar_t, typename S0, typename S1>
void launch_reduce(const S0& s0, const S1& s1, int64_t units, const Tensor& out, cudaStream_t stream) {
  static std::atomic<int> resident[kMaxDevices];
  const int64_t wave = wave_blocks(reduce_kernel<scalar_t, S0, S1>, out.device().index(), resident);
  const int64_t blocks = std::clamp<int64_t>(ceil_div(units, kThreads * kReduceVectorsPerThread), 1, wave);
  double* partials = nullptr;
  unsigned int* counter = nullptr;
  Tensor workspace;
  if (blocks > 1) {
    const int64_t nparts = blocks * (kPresent<S1> ? 2 : 1);
    workspace = at::empty({nparts * static_cast<int64_t>(sizeof(double)) + 16},
                          out.options().dtype(at::kByte));
    partials = reinterpret_cast<double*>(workspace.mutable_data_ptr());
    counter = reinterpret_cast<unsigned int*>(partials + nparts);
    C10_CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(unsigned int), stream));
  }
  GANFAST_LAUNCH(static_cast<unsigned int>(blocks), kThreads, 0, stream, reduce_kernel<scalar_t>)(
      s0, s1, partials, counter, out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------
// Elementwise losses (binary cross-entropy, with logits and on probabilities)
// ---------------------------------------------------------------------------------------------

// The device view (BcastRef, cuda_utils.cuh) of a Broadcast operand.
template <typename scalar_t>
BcastRef<scalar_t> bcast_ref(const Broadcast& b) {
  BcastRef<scalar_t> r;
  if (b.present()) {
    r.data = b.data.const_data_ptr<scalar_t>();
    r.inner = b.inner;
    r.period = b.period;
    r.inv_inner = 1.0 / static_cast<double>(b.inner);
    r.inv_period = 1.0 / static_cast<double>(b.period);
  }
  return r;
}

// Raw pointers of one loss call (the device twin of the CPU's LossView).
template <typename scalar_t>
struct LossPtrs {
  const scalar_t* x;
  const scalar_t* t;
  BcastRef<scalar_t> w;
  BcastRef<scalar_t> pw;
};

template <typename scalar_t>
LossPtrs<scalar_t> loss_ptrs(const LossOperands& o) {
  TORCH_CHECK(o.input.numel() < kMaxBroadcastIndex, "ganfast: a loss over ", o.input.numel(),
              " elements is too large for the CUDA kernels");
  return LossPtrs<scalar_t>{o.input.const_data_ptr<scalar_t>(), o.target.const_data_ptr<scalar_t>(),
                            bcast_ref<scalar_t>(o.weight), bcast_ref<scalar_t>(o.pos_weight)};
}

// The values of a broadcast operand at the elements [i, i + W), 1 where it is absent: gathered
// before any math, so that no index state lives across the loss computation.
template <int W, typename scalar_t>
__device__ __forceinline__ Vec<scalar_t, W> gather(const BcastRef<scalar_t>& b, int64_t i) {
  Vec<scalar_t, W> r;
  if (b.data == nullptr) {
#pragma unroll
    for (int k = 0; k < W; ++k) r.v[k] = scalar_t(1);
    return r;
  }
  BcastCursor c;
  c.start(b, i);
#pragma unroll
  for (int k = 0; k < W; ++k) {
    r.v[k] = load_ro(b.data + c.idx);
    if (k + 1 < W) c.advance(b);
  }
  return r;
}

// out[k] = f(x, t, w, pw) at elements i + k, k < W. With kWeighted false no weight is read;
// without F::kPosWeight no pos_weight.
template <int W, bool kWeighted, typename scalar_t, typename F>
__device__ __forceinline__ void loss_values(const LossPtrs<scalar_t>& p, const F& f, int64_t i,
                                            at::opmath_type<scalar_t> (&out)[W]) {
  using acc_t = at::opmath_type<scalar_t>;
  const Vec<scalar_t, W> xv = load_vec<W>(p.x + i);
  const Vec<scalar_t, W> tv = load_vec<W>(p.t + i);
  if constexpr (kWeighted) {
    const Vec<scalar_t, W> wv = gather<W>(p.w, i);
    if constexpr (F::kPosWeight) {
      const Vec<scalar_t, W> pwv = gather<W>(p.pw, i);
#pragma unroll
      for (int k = 0; k < W; ++k)
        out[k] = f(static_cast<acc_t>(xv.v[k]), static_cast<acc_t>(tv.v[k]), static_cast<acc_t>(wv.v[k]),
                   static_cast<acc_t>(pwv.v[k]));
    } else {
#pragma unroll
      for (int k = 0; k < W; ++k)
        out[k] = f(static_cast<acc_t>(xv.v[k]), static_cast<acc_t>(tv.v[k]), static_cast<acc_t>(wv.v[k]), acc_t(1));
    }
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k)
      out[k] = f(static_cast<acc_t>(xv.v[k]), static_cast<acc_t>(tv.v[k]), acc_t(1), acc_t(1));
  }
}

// body(integral_constant<int, W>, i, values[W]) for the loss values of the elements [i, i + W),
// in vec_loop's traversal.
template <int V, bool kWeighted, typename scalar_t, typename F, typename Body>
__device__ __forceinline__ void loss_loop(const LossPtrs<scalar_t>& p, const F& f, int64_t n, int64_t tid,
                                          int64_t nthreads, const Body& body) {
  using acc_t = at::opmath_type<scalar_t>;
  vec_loop<V>(n, tid, nthreads, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    acc_t vals[W];
    loss_values<W, kWeighted>(p, f, i, vals);
    body(width, i, vals);
  });
}

// Elementwise segment: y_i = f(i) (kNoGrad), g0 * f(i) with g0 = g[0] * gscale (kScalarGrad),
// or g_i * f(i) (kTensorGrad), as the CPU's loss_forward / loss_backward.
template <typename scalar_t, int V, bool kWeighted, int kGrad, typename F>
struct LossMap {
  static constexpr int kWidth = V;
  using acc_t = at::opmath_type<scalar_t>;
  LossPtrs<scalar_t> p;
  int64_t n;
  F f;
  const scalar_t* g;
  acc_t gscale;
  scalar_t* y;

  __device__ __forceinline__ void run(int64_t tid, int64_t nthreads) const {
    acc_t g0 = acc_t(1);
    if constexpr (kGrad == kScalarGrad) g0 = static_cast<acc_t>(load_ro(g)) * gscale;
    loss_loop<V, kWeighted>(p, f, n, tid, nthreads, [&](auto width, int64_t i, const auto& v) {
      constexpr int W = decltype(width)::value;
      Vec<scalar_t, W> out;
      if constexpr (kGrad == kTensorGrad) {
        const Vec<scalar_t, W> gv = load_vec<W>(g + i);
#pragma unroll
        for (int k = 0; k < W; ++k) out.v[k] = static_cast<scalar_t>(static_cast<acc_t>(gv.v[k]) * v[k]);
      } else if constexpr (kGrad == kScalarGrad) {
#pragma unroll
        for (int k = 0; k < W; ++k) out.v[k] = static_cast<scalar_t>(g0 * v[k]);
      } else {
#pragma unroll
        for (int k = 0; k < W; ++k) out.v[k] = static_cast<scalar_t>(v[k]);
      }
      store_vec<W>(y + i, out);
    });
  }
};

// Reduction segment: sum of f(i), divided by divisor (n for "mean", 1 for "sum").
template <typename scalar_t, int V, bool kWeighted, typename F>
struct LossSum {
  using acc_t = at::opmath_type<scalar_t>;
  LossPtrs<scalar_t> p;
  int64_t n;
  F f;
  double divisor;

  __device__ __forceinline__ acc_t sum(int64_t tid, int64_t nthreads) const {
    acc_t s = acc_t(0);
    loss_loop<V, kWeighted>(p, f, n, tid, nthreads, [&](auto width, int64_t, const auto& v) {
      constexpr int W = decltype(width)::value;
#pragma unroll
      for (int k = 0; k < W; ++k) s += v[k];
    });
    return s;
  }
};

// The per-element terms (x: input, t: target, w: weight, pw: pos_weight, in opmath).
struct BceLogitsLoss {
  static constexpr bool kPosWeight = true;
  template <typename T>
  __device__ __forceinline__ T operator()(T x, T t, T w, T pw) const {
    return math::bce_logits(x, t, w, pw);
  }
};
struct BceLogitsDInput {
  static constexpr bool kPosWeight = true;
  template <typename T>
  __device__ __forceinline__ T operator()(T x, T t, T w, T pw) const {
    return math::bce_logits_dinput(x, t, w, pw);
  }
};
struct BceLogitsDTarget {
  static constexpr bool kPosWeight = true;
  template <typename T>
  __device__ __forceinline__ T operator()(T x, T t, T w, T pw) const {
    return math::bce_logits_dtarget(x, t, w, pw);
  }
};
// The forward on probabilities checks its input and target as torch's CUDA kernel does: a
// device-side assert (the CPU twin's check_probabilities would need a host sync here).
struct BceProbLoss {
  static constexpr bool kPosWeight = false;
  template <typename T>
  __device__ __forceinline__ T operator()(T p, T t, T w, T) const {
    CUDA_KERNEL_ASSERT(math::probability_in_range(p) && "all elements of input should be between 0 and 1");
    CUDA_KERNEL_ASSERT(math::probability_in_range(t) && "all elements of target should be between 0 and 1");
    return math::bce_prob(p, t, w);
  }
};
struct BceProbDInput {
  static constexpr bool kPosWeight = false;
  template <typename T>
  __device__ __forceinline__ T operator()(T p, T t, T w, T) const {
    return math::bce_prob_dinput(p, t, w);
  }
};
struct BceProbDTarget {
  static constexpr bool kPosWeight = false;
  template <typename T>
  __device__ __forceinline__ T operator()(T p, T t, T w, T) const {
    return math::bce_prob_dtarget(p, t, w);
  }
};

// Calls f(scalar_t tag, kWeighted) for the loss's dtype and whether any weight is present.
template <typename F>
void dispatch_loss(const char* op, const LossOperands& o, F&& f) {
  (void)op;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.input.scalar_type(), "ganfast_loss_cuda", [&] {
    dispatch_bool(o.weight.present() || o.pos_weight.present(),
                  [&](auto weighted) { f(scalar_t(0), weighted); });
  });
}

// Forward of an elementwise loss l_i = elem(i) with reduction.
template <typename Elem>
Tensor loss_forward(const char* op, const LossOperands& o, const Elem& elem) {
  const int64_t n = o.input.numel();
  if (n == 0) {  // mean of nothing is NaN, sum of nothing 0, as torch's
    if (o.reduction == Reduction::None) return at::empty_like(o.input);
    return at::full({}, o.reduction == Reduction::Mean ? std::numeric_limits<double>::quiet_NaN() : 0.0,
                    o.input.options());
  }
  const c10::cuda::CUDAGuard device_guard(o.input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const c10::DeviceIndex device = o.input.device().index();
  Tensor out = o.reduction == Reduction::None ? at::empty_like(o.input) : at::empty({}, o.input.options());
  dispatch_loss(op, o, [&](auto tag, auto weighted) {
    using scalar_t = decltype(tag);
    constexpr bool kWeighted = decltype(weighted)::value;
    const LossPtrs<scalar_t> p = loss_ptrs<scalar_t>(o);
    if (o.reduction == Reduction::None) {
      scalar_t* y = out.mutable_data_ptr<scalar_t>();
      dispatch_bool(is_aligned(p.x) && is_aligned(p.t) && is_aligned(y), [&](auto aligned) {
        constexpr int V = decltype(aligned)::value ? kVec<scalar_t> : 1;
        using Map = LossMap<scalar_t, V, kWeighted, kNoGrad, Elem>;
        launch_map(Map{p, n, elem, nullptr, 1, y}, NoSeg{}, device, stream);
      });
      return;
    }
    const double divisor = o.reduction == Reduction::Mean ? static_cast<double>(n) : 1.0;
    dispatch_bool(is_aligned(p.x) && is_aligned(p.t), [&](auto aligned) {
      constexpr int V = decltype(aligned)::value ? kVec<scalar_t> : 1;
      using Sum = LossSum<scalar_t, V, kWeighted, Elem>;
      launch_reduce<scalar_t>(Sum{p, n, elem, divisor}, NoSeg{}, ceil_div(n, V), out, stream);
    });
  });
  return out;
}

// Gradient of an elementwise loss: grad_i = upstream_i * scale * delem(i).
template <typename DElem>
Tensor loss_backward(const char* op, const Tensor& grad_output, const LossOperands& o, const DElem& delem) {
  bool grad_is_scalar = false;
  const Tensor grad = prepare_loss_grad(op, grad_output, o.input, o.reduction, &grad_is_scalar);
  const int64_t n = o.input.numel();
  Tensor out = at::empty_like(o.input);
  if (n == 0) return out;
  const c10::cuda::CUDAGuard device_guard(o.input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const c10::DeviceIndex device = o.input.device().index();
  dispatch_loss(op, o, [&](auto tag, auto weighted) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr bool kWeighted = decltype(weighted)::value;
    const LossPtrs<scalar_t> p = loss_ptrs<scalar_t>(o);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const acc_t scale = o.reduction == Reduction::Mean ? acc_t(1) / static_cast<acc_t>(n) : acc_t(1);
    const bool aligned = is_aligned(p.x) && is_aligned(p.t) && is_aligned(y) && (grad_is_scalar || is_aligned(g));
    dispatch_bool(aligned, [&](auto aligned_tag) {
      constexpr int V = decltype(aligned_tag)::value ? kVec<scalar_t> : 1;
      if (grad_is_scalar) {
        using Map = LossMap<scalar_t, V, kWeighted, kScalarGrad, DElem>;
        launch_map(Map{p, n, delem, g, scale, y}, NoSeg{}, device, stream);
      } else {
        using Map = LossMap<scalar_t, V, kWeighted, kTensorGrad, DElem>;
        launch_map(Map{p, n, delem, g, acc_t(1), y}, NoSeg{}, device, stream);
      }
    });
  });
  return out;
}

// ---- binary cross-entropy with logits ----

Tensor bce_with_logits(const Tensor& input, const Tensor& target, const std::optional<Tensor>& weight,
                       const std::optional<Tensor>& pos_weight, c10::string_view reduction) {
  constexpr const char* op = "ganfast::bce_with_logits";
  const auto o = prepare_loss_operands(op, input, target, weight, pos_weight, reduction);
  return loss_forward(op, o, BceLogitsLoss{});
}

Tensor bce_with_logits_backward(const Tensor& grad_output, const Tensor& input, const Tensor& target,
                                const std::optional<Tensor>& weight,
                                const std::optional<Tensor>& pos_weight, c10::string_view reduction) {
  constexpr const char* op = "ganfast::bce_with_logits_backward";
  const auto o = prepare_loss_operands(op, input, target, weight, pos_weight, reduction);
  return loss_backward(op, grad_output, o, BceLogitsDInput{});
}

Tensor bce_with_logits_target_backward(const Tensor& grad_output, const Tensor& input,
                                       const Tensor& target, const std::optional<Tensor>& weight,
                                       const std::optional<Tensor>& pos_weight,
                                       c10::string_view reduction) {
  constexpr const char* op = "ganfast::bce_with_logits_target_backward";
  const auto o = prepare_loss_operands(op, input, target, weight, pos_weight, reduction);
  return loss_backward(op, grad_output, o, BceLogitsDTarget{});
}

// ---- binary cross-entropy on probabilities ----

Tensor binary_cross_entropy(const Tensor& input, const Tensor& target, const std::optional<Tensor>& weight,
                            c10::string_view reduction) {
  constexpr const char* op = "ganfast::binary_cross_entropy";
  const auto o = prepare_loss_operands(op, input, target, weight, std::nullopt, reduction);
  return loss_forward(op, o, BceProbLoss{});  // the range check is the kernel's device assert
}

Tensor binary_cross_entropy_backward(const Tensor& grad_output, const Tensor& input, const Tensor& target,
                                     const std::optional<Tensor>& weight, c10::string_view reduction) {
  constexpr const char* op = "ganfast::binary_cross_entropy_backward";
  const auto o = prepare_loss_operands(op, input, target, weight, std::nullopt, reduction);
  return loss_backward(op, grad_output, o, BceProbDInput{});
}

Tensor binary_cross_entropy_target_backward(const Tensor& grad_output, const Tensor& input,
                                            const Tensor& target, const std::optional<Tensor>& weight,
                                            c10::string_view reduction) {
  constexpr const char* op = "ganfast::binary_cross_entropy_target_backward";
  const auto o = prepare_loss_operands(op, input, target, weight, std::nullopt, reduction);
  return loss_backward(op, grad_output, o, BceProbDTarget{});
}

// ---------------------------------------------------------------------------------------------
// GAN objectives
// ---------------------------------------------------------------------------------------------

// Per-logit terms and derivatives, in opmath T (labels converted on the host, as the CPU does).
template <GanKind K, typename T>
struct GanDReal {
  T label;
  __device__ __forceinline__ T operator()(T x) const { return math::gan_d_real<K>(x, label); }
};
template <GanKind K, typename T>
struct GanDRealDx {
  T label;
  __device__ __forceinline__ T operator()(T x) const { return math::gan_d_real_dx<K>(x, label); }
};
template <GanKind K, typename T>
struct GanDFake {
  T label;
  __device__ __forceinline__ T operator()(T x) const { return math::gan_d_fake<K>(x, label); }
};
template <GanKind K, typename T>
struct GanDFakeDx {
  T label;
  __device__ __forceinline__ T operator()(T x) const { return math::gan_d_fake_dx<K>(x, label); }
};
template <GanKind K, typename T>
struct GanG {
  __device__ __forceinline__ T operator()(T x) const { return math::gan_g<K>(x); }
};
template <GanKind K, typename T>
struct GanGDx {
  __device__ __forceinline__ T operator()(T x) const { return math::gan_g_dx<K>(x); }
};

// Reduction segment: sum of f(x_i) over one tensor of logits, divided by its numel.
template <typename scalar_t, int V, typename F>
struct GanSum {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  int64_t n;
  F f;
  double divisor;

  __device__ __forceinline__ acc_t sum(int64_t tid, int64_t nthreads) const {
    acc_t s = acc_t(0);
    vec_loop<V>(n, tid, nthreads, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      const Vec<scalar_t, W> xv = load_vec<W>(x + i);
#pragma unroll
      for (int k = 0; k < W; ++k) s += f(static_cast<acc_t>(xv.v[k]));
    });
    return s;
  }
};

// Elementwise segment: y_i = (g / n) * f(x_i), g the 0-dim upstream gradient on the device.
template <typename scalar_t, int V, typename F>
struct GanMap {
  static constexpr int kWidth = V;
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  int64_t n;
  F f;
  const scalar_t* g;
  scalar_t* y;

  __device__ __forceinline__ void run(int64_t tid, int64_t nthreads) const {
    const acc_t gs = static_cast<acc_t>(load_ro(g)) / static_cast<acc_t>(n);
    vec_loop<V>(n, tid, nthreads, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      const Vec<scalar_t, W> xv = load_vec<W>(x + i);
      Vec<scalar_t, W> out;
#pragma unroll
      for (int k = 0; k < W; ++k) out.v[k] = static_cast<scalar_t>(gs * f(static_cast<acc_t>(xv.v[k])));
      store_vec<W>(y + i, out);
    });
  }
};

// Calls f(scalar_t tag, K) for the logits' dtype and the objective.
template <typename F>
void dispatch_gan(const char* op, const Tensor& logits, GanKind kind, F&& f) {
  (void)op;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "ganfast_gan_loss_cuda", [&] {
    dispatch_gan_kind(kind, [&](auto k) { f(scalar_t(0), k); });
  });
}

Tensor gan_d_loss(const Tensor& real_logits, const Tensor& fake_logits, c10::string_view kind_name,
                  double real_label, double fake_label) {
  constexpr const char* op = "ganfast::gan_d_loss";
  check_gan_logits(op, real_logits, fake_logits);
  const GanKind kind = parse_gan_kind(kind_name);
  const Tensor real = real_logits.contiguous(), fake = fake_logits.contiguous();
  const int64_t nr = real.numel(), nf = fake.numel();
  // An empty half is a mean of nothing (0 / 0), which makes the whole loss NaN, as the CPU's.
  if (nr == 0 || nf == 0) return at::full({}, std::numeric_limits<double>::quiet_NaN(), real.options());
  const c10::cuda::CUDAGuard device_guard(real.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Tensor out = at::empty({}, real.options());
  dispatch_gan(op, real, kind, [&](auto tag, auto k) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr GanKind K = decltype(k)::value;
    const scalar_t* xr = real.const_data_ptr<scalar_t>();
    const scalar_t* xf = fake.const_data_ptr<scalar_t>();
    const acc_t a = static_cast<acc_t>(real_label), b = static_cast<acc_t>(fake_label);
    dispatch_bool(is_aligned(xr) && is_aligned(xf), [&](auto aligned) {
      constexpr int V = decltype(aligned)::value ? kVec<scalar_t> : 1;
      using Real = GanSum<scalar_t, V, GanDReal<K, acc_t>>;
      using Fake = GanSum<scalar_t, V, GanDFake<K, acc_t>>;
      launch_reduce<scalar_t>(Real{xr, nr, {a}, static_cast<double>(nr)},
                              Fake{xf, nf, {b}, static_cast<double>(nf)},
                              ceil_div(nr, V) + ceil_div(nf, V), out, stream);
    });
  });
  return out;
}

std::tuple<Tensor, Tensor> gan_d_loss_backward(const Tensor& grad_output, const Tensor& real_logits,
                                               const Tensor& fake_logits, c10::string_view kind_name,
                                               double real_label, double fake_label) {
  constexpr const char* op = "ganfast::gan_d_loss_backward";
  check_gan_logits(op, real_logits, fake_logits);
  check_scalar_grad(op, grad_output, real_logits);
  const GanKind kind = parse_gan_kind(kind_name);
  const Tensor real = real_logits.contiguous(), fake = fake_logits.contiguous();
  const int64_t nr = real.numel(), nf = fake.numel();
  Tensor grad_real = at::empty_like(real), grad_fake = at::empty_like(fake);
  const Tensor grad = grad_output.reshape({}).to(real.scalar_type());
  if (nr == 0 && nf == 0) return {grad_real, grad_fake};
  const c10::cuda::CUDAGuard device_guard(real.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const c10::DeviceIndex device = real.device().index();
  dispatch_gan(op, real, kind, [&](auto tag, auto k) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr GanKind K = decltype(k)::value;
    const acc_t a = static_cast<acc_t>(real_label), b = static_cast<acc_t>(fake_label);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* xr = real.const_data_ptr<scalar_t>();
    const scalar_t* xf = fake.const_data_ptr<scalar_t>();
    scalar_t* yr = grad_real.mutable_data_ptr<scalar_t>();
    scalar_t* yf = grad_fake.mutable_data_ptr<scalar_t>();
    const bool aligned = is_aligned(xr) && is_aligned(xf) && is_aligned(yr) && is_aligned(yf);
    dispatch_bool(aligned, [&](auto aligned_tag) {
      constexpr int V = decltype(aligned_tag)::value ? kVec<scalar_t> : 1;
      using Real = GanMap<scalar_t, V, GanDRealDx<K, acc_t>>;
      using Fake = GanMap<scalar_t, V, GanDFakeDx<K, acc_t>>;
      // Both gradients in one launch: blocks [0, Br) write grad_real, the rest grad_fake.
      launch_map(Real{xr, nr, {a}, g, yr}, Fake{xf, nf, {b}, g, yf}, device, stream);
    });
  });
  return {grad_real, grad_fake};
}

Tensor gan_g_loss(const Tensor& fake_logits, c10::string_view kind_name) {
  constexpr const char* op = "ganfast::gan_g_loss";
  check_gan_logits(op, fake_logits);
  const GanKind kind = parse_gan_kind(kind_name);
  const Tensor fake = fake_logits.contiguous();
  const int64_t n = fake.numel();
  if (n == 0) return at::full({}, std::numeric_limits<double>::quiet_NaN(), fake.options());
  const c10::cuda::CUDAGuard device_guard(fake.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Tensor out = at::empty({}, fake.options());
  dispatch_gan(op, fake, kind, [&](auto tag, auto k) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr GanKind K = decltype(k)::value;
    const scalar_t* x = fake.const_data_ptr<scalar_t>();
    dispatch_bool(is_aligned(x), [&](auto aligned) {
      constexpr int V = decltype(aligned)::value ? kVec<scalar_t> : 1;
      using Sum = GanSum<scalar_t, V, GanG<K, acc_t>>;
      launch_reduce<scalar_t>(Sum{x, n, {}, static_cast<double>(n)}, NoSeg{}, ceil_div(n, V), out, stream);
    });
  });
  return out;
}

Tensor gan_g_loss_backward(const Tensor& grad_output, const Tensor& fake_logits, c10::string_view kind_name) {
  constexpr const char* op = "ganfast::gan_g_loss_backward";
  check_gan_logits(op, fake_logits);
  check_scalar_grad(op, grad_output, fake_logits);
  const GanKind kind = parse_gan_kind(kind_name);
  const Tensor fake = fake_logits.contiguous();
  const int64_t n = fake.numel();
  Tensor grad_fake = at::empty_like(fake);
  const Tensor grad = grad_output.reshape({}).to(fake.scalar_type());
  if (n == 0) return grad_fake;
  const c10::cuda::CUDAGuard device_guard(fake.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const c10::DeviceIndex device = fake.device().index();
  dispatch_gan(op, fake, kind, [&](auto tag, auto k) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr GanKind K = decltype(k)::value;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* x = fake.const_data_ptr<scalar_t>();
    scalar_t* y = grad_fake.mutable_data_ptr<scalar_t>();
    dispatch_bool(is_aligned(x) && is_aligned(y), [&](auto aligned) {
      constexpr int V = decltype(aligned)::value ? kVec<scalar_t> : 1;
      using Map = GanMap<scalar_t, V, GanGDx<K, acc_t>>;
      launch_map(Map{x, n, {}, g, y}, NoSeg{}, device, stream);
    });
  });
  return grad_fake;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CUDA, m) {
  m.impl("bce_with_logits", &bce_with_logits);
  m.impl("bce_with_logits_backward", &bce_with_logits_backward);
  m.impl("bce_with_logits_target_backward", &bce_with_logits_target_backward);
  m.impl("binary_cross_entropy", &binary_cross_entropy);
  m.impl("binary_cross_entropy_backward", &binary_cross_entropy_backward);
  m.impl("binary_cross_entropy_target_backward", &binary_cross_entropy_target_backward);
  m.impl("gan_d_loss", &gan_d_loss);
  m.impl("gan_d_loss_backward", &gan_d_loss_backward);
  m.impl("gan_g_loss", &gan_g_loss);
  m.impl("gan_g_loss_backward", &gan_g_loss_backward);
}

}  // namespace ganfast::cuda
