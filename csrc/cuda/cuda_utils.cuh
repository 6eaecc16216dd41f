// cuda_utils.cuh: the device and launch helpers every CUDA op family shares (moved out of
// losses.cu unchanged): 16-byte vector loads and stores, the grid-stride vector loop, the
// deterministic block reduction, map_kernel with its one-wave launch (occupancy cached per kernel
// and device), and the division-free broadcast index of a flat element index.
//
// Everything is in an anonymous namespace, as it was inside losses.cu: each translation unit
// (one op family) gets its own copies and its own per-kernel caches.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

// kernel<<<grid, block, smem, stream>>>(args...), written so that a host compiler can parse it too:
// GANFAST_LAUNCH(grid, block, smem, stream, kernel)(args...) (the kernel last: its template
// argument list may hold commas). Under the CPU emulator (tests: CUDA_EMU) the emulator launches.
#if defined(CUDA_EMU)
#define GANFAST_LAUNCH(grid, block, smem, stream, ...) CUDA_EMU_LAUNCH(grid, block, smem, stream, __VA_ARGS__)
#else
#define GANFAST_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

namespace ganfast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Grids grow to one vector per thread, up to the blocks the GPU holds at once (one wave, as the
// occupancy calculator says for each kernel); beyond that the threads loop, grid-stride.
// Reductions add a block only when each thread has this many vectors to read.
constexpr int64_t kReduceVectorsPerThread = 4;
// Devices whose properties are cached.
constexpr int kMaxDevices = 64;

// Elements per 16-byte vector.
template <typename scalar_t>
constexpr int kVec = static_cast<int>(16 / sizeof(scalar_t));

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

// body(integral_constant<int, W>, i) for the elements [i, i + W) of [0, n), over the threads
// [0, nthreads) of a segment: the < V tail elements one each (first, so that nothing but the
// loop's own state lives across the loop), then whole V-vectors grid-stride.
template <int V, typename Body>
__device__ __forceinline__ void vec_loop(int64_t n, int64_t tid, int64_t nthreads, const Body& body) {
  const int64_t nvec = n / V;
  if constexpr (V > 1) {
    const int64_t i = nvec * V + tid;
    if (i < n) body(std::integral_constant<int, 1>{}, i);
  }
  for (int64_t v = tid; v < nvec; v += nthreads) body(std::integral_constant<int, V>{}, v * V);
}

// use(i, load(i)) for i = first, first + stride, ... below end, two at a time: both loads of a
// pair are issued before either use, so each thread keeps two loads in flight (memory-level
// parallelism for passes of one load, a little math and one store per element). load must only
// read; the uses run in order.
template <typename Load, typename Use>
__device__ __forceinline__ void strided_pairs(int64_t first, int64_t end, int64_t stride, const Load& load,
                                              const Use& use) {
  int64_t i = first;
  for (; i + stride < end; i += 2 * stride) {
    const auto a = load(i);
    const auto b = load(i + stride);
    use(i, a);
    use(i + stride, b);
  }
  if (i < end) use(i, load(i));
}

// vec_loop with the body split as strided_pairs': load(width, i) -> the values at [i, i + W),
// use(width, i, values); the V-vectors two at a time.
template <int V, typename Load, typename Use>
__device__ __forceinline__ void vec_loop_pairs(int64_t n, int64_t tid, int64_t nthreads, const Load& load,
                                               const Use& use) {
  const int64_t nvec = n / V;
  if constexpr (V > 1) {
    constexpr std::integral_constant<int, 1> one{};
    const int64_t i = nvec * V + tid;
    if (i < n) use(one, i, load(one, i));
  }
  constexpr std::integral_constant<int, V> vec{};
  strided_pairs(
      tid, nvec, nthreads, [&](int64_t v) { return load(vec, v * V); },
      [&](int64_t v, const auto& values) { use(vec, v * V, values); });
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
// The map kernel (losses.cu adds its reduce_kernel)
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

// ---------------------------------------------------------------------------------------------
// Host launch helpers
// ---------------------------------------------------------------------------------------------

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int multiprocessor_count(c10::DeviceIndex device) {
  static std::atomic<int> cache[kMaxDevices];
  const bool cacheable = device >= 0 && device < kMaxDevices;
  if (cacheable) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
  v = std::max(v, 1);
  if (cacheable) cache[device].store(v, std::memory_order_relaxed);
  return v;
}

// The blocks of `kernel` that the current device runs at once (its SMs times the blocks of
// kThreads one SM holds, given the kernel's registers); cache: one per kernel, per device.
template <typename Kernel>
inline int64_t wave_blocks(Kernel kernel, c10::DeviceIndex device, std::atomic<int> (&cache)[kMaxDevices]) {
  const bool cacheable = device >= 0 && device < kMaxDevices;
  int per_sm = cacheable ? cache[device].load(std::memory_order_relaxed) : 0;
  if (per_sm == 0) {
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
    per_sm = std::max(per_sm, 1);
    if (cacheable) cache[device].store(per_sm, std::memory_order_relaxed);
  }
  return static_cast<int64_t>(per_sm) * multiprocessor_count(device);
}

// Whether a and b, of one shape, put every element at the same offset from their first.
inline bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

// t in like's dtype and layout (like is dense): t itself where it already is, else a copy.
inline at::Tensor to_layout_of(const at::Tensor& t, const at::Tensor& like) {
  if (t.scalar_type() == like.scalar_type() && same_layout(t, like)) return t;
  at::Tensor r = at::empty_like(like);
  r.copy_(t);
  return r;
}

inline bool is_aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Blocks for one vector per thread over a segment (M::kWidth elements a vector): 0 when empty.
template <typename M>
inline int64_t segment_blocks(const M& m) {
  if constexpr (kPresent<M>) {
    return ceil_div(ceil_div(m.n, M::kWidth), kThreads);
  } else {
    return 0;
  }
}

// One launch of map_kernel over one or two segments, within one wave of blocks (shared by the
// segments in proportion to their sizes).
template <typename M0, typename M1>
inline void launch_map(const M0& m0, const M1& m1, c10::DeviceIndex device, cudaStream_t stream) {
  static std::atomic<int> resident[kMaxDevices];
  int64_t b0 = segment_blocks(m0), b1 = segment_blocks(m1);
  if (b0 + b1 == 0) return;
  const int64_t wave = wave_blocks(map_kernel<M0, M1>, device, resident);
  if (b0 + b1 > wave) {
    const int64_t share0 = std::max<int64_t>(b0 > 0 ? 1 : 0, wave * b0 / (b0 + b1));
    b1 = std::max<int64_t>(b1 > 0 ? 1 : 0, wave - share0);
    b0 = share0;
  }
  GANFAST_LAUNCH(static_cast<unsigned int>(b0 + b1), kThreads, 0, stream, map_kernel)(m0, m1, static_cast<int>(b0));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------------

template <typename F>
inline void dispatch_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// ---------------------------------------------------------------------------------------------
// Broadcast index of a flat element index (no 64-bit division)
// ---------------------------------------------------------------------------------------------

// A Broadcast operand on the device: data[(i / inner) % period], or absent (data null: 1).
// inv_inner / inv_period: the reciprocals, for division without a subroutine call (div_mod).
template <typename scalar_t>
struct BcastRef {
  const scalar_t* data = nullptr;
  int64_t inner = 1;
  int64_t period = 1;
  double inv_inner = 1.0;
  double inv_period = 1.0;
};

// Element indices stay below this, so that div_mod's estimate is within one of the quotient.
constexpr int64_t kMaxBroadcastIndex = int64_t(1) << 52;

// q = i / d and r = i % d for 0 <= i < 2^52, d >= 1, inv = 1 / d rounded: the double estimate
// is within one of q, then one correction. (A 64-bit integer division is a subroutine call on
// the GPU, and values live across it spill.)
__device__ __forceinline__ int64_t div_mod(int64_t i, int64_t d, double inv, int64_t& r) {
  int64_t q = static_cast<int64_t>(static_cast<double>(i) * inv);
  r = i - q * d;
  if (r < 0) {
    --q;
    r += d;
  } else if (r >= d) {
    ++q;
    r -= d;
  }
  return q;
}

// The position of element i in a broadcast operand: i = q * inner + rem, idx = q % period.
// Divides once (start), then moves along by one element with compares only (advance).
struct BcastCursor {
  int64_t rem = 0, idx = 0;

  template <typename scalar_t>
  __device__ __forceinline__ void start(const BcastRef<scalar_t>& b, int64_t i) {
    if (b.data == nullptr) return;
    const int64_t q = b.inner == 1 ? i : div_mod(i, b.inner, b.inv_inner, rem);
    if (b.inner == 1) rem = 0;
    if (q < b.period) {
      idx = q;
    } else {
      div_mod(q, b.period, b.inv_period, idx);
    }
  }
  template <typename scalar_t>
  __device__ __forceinline__ void advance(const BcastRef<scalar_t>& b) {
    if (++rem == b.inner) {
      rem = 0;
      if (++idx == b.period) idx = 0;
    }
  }
};

}  // namespace
}  // namespace ganfast::cuda
