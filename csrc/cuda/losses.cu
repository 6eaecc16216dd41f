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
// The upstream gradient is read on the device: no host synchronisation anywhere, so a step that
// calls these ops can be captured in a CUDA graph. Empty inputs launch nothing.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../ganfast_common.h"

namespace ganfast::cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Elementwise grids stop growing at this many blocks per SM (2048 threads); beyond, grid-stride.
constexpr int64_t kMapBlocksPerSm = 8;
// Reductions: a new block only when every thread has this many vectors to read, and at most
// kReduceBlocksPerSm blocks per SM (so the partials stay few).
constexpr int64_t kReduceVectorsPerThread = 4;
constexpr int64_t kReduceBlocksPerSm = 4;

// Elements per 16-byte vector.
template <typename scalar_t>
constexpr int kVec = static_cast<int>(16 / sizeof(scalar_t));

enum GradMode : int { kNoGrad, kScalarGrad, kTensorGrad };

// A second segment that is not there.
struct NoSeg {};

template <typename Seg>
constexpr bool kPresent = !std::is_same_v<Seg, NoSeg>;

// ---------------------------------------------------------------------------------------------
// Device memory helpers
// ---------------------------------------------------------------------------------------------

template <typename T, int W>
struct alignas(sizeof(T) * W) Vec {
  T v[W];
};

// A read-only (non-coherent cache) load of one element.
template <typename T>
__device__ __forceinline__ T load_ro(const T* p) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    return c10::Half(__ldg(reinterpret_cast<const unsigned short*>(p)), c10::Half::from_bits());
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return c10::BFloat16(__ldg(reinterpret_cast<const unsigned short*>(p)), c10::BFloat16::from_bits());
  } else {
    return __ldg(p);
  }
}

// W elements from p: one 16-byte load when W is the vector width (p is then 16-byte aligned).
template <int W, typename T>
__device__ __forceinline__ Vec<T, W> load_vec(const T* p) {
  Vec<T, W> r;
  if constexpr (W == 1) {
    r.v[0] = load_ro(p);
  } else {
    static_assert(sizeof(Vec<T, W>) == 16, "vectors are 16 bytes");
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
    memcpy(&r, &u, sizeof(u));
  }
  return r;
}

template <int W, typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, W>& v) {
  if constexpr (W == 1) {
    *p = v.v[0];
  } else {
    static_assert(sizeof(Vec<T, W>) == 16, "vectors are 16 bytes");
    uint4 u;
    memcpy(&u, &v, sizeof(u));
    *reinterpret_cast<uint4*>(p) = u;
  }
}

// body(integral_constant<int, W>, i) for the elements [i, i + W) of [0, n): whole V-vectors
// grid-stride over the threads [0, nthreads) of a segment, then the < V tail one element each.
template <int V, typename Body>
__device__ __forceinline__ void vec_loop(int64_t n, int64_t tid, int64_t nthreads, const Body& body) {
  const int64_t nvec = n / V;
  for (int64_t v = tid; v < nvec; v += nthreads) body(std::integral_constant<int, V>{}, v * V);
  if constexpr (V > 1) {
    const int64_t i = nvec * V + tid;
    if (i < n) body(std::integral_constant<int, 1>{}, i);
  }
}

// ---------------------------------------------------------------------------------------------
// Block reduction (fixed order: deterministic)
// ---------------------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// The sum of v over the block, valid in thread 0. Safe to call repeatedly.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T warp_sums[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // a previous call may still be reading warp_sums
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? warp_sums[lane] : T(0);
    v = warp_sum(v);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// The two kernels
// ---------------------------------------------------------------------------------------------

// Each segment M has run(tid, nthreads): blocks [0, blocks0) run m0, the rest m1.
template <typename M0, typename M1>
__global__ void __launch_bounds__(kThreads) map_kernel(const M0 m0, const M1 m1, const int blocks0) {
  const int64_t block = blockIdx.x;
  if (block < blocks0) {
    m0.run(block * kThreads + threadIdx.x, static_cast<int64_t>(blocks0) * kThreads);
    return;
  }
  if constexpr (kPresent<M1>) {
    m1.run((block - blocks0) * kThreads + threadIdx.x,
           static_cast<int64_t>(gridDim.x - blocks0) * kThreads);
  }
}

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

// ---------------------------------------------------------------------------------------------
// Host launch helpers
// ---------------------------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int multiprocessor_count(c10::DeviceIndex device) {
  constexpr int kCached = 64;
  static std::atomic<int> cache[kCached];
  const bool cacheable = device >= 0 && device < kCached;
  if (cacheable) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
  if (v < 1) v = 1;
  if (cacheable) cache[device].store(v, std::memory_order_relaxed);
  return v;
}

bool is_aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Blocks of an elementwise segment of n elements in vectors of V: 0 when empty.
int map_blocks(int64_t n, int v, int sms) {
  const int64_t blocks = ceil_div(ceil_div(n, v), kThreads);
  return static_cast<int>(std::min<int64_t>(blocks, kMapBlocksPerSm * sms));
}

template <typename M0, typename M1>
void launch_map(const M0& m0, int blocks0, const M1& m1, int blocks1, cudaStream_t stream) {
  const int blocks = blocks0 + blocks1;
  if (blocks == 0) return;
  map_kernel<<<blocks, kThreads, 0, stream>>>(m0, m1, blocks0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Blocks of a reduction over units vectors (and tail elements) of all its segments together.
int reduce_blocks(int64_t units, int sms) {
  const int64_t wanted = ceil_div(units, kThreads * kReduceVectorsPerThread);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, kReduceBlocksPerSm * sms)));
}

template <typename scalar_t, typename S0, typename S1>
void launch_reduce(const S0& s0, const S1& s1, int blocks, const Tensor& out, cudaStream_t stream) {
  double* partials = nullptr;
  unsigned int* counter = nullptr;
  Tensor workspace;
  if (blocks > 1) {
    const int64_t nparts = static_cast<int64_t>(blocks) * (kPresent<S1> ? 2 : 1);
    workspace = at::empty({nparts * static_cast<int64_t>(sizeof(double)) + 16},
                          out.options().dtype(at::kByte));
    partials = reinterpret_cast<double*>(workspace.mutable_data_ptr());
    counter = reinterpret_cast<unsigned int*>(partials + nparts);
    C10_CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(unsigned int), stream));
  }
  reduce_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(s0, s1, partials, counter,
                                                           out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename F>
void dispatch_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// ---------------------------------------------------------------------------------------------
// Elementwise losses (binary cross-entropy, with logits and on probabilities)
// ---------------------------------------------------------------------------------------------

// A Broadcast operand on the device: data[(i / inner) % period], or absent (data null: 1).
// step_rem / step_idx: how the index moves when the element moves by the grid stride
// (set_stride), so the grid-stride loop never divides.
template <typename scalar_t>
struct BcastRef {
  const scalar_t* data = nullptr;
  int64_t inner = 1;
  int64_t period = 1;
  int64_t step_rem = 0;  // stride % inner
  int64_t step_idx = 0;  // (stride / inner) % period
};

template <typename scalar_t>
BcastRef<scalar_t> bcast_ref(const Broadcast& b) {
  BcastRef<scalar_t> r;
  if (b.present()) {
    r.data = b.data.const_data_ptr<scalar_t>();
    r.inner = b.inner;
    r.period = b.period;
  }
  return r;
}

template <typename scalar_t>
void set_stride(BcastRef<scalar_t>& b, int64_t stride) {
  if (b.data == nullptr) return;
  const int64_t q = stride / b.inner;
  b.step_rem = stride - q * b.inner;
  b.step_idx = q % b.period;
}

// The position of element i in a broadcast operand: i = q * inner + rem, idx = q % period.
// Divides once (start); then moves by one element (advance) or by the grid stride (jump) with
// compares only.
struct BcastCursor {
  int64_t rem = 0, idx = 0;

  template <typename scalar_t>
  __device__ __forceinline__ void start(const BcastRef<scalar_t>& b, int64_t i) {
    if (b.data == nullptr) return;
    const int64_t q = b.inner == 1 ? i : i / b.inner;
    rem = i - q * b.inner;
    idx = q < b.period ? q : q % b.period;
  }
  template <typename scalar_t>
  __device__ __forceinline__ at::opmath_type<scalar_t> value(const BcastRef<scalar_t>& b) const {
    using acc_t = at::opmath_type<scalar_t>;
    return b.data != nullptr ? static_cast<acc_t>(load_ro(b.data + idx)) : acc_t(1);
  }
  template <typename scalar_t>
  __device__ __forceinline__ void advance(const BcastRef<scalar_t>& b) {
    if (++rem == b.inner) {
      rem = 0;
      if (++idx == b.period) idx = 0;
    }
  }
  template <typename scalar_t>
  __device__ __forceinline__ void jump(const BcastRef<scalar_t>& b) {
    rem += b.step_rem;
    if (rem >= b.inner) {
      rem -= b.inner;
      ++idx;
    }
    idx += b.step_idx;  // < 2 * period
    if (idx >= b.period) idx -= b.period;
  }
};

// Raw pointers of one loss call (the device twin of the CPU's LossView).
template <typename scalar_t>
struct LossPtrs {
  const scalar_t* x;
  const scalar_t* t;
  BcastRef<scalar_t> w;
  BcastRef<scalar_t> pw;
};

// stride: the elements a segment's grid-stride loop moves by (its threads times V).
template <typename scalar_t>
LossPtrs<scalar_t> loss_ptrs(const LossOperands& o, int64_t stride) {
  LossPtrs<scalar_t> p{o.input.const_data_ptr<scalar_t>(), o.target.const_data_ptr<scalar_t>(),
                       bcast_ref<scalar_t>(o.weight), bcast_ref<scalar_t>(o.pos_weight)};
  set_stride(p.w, stride);
  set_stride(p.pw, stride);
  return p;
}

// out[k] = f(x, t, w, pw) at elements i + k, k < W, the weights read from cursors at i.
// With kWeighted false no weight is read; without F::kPosWeight no pos_weight.
template <int W, bool kWeighted, typename scalar_t, typename F>
__device__ __forceinline__ void loss_values(const LossPtrs<scalar_t>& p, const F& f, int64_t i,
                                            BcastCursor w, BcastCursor pw,
                                            at::opmath_type<scalar_t> (&out)[W]) {
  using acc_t = at::opmath_type<scalar_t>;
  const Vec<scalar_t, W> xv = load_vec<W>(p.x + i);
  const Vec<scalar_t, W> tv = load_vec<W>(p.t + i);
#pragma unroll
  for (int k = 0; k < W; ++k) {
    acc_t wk = acc_t(1), pwk = acc_t(1);
    if constexpr (kWeighted) {
      wk = w.value(p.w);
      if constexpr (F::kPosWeight) pwk = pw.value(p.pw);
      if (k + 1 < W) {
        w.advance(p.w);
        if constexpr (F::kPosWeight) pw.advance(p.pw);
      }
    }
    out[k] = f(static_cast<acc_t>(xv.v[k]), static_cast<acc_t>(tv.v[k]), wk, pwk);
  }
}

// body(integral_constant<int, W>, i, values[W]) for the loss values of the elements [i, i + W):
// vec_loop's traversal, with the weight cursors carried along the grid stride.
template <int V, bool kWeighted, typename scalar_t, typename F, typename Body>
__device__ __forceinline__ void loss_loop(const LossPtrs<scalar_t>& p, const F& f, int64_t n, int64_t tid,
                                          int64_t nthreads, const Body& body) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t nvec = n / V;
  if (tid < nvec) {
    BcastCursor w, pw;
    if constexpr (kWeighted) {
      w.start(p.w, tid * V);
      if constexpr (F::kPosWeight) pw.start(p.pw, tid * V);
    }
    for (int64_t v = tid; v < nvec; v += nthreads) {
      acc_t vals[V];
      loss_values<V, kWeighted>(p, f, v * V, w, pw, vals);
      body(std::integral_constant<int, V>{}, v * V, vals);
      if constexpr (kWeighted) {
        w.jump(p.w);
        if constexpr (F::kPosWeight) pw.jump(p.pw);
      }
    }
  }
  if constexpr (V > 1) {
    const int64_t i = nvec * V + tid;
    if (i < n) {
      BcastCursor w, pw;
      if constexpr (kWeighted) {
        w.start(p.w, i);
        if constexpr (F::kPosWeight) pw.start(p.pw, i);
      }
      acc_t vals[1];
      loss_values<1, kWeighted>(p, f, i, w, pw, vals);
      body(std::integral_constant<int, 1>{}, i, vals);
    }
  }
}

// Elementwise segment: y_i = f(i) (kNoGrad), g0 * f(i) with g0 = g[0] * gscale (kScalarGrad),
// or g_i * f(i) (kTensorGrad), as the CPU's loss_forward / loss_backward.
template <typename scalar_t, int V, bool kWeighted, int kGrad, typename F>
struct LossMap {
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
// The forward on probabilities checks its input as torch's CUDA kernel does: a device-side
// assert (the CPU twin's check_probabilities would need a host sync here).
struct BceProbLoss {
  static constexpr bool kPosWeight = false;
  template <typename T>
  __device__ __forceinline__ T operator()(T p, T t, T w, T) const {
    CUDA_KERNEL_ASSERT(math::probability_in_range(p) && "all elements of input should be between 0 and 1");
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
  const int sms = multiprocessor_count(o.input.device().index());
  Tensor out = o.reduction == Reduction::None ? at::empty_like(o.input) : at::empty({}, o.input.options());
  dispatch_loss(op, o, [&](auto tag, auto weighted) {
    using scalar_t = decltype(tag);
    constexpr bool kWeighted = decltype(weighted)::value;
    const scalar_t* x = o.input.const_data_ptr<scalar_t>();
    const scalar_t* t = o.target.const_data_ptr<scalar_t>();
    if (o.reduction == Reduction::None) {
      scalar_t* y = out.mutable_data_ptr<scalar_t>();
      dispatch_bool(is_aligned(x) && is_aligned(t) && is_aligned(y), [&](auto aligned) {
        constexpr int V = decltype(aligned)::value ? kVec<scalar_t> : 1;
        using Map = LossMap<scalar_t, V, kWeighted, kNoGrad, Elem>;
        const int blocks = map_blocks(n, V, sms);
        const LossPtrs<scalar_t> p = loss_ptrs<scalar_t>(o, static_cast<int64_t>(blocks) * kThreads * V);
        launch_map(Map{p, n, elem, nullptr, 1, y}, blocks, NoSeg{}, 0, stream);
      });
      return;
    }
    const double divisor = o.reduction == Reduction::Mean ? static_cast<double>(n) : 1.0;
    dispatch_bool(is_aligned(x) && is_aligned(t), [&](auto aligned) {
      constexpr int V = decltype(aligned)::value ? kVec<scalar_t> : 1;
      using Sum = LossSum<scalar_t, V, kWeighted, Elem>;
      const int blocks = reduce_blocks(ceil_div(n, V), sms);
      const LossPtrs<scalar_t> p = loss_ptrs<scalar_t>(o, static_cast<int64_t>(blocks) * kThreads * V);
      launch_reduce<scalar_t>(Sum{p, n, elem, divisor}, NoSeg{}, blocks, out, stream);
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
  const int sms = multiprocessor_count(o.input.device().index());
  dispatch_loss(op, o, [&](auto tag, auto weighted) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr bool kWeighted = decltype(weighted)::value;
    const scalar_t* x = o.input.const_data_ptr<scalar_t>();
    const scalar_t* t = o.target.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const acc_t scale = o.reduction == Reduction::Mean ? acc_t(1) / static_cast<acc_t>(n) : acc_t(1);
    const bool aligned = is_aligned(x) && is_aligned(t) && is_aligned(y) && (grad_is_scalar || is_aligned(g));
    dispatch_bool(aligned, [&](auto aligned_tag) {
      constexpr int V = decltype(aligned_tag)::value ? kVec<scalar_t> : 1;
      const int blocks = map_blocks(n, V, sms);
      const LossPtrs<scalar_t> p = loss_ptrs<scalar_t>(o, static_cast<int64_t>(blocks) * kThreads * V);
      if (grad_is_scalar) {
        using Map = LossMap<scalar_t, V, kWeighted, kScalarGrad, DElem>;
        launch_map(Map{p, n, delem, g, scale, y}, blocks, NoSeg{}, 0, stream);
      } else {
        using Map = LossMap<scalar_t, V, kWeighted, kTensorGrad, DElem>;
        launch_map(Map{p, n, delem, g, acc_t(1), y}, blocks, NoSeg{}, 0, stream);
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
  const int sms = multiprocessor_count(real.device().index());
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
                              reduce_blocks(ceil_div(nr, V) + ceil_div(nf, V), sms), out, stream);
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
  const int sms = multiprocessor_count(real.device().index());
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
      launch_map(Real{xr, nr, {a}, g, yr}, map_blocks(nr, V, sms), Fake{xf, nf, {b}, g, yf},
                 map_blocks(nf, V, sms), stream);
    });
  });
  return {grad_real, grad_fake};
}

Tensor gan_g_loss(const Tensor& fake_logits, c10::string_view kind_name) {
  constexpr const char* op = "ganfast::gan_g_loss";
  check_gan_logits(op, fake_logits, fake_logits);
  const GanKind kind = parse_gan_kind(kind_name);
  const Tensor fake = fake_logits.contiguous();
  const int64_t n = fake.numel();
  if (n == 0) return at::full({}, std::numeric_limits<double>::quiet_NaN(), fake.options());
  const c10::cuda::CUDAGuard device_guard(fake.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = multiprocessor_count(fake.device().index());
  Tensor out = at::empty({}, fake.options());
  dispatch_gan(op, fake, kind, [&](auto tag, auto k) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr GanKind K = decltype(k)::value;
    const scalar_t* x = fake.const_data_ptr<scalar_t>();
    dispatch_bool(is_aligned(x), [&](auto aligned) {
      constexpr int V = decltype(aligned)::value ? kVec<scalar_t> : 1;
      using Sum = GanSum<scalar_t, V, GanG<K, acc_t>>;
      launch_reduce<scalar_t>(Sum{x, n, {}, static_cast<double>(n)}, NoSeg{}, reduce_blocks(ceil_div(n, V), sms),
                              out, stream);
    });
  });
  return out;
}

Tensor gan_g_loss_backward(const Tensor& grad_output, const Tensor& fake_logits, c10::string_view kind_name) {
  constexpr const char* op = "ganfast::gan_g_loss_backward";
  check_gan_logits(op, fake_logits, fake_logits);
  check_scalar_grad(op, grad_output, fake_logits);
  const GanKind kind = parse_gan_kind(kind_name);
  const Tensor fake = fake_logits.contiguous();
  const int64_t n = fake.numel();
  Tensor grad_fake = at::empty_like(fake);
  const Tensor grad = grad_output.reshape({}).to(fake.scalar_type());
  if (n == 0) return grad_fake;
  const c10::cuda::CUDAGuard device_guard(fake.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = multiprocessor_count(fake.device().index());
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
      launch_map(Map{x, n, {}, g, y}, map_blocks(n, V, sms), NoSeg{}, 0, stream);
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
