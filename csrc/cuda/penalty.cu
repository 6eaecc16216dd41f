// CUDA kernels of the penalty family: the twin of csrc/cpu/penalty.cpp, with the same functions,
// the same names and the same semantics. The math is csrc/gan_math.h's (interpolate,
// penalty_value, penalty_scale, penalty_scale_dn_over_n); the argument checks are
// csrc/ganfast_common.h's where it has them (check_interpolate, check_penalty_grad,
// check_penalty_norms, parse_penalty_kind, samples_are_blocks), the few this file adds are
// marked below.
//
// Layout: a per-sample operand runs over its memory as is when its samples are blocks of memory
// (samples_are_blocks: NCHW contiguous, channels_last, ...); the sample of memory position i is
// then i / per, per = numel / B. Anything else is made contiguous first. The other operands of a
// call are brought to that layout (a copy only where their strides differ).
//
// Kernels (kThreads = 256 threads a block, int64 indexing, opmath = float for float, half and
// bfloat16, double for double):
//  * Per-sample maps (interpolate, interpolate_backward, penalty_from_grad_backward and the
//    second launch of penalty_from_grad_double_backward): map_kernel of cuda_utils.cuh, 16-byte
//    vectors grid-stride within one wave. Each vector finds its sample with one division-free
//    div_mod and, as a sample holds at least a vector's elements (else the scalar instantiation
//    runs), meets at most one sample boundary: two per-sample coefficients at most a vector.
//  * sample_reduce_kernel (penalty_from_grad; the first launch of the double backward): one
//    launch, deterministic. The B samples are cut into fixed units (chunks of kChunkVectors
//    vectors a thread, or a whole small sample per warp), so the decomposition depends on the
//    shape only; a grid of at most one wave walks the units, each unit reduced in a fixed order
//    (opmath per thread, warp shuffles, block_sum) into its double partial in a workspace. The
//    last block to arrive (atomic counter zeroed by cudaMemsetAsync) adds each sample's partials
//    in chunk order in double, writes the per-sample results (the norms, or the coefficients of
//    the double backward) and the mean over the samples, computed in double and divided by B.
// The upstream gradient and the norms are read on the device: no host synchronisation anywhere.
// Empty inputs launch nothing (penalty_from_grad of B = 0 samples is NaN, as a mean of nothing;
// the double backward's d_grad_output is then 0, as the CPU's).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include "../ganfast_common.h"
#include "cuda_utils.cuh"

namespace ganfast::cuda {
namespace {

using at::Tensor;

// A block's unit of a large sample: kThreads threads times this many 16-byte vectors.
constexpr int64_t kChunkVectors = 8;
// Samples of at most 32 lanes times this many vectors are a warp's unit instead of a block's.
constexpr int64_t kWarpUnitVectors = 4;
// The last block adds a sample's partials with a warp from this many chunks a sample (else one
// thread a sample).
constexpr int64_t kWarpFinishChunks = 8;

// ---------------------------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------------------------

// A per-sample operand as the kernels read it: as is when its samples are blocks of memory.
Tensor as_sample_blocks(const Tensor& t) { return samples_are_blocks(t) ? t : t.contiguous(); }

void check_index_range(const char* op, int64_t n) {
  TORCH_CHECK(n < kMaxBroadcastIndex, op, ": a tensor of ", n, " elements is too large for the CUDA kernels");
}

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// ---------------------------------------------------------------------------------------------
// Per-sample maps
// ---------------------------------------------------------------------------------------------

// B samples of `per` elements each, consecutive in memory.
struct Samples {
  int64_t per = 1;
  double inv_per = 1.0;
};

Samples samples_of(int64_t numel, int64_t batch) {
  Samples s;
  s.per = batch > 0 ? numel / batch : 1;
  s.per = std::max<int64_t>(s.per, 1);
  s.inv_per = 1.0 / static_cast<double>(s.per);
  return s;
}

// The per-sample coefficients of the elements [i, i + W): c0 (that of i's sample) for the first
// `split`, c1 (the next sample's) for the rest. Needs W <= per: at most one boundary.
template <typename C>
struct SampleCoefs {
  C c0, c1;
  int split;
  __device__ __forceinline__ const C& at(int k) const { return k < split ? c0 : c1; }
};

template <int W, typename Coef>
__device__ __forceinline__ auto sample_coefs(const Samples& s, int64_t i, const Coef& coef) {
  int64_t rem = 0;
  const int64_t b = div_mod(i, s.per, s.inv_per, rem);
  using C = decltype(coef(b));
  SampleCoefs<C> r{coef(b), C{}, W};
  r.c1 = r.c0;
  if constexpr (W > 1) {
    const int64_t left = s.per - rem;  // elements of sample b from i on
    if (left < W) {
      r.split = static_cast<int>(left);
      r.c1 = coef(b + 1);
    }
  }
  return r;
}

// x_hat = interpolate(real, fake, eps[b]).
template <typename scalar_t, int V>
struct InterpolateMap {
  static constexpr int kWidth = V;
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* real;
  const scalar_t* fake;
  const scalar_t* eps;
  scalar_t* out;
  int64_t n;
  Samples s;

  __device__ __forceinline__ void run(int64_t tid, int64_t nthreads) const {
    vec_loop<V>(n, tid, nthreads, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      const Vec<scalar_t, W> r = load_vec<W>(real + i);
      const Vec<scalar_t, W> f = load_vec<W>(fake + i);
      const auto e = sample_coefs<W>(s, i, [&](int64_t b) { return static_cast<acc_t>(load_ro(eps + b)); });
      Vec<scalar_t, W> y;
#pragma unroll
      for (int k = 0; k < W; ++k)
        y.v[k] = static_cast<scalar_t>(
            math::interpolate(static_cast<acc_t>(r.v[k]), static_cast<acc_t>(f.v[k]), e.at(k)));
      store_vec<W>(out + i, y);
    });
  }
};

// (grad_real, grad_fake) = (eps[b] * g, (1 - eps[b]) * g), one pass writing both.
template <typename scalar_t, int V>
struct InterpolateBackwardMap {
  static constexpr int kWidth = V;
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g;
  const scalar_t* eps;
  scalar_t* grad_real;
  scalar_t* grad_fake;
  int64_t n;
  Samples s;

  __device__ __forceinline__ void run(int64_t tid, int64_t nthreads) const {
    vec_loop<V>(n, tid, nthreads, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      const Vec<scalar_t, W> gv = load_vec<W>(g + i);
      const auto e = sample_coefs<W>(s, i, [&](int64_t b) { return static_cast<acc_t>(load_ro(eps + b)); });
      Vec<scalar_t, W> yr, yf;
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const acc_t gk = static_cast<acc_t>(gv.v[k]);
        yr.v[k] = static_cast<scalar_t>(e.at(k) * gk);
        yf.v[k] = static_cast<scalar_t>((acc_t(1) - e.at(k)) * gk);
      }
      store_vec<W>(grad_real + i, yr);
      store_vec<W>(grad_fake + i, yf);
    });
  }
};

// The penalty's functions with the kind chosen at run time (a uniform branch).
template <typename T>
__device__ __forceinline__ T penalty_value_of(PenaltyKind kind, T n, T c) {
  if (kind == PenaltyKind::WganGp) return math::penalty_value<PenaltyKind::WganGp>(n, c);
  if (kind == PenaltyKind::OneSided) return math::penalty_value<PenaltyKind::OneSided>(n, c);
  return math::penalty_value<PenaltyKind::R1>(n, c);
}

template <typename T>
__device__ __forceinline__ T penalty_scale_of(PenaltyKind kind, T n, T c) {
  if (kind == PenaltyKind::WganGp) return math::penalty_scale<PenaltyKind::WganGp>(n, c);
  if (kind == PenaltyKind::OneSided) return math::penalty_scale<PenaltyKind::OneSided>(n, c);
  return math::penalty_scale<PenaltyKind::R1>(n, c);
}

template <typename T>
__device__ __forceinline__ T penalty_scale_dn_over_n_of(PenaltyKind kind, T n, T c) {
  if (kind == PenaltyKind::WganGp) return math::penalty_scale_dn_over_n<PenaltyKind::WganGp>(n, c);
  if (kind == PenaltyKind::OneSided) return math::penalty_scale_dn_over_n<PenaltyKind::OneSided>(n, c);
  return math::penalty_scale_dn_over_n<PenaltyKind::R1>(n, c);
}

// out = (gamma / B) * penalty_scale(norms[b]) * grad, gamma the 0-dim upstream gradient.
template <typename scalar_t, int V>
struct PenaltyBackwardMap {
  static constexpr int kWidth = V;
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad;
  const acc_t* norms;
  const scalar_t* gamma;
  scalar_t* out;
  int64_t n;
  Samples s;
  int64_t batch;
  PenaltyKind kind;
  acc_t center;

  __device__ __forceinline__ void run(int64_t tid, int64_t nthreads) const {
    const acc_t gs = static_cast<acc_t>(load_ro(gamma)) / static_cast<acc_t>(batch);
    vec_loop<V>(n, tid, nthreads, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      const Vec<scalar_t, W> gv = load_vec<W>(grad + i);
      const auto c = sample_coefs<W>(
          s, i, [&](int64_t b) { return gs * penalty_scale_of(kind, load_ro(norms + b), center); });
      Vec<scalar_t, W> y;
#pragma unroll
      for (int k = 0; k < W; ++k) y.v[k] = static_cast<scalar_t>(c.at(k) * static_cast<acc_t>(gv.v[k]));
      store_vec<W>(out + i, y);
    });
  }
};

template <typename T>
struct CoefPair {
  T a, b;
};

// d_grad = (gamma / B) * (s_b * grad_grad + u_b * grad), s_b = coefs[2b] = penalty_scale(n_b) and
// u_b = coefs[2b + 1] = penalty_scale_dn_over_n(n_b) * dot_b from the first launch.
template <typename scalar_t, int V>
struct PenaltyDoubleBackwardMap {
  static constexpr int kWidth = V;
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad_grad;
  const scalar_t* grad;
  const acc_t* coefs;
  const scalar_t* gamma;
  scalar_t* out;
  int64_t n;
  Samples s;
  int64_t batch;

  __device__ __forceinline__ void run(int64_t tid, int64_t nthreads) const {
    const acc_t gs = static_cast<acc_t>(load_ro(gamma)) / static_cast<acc_t>(batch);
    vec_loop<V>(n, tid, nthreads, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      const Vec<scalar_t, W> vv = load_vec<W>(grad_grad + i);
      const Vec<scalar_t, W> gv = load_vec<W>(grad + i);
      const auto c = sample_coefs<W>(s, i, [&](int64_t b) {
        return CoefPair<acc_t>{__ldcg(coefs + 2 * b), __ldcg(coefs + 2 * b + 1)};
      });
      Vec<scalar_t, W> y;
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const CoefPair<acc_t>& p = c.at(k);
        y.v[k] = static_cast<scalar_t>(gs * (p.a * static_cast<acc_t>(vv.v[k]) + p.b * static_cast<acc_t>(gv.v[k])));
      }
      store_vec<W>(out + i, y);
    });
  }
};

// ---------------------------------------------------------------------------------------------
// Per-sample reduction: the norms and the penalty (kDot false), or the per-sample dots of the
// double backward, its coefficients and d_grad_output (kDot true), in one launch
// ---------------------------------------------------------------------------------------------

template <typename scalar_t>
struct SampleReduceArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = nullptr;  // grad
  const scalar_t* w = nullptr;  // kDot: grad_grad, in grad's layout
  int64_t batch = 0;
  int64_t per = 0;              // elements a sample
  int64_t chunks = 1;           // units a sample
  double inv_chunks = 1.0;
  int64_t chunk = 0;            // elements a unit (a multiple of the vector width), block units
  bool warp_units = false;      // a warp reduces a whole sample (chunks == 1)
  double* partials = nullptr;   // batch * chunks
  unsigned int* counter = nullptr;
  PenaltyKind kind = PenaltyKind::WganGp;
  acc_t center = 0;
  acc_t* norms = nullptr;       // written (!kDot) or read (kDot)
  acc_t* coefs = nullptr;       // kDot: 2 a sample
  scalar_t* out = nullptr;      // the 0-dim result
};

// This thread's share (lane of G threads) of the sum over the elements [lo, hi) of x^2, or of
// w * x (kDot), in opmath. With V > 1 the unaligned head and tail (< V elements each) go one
// element a lane, the vectors between four at a time (four loads in flight a thread).
template <int V, bool kDot, int G, typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> unit_sum(const SampleReduceArgs<scalar_t>& a, int64_t lo,
                                                             int64_t hi, int lane) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t s = acc_t(0);
  auto add = [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const Vec<scalar_t, W> xv = load_vec<W>(a.x + i);
    if constexpr (kDot) {
      const Vec<scalar_t, W> wv = load_vec<W>(a.w + i);
#pragma unroll
      for (int k = 0; k < W; ++k) s += static_cast<acc_t>(wv.v[k]) * static_cast<acc_t>(xv.v[k]);
    } else {
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const acc_t v = static_cast<acc_t>(xv.v[k]);
        s += v * v;
      }
    }
  };
  using One = std::integral_constant<int, 1>;
  if constexpr (V == 1) {
    int64_t i = lo + lane;
    for (; i + 3 * G < hi; i += 4 * G) {
      const scalar_t x0 = load_ro(a.x + i), x1 = load_ro(a.x + i + G);
      const scalar_t x2 = load_ro(a.x + i + 2 * G), x3 = load_ro(a.x + i + 3 * G);
      if constexpr (kDot) {
        const scalar_t w0 = load_ro(a.w + i), w1 = load_ro(a.w + i + G);
        const scalar_t w2 = load_ro(a.w + i + 2 * G), w3 = load_ro(a.w + i + 3 * G);
        s += static_cast<acc_t>(w0) * static_cast<acc_t>(x0);
        s += static_cast<acc_t>(w1) * static_cast<acc_t>(x1);
        s += static_cast<acc_t>(w2) * static_cast<acc_t>(x2);
        s += static_cast<acc_t>(w3) * static_cast<acc_t>(x3);
      } else {
        const acc_t y0 = static_cast<acc_t>(x0), y1 = static_cast<acc_t>(x1);
        const acc_t y2 = static_cast<acc_t>(x2), y3 = static_cast<acc_t>(x3);
        s += y0 * y0;
        s += y1 * y1;
        s += y2 * y2;
        s += y3 * y3;
      }
    }
    for (; i < hi; i += G) add(One{}, i);
  } else {
    const int64_t up = (lo + V - 1) / V * V;
    const int64_t head_end = up < hi ? up : hi;        // [lo, head_end): unaligned head
    const int64_t down = hi / V * V;
    const int64_t tail_begin = down > head_end ? down : head_end;  // [tail_begin, hi): tail
    if (lane < head_end - lo) add(One{}, lo + lane);
    if (lane < hi - tail_begin) add(One{}, tail_begin + lane);
    const int64_t vend = tail_begin / V;
    int64_t v = head_end / V + lane;
    for (; v + 3 * G < vend; v += 4 * G) {
      const Vec<scalar_t, V> x0 = load_vec<V>(a.x + v * V), x1 = load_vec<V>(a.x + (v + G) * V);
      const Vec<scalar_t, V> x2 = load_vec<V>(a.x + (v + 2 * G) * V), x3 = load_vec<V>(a.x + (v + 3 * G) * V);
      if constexpr (kDot) {
        const Vec<scalar_t, V> w0 = load_vec<V>(a.w + v * V), w1 = load_vec<V>(a.w + (v + G) * V);
        const Vec<scalar_t, V> w2 = load_vec<V>(a.w + (v + 2 * G) * V), w3 = load_vec<V>(a.w + (v + 3 * G) * V);
#pragma unroll
        for (int k = 0; k < V; ++k) s += static_cast<acc_t>(w0.v[k]) * static_cast<acc_t>(x0.v[k]);
#pragma unroll
        for (int k = 0; k < V; ++k) s += static_cast<acc_t>(w1.v[k]) * static_cast<acc_t>(x1.v[k]);
#pragma unroll
        for (int k = 0; k < V; ++k) s += static_cast<acc_t>(w2.v[k]) * static_cast<acc_t>(x2.v[k]);
#pragma unroll
        for (int k = 0; k < V; ++k) s += static_cast<acc_t>(w3.v[k]) * static_cast<acc_t>(x3.v[k]);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) s += static_cast<acc_t>(x0.v[k]) * static_cast<acc_t>(x0.v[k]);
#pragma unroll
        for (int k = 0; k < V; ++k) s += static_cast<acc_t>(x1.v[k]) * static_cast<acc_t>(x1.v[k]);
#pragma unroll
        for (int k = 0; k < V; ++k) s += static_cast<acc_t>(x2.v[k]) * static_cast<acc_t>(x2.v[k]);
#pragma unroll
        for (int k = 0; k < V; ++k) s += static_cast<acc_t>(x3.v[k]) * static_cast<acc_t>(x3.v[k]);
      }
    }
    for (; v < vend; v += G) add(std::integral_constant<int, V>{}, v * V);
  }
  return s;
}

// The last block: each sample's partials added in chunk order (in double), the per-sample
// results written, and the mean over the samples into *out. Every thread of the block calls it.
// Two phases, so that the math (whose divisions and square roots call slow-path subroutines) has
// little live across those calls: (1) each sample's total, stored in place of its first partial;
// (2) a thread a sample, its total in, its results out.
template <bool kDot, typename scalar_t>
__device__ __forceinline__ void finish_samples(const SampleReduceArgs<scalar_t>& a) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = a.batch, chunks = a.chunks;
  double* const partials = a.partials;
  if (chunks >= kWarpFinishChunks) {
    // A warp a sample: lanes over its chunks, then the warp's fixed shuffle tree.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t b = warp; b < batch; b += kWarps) {
      const double* p = partials + b * chunks;
      double sum = 0.0;
#pragma unroll 4
      for (int64_t c = lane; c < chunks; c += 32) sum += __ldcg(p + c);
      sum = warp_sum(sum);
      if (lane == 0) partials[b * chunks] = sum;  // p[0]: lane 0 alone read it
    }
  } else if (chunks > 1) {
    // A thread a sample: its (fewer than kWarpFinishChunks) partials loaded together.
    for (int64_t b = threadIdx.x; b < batch; b += kThreads) {
      const double* p = partials + b * chunks;
      double sum = 0.0;
#pragma unroll
      for (int c = 0; c < kWarpFinishChunks - 1; ++c)
        if (c < chunks) sum += __ldcg(p + c);
      partials[b * chunks] = sum;
    }
  }
  __syncthreads();  // phase 1's totals, written by other threads of this block

  double mean = 0.0;  // this thread's share of the sum over the samples
  // Not unrolled: an unrolled copy keeps more live across the subroutine calls, which spills.
#pragma unroll 1
  for (int64_t b = threadIdx.x; b < batch; b += kThreads) {
    const double sum = __ldcg(partials + b * chunks);
    if constexpr (kDot) {
      const acc_t dot = static_cast<acc_t>(sum);
      const acc_t n = load_ro(a.norms + b);
      const acc_t s = penalty_scale_of(a.kind, n, a.center);
      a.coefs[2 * b] = s;
      a.coefs[2 * b + 1] = penalty_scale_dn_over_n_of(a.kind, n, a.center) * dot;
      mean += static_cast<double>(s * dot);
    } else {
      const acc_t norm = static_cast<acc_t>(sqrt(sum));
      a.norms[b] = norm;
      mean += static_cast<double>(penalty_value_of(a.kind, norm, a.center));
    }
  }
  mean = block_sum(mean);
  if (threadIdx.x == 0) *a.out = static_cast<scalar_t>(mean / static_cast<double>(batch));
}

template <typename scalar_t, int V, bool kDot>
__global__ void __launch_bounds__(kThreads) sample_reduce_kernel(const SampleReduceArgs<scalar_t> a) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t units = a.batch * a.chunks;
  if (a.warp_units) {
    const int lane = threadIdx.x & 31;
    const int64_t groups = static_cast<int64_t>(gridDim.x) * kWarps;
    for (int64_t u = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); u < units; u += groups) {
      const int64_t lo = u * a.per;
      const acc_t s = warp_sum(unit_sum<V, kDot, 32>(a, lo, lo + a.per, lane));
      if (lane == 0) a.partials[u] = static_cast<double>(s);
    }
  } else {
    for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
      int64_t c = 0;
      const int64_t b = a.chunks == 1 ? u : div_mod(u, a.chunks, a.inv_chunks, c);
      const int64_t lo = b * a.per + c * a.chunk;
      const int64_t sample_end = (b + 1) * a.per;
      const int64_t hi = lo + a.chunk < sample_end ? lo + a.chunk : sample_end;
      const acc_t s = block_sum(unit_sum<V, kDot, kThreads>(a, lo, hi, threadIdx.x));
      if (threadIdx.x == 0) a.partials[u] = static_cast<double>(s);
    }
  }
  if (gridDim.x > 1) {
    __shared__ bool is_last;
    __threadfence();  // this thread's partials are visible before the counter says so
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      is_last = atomicAdd(a.counter, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
  } else {
    __syncthreads();  // the partials of this block's other warps
  }
  finish_samples<kDot>(a);
}

// What a launch of sample_reduce_kernel leaves for the launches after it: the workspace, which
// holds the coefficients (kDot) and so must outlive the launches that read them.
template <typename acc_t>
struct SampleReduceResult {
  Tensor workspace;
  const acc_t* coefs = nullptr;  // kDot: 2 a sample
};

// One launch of sample_reduce_kernel over grad x (and grad_grad w, kDot, in x's layout), both in a
// layout whose samples are blocks of memory: the norms written (!kDot) or read (kDot), the 0-dim
// result into out. The one launch path of penalty_from_grad and of its double backward.
template <bool kDot, typename scalar_t>
SampleReduceResult<at::opmath_type<scalar_t>> launch_sample_reduce(const Tensor& x, const scalar_t* w,
                                                                   PenaltyKind kind, double center,
                                                                   at::opmath_type<scalar_t>* norms, Tensor& out,
                                                                   cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kV = kVec<scalar_t>;
  SampleReduceArgs<scalar_t> a;
  a.x = x.const_data_ptr<scalar_t>();
  a.w = w;
  a.kind = kind;
  a.center = static_cast<acc_t>(center);
  a.norms = norms;
  a.out = out.mutable_data_ptr<scalar_t>();
  const c10::DeviceIndex device = x.device().index();
  const int64_t numel = x.numel();
  a.batch = x.size(0);
  a.per = numel / a.batch;
  a.warp_units = a.per <= 32 * kV * kWarpUnitVectors;
  a.chunk = kThreads * kV * kChunkVectors;
  a.chunks = a.warp_units ? 1 : ceil_div(a.per, a.chunk);
  a.inv_chunks = 1.0 / static_cast<double>(a.chunks);
  const int64_t units = a.batch * a.chunks;
  const int64_t coef_bytes = kDot ? 2 * a.batch * static_cast<int64_t>(sizeof(acc_t)) : 0;
  Tensor workspace = at::empty({units * static_cast<int64_t>(sizeof(double)) + coef_bytes + 16},
                               x.options().dtype(at::kByte));
  a.partials = reinterpret_cast<double*>(workspace.mutable_data_ptr());
  if constexpr (kDot) a.coefs = reinterpret_cast<acc_t*>(a.partials + units);
  unsigned int* counter = reinterpret_cast<unsigned int*>(workspace.mutable_data_ptr<uint8_t>() +
                                                          units * static_cast<int64_t>(sizeof(double)) +
                                                          coef_bytes);
  const bool aligned = is_aligned(a.x) && (!kDot || is_aligned(a.w));
  dispatch_bool(aligned, [&](auto aligned_tag) {
    constexpr int V = decltype(aligned_tag)::value ? kVec<scalar_t> : 1;
    static std::atomic<int> resident[kMaxDevices];
    const int64_t wave = wave_blocks(sample_reduce_kernel<scalar_t, V, kDot>, device, resident);
    const int64_t wanted = a.warp_units ? ceil_div(units, kWarps) : units;
    const int64_t blocks = std::clamp<int64_t>(wanted, 1, wave);
    if (blocks > 1) {
      a.counter = counter;
      C10_CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(unsigned int), stream));
    }
    GANFAST_LAUNCH(static_cast<unsigned int>(blocks), kThreads, 0, stream, sample_reduce_kernel<scalar_t, V, kDot>)(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {workspace, a.coefs};
}

// Calls f(scalar_t tag) for a floating dtype.
template <typename F>
void dispatch_floating(at::ScalarType t, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "ganfast_penalty_cuda", [&] { f(scalar_t(0)); });
}

// One map_kernel launch of the segment make(V tag) returns: V = the vector width where every
// pointer is 16-byte aligned and a sample holds at least a vector, else 1.
template <typename scalar_t, typename Make>
void launch_sample_map(bool aligned, const Samples& s, c10::DeviceIndex device, cudaStream_t stream,
                       const Make& make) {
  dispatch_bool(aligned && s.per >= kVec<scalar_t>, [&](auto vec_tag) {
    constexpr int V = decltype(vec_tag)::value ? kVec<scalar_t> : 1;
    launch_map(make(std::integral_constant<int, V>{}), NoSeg{}, device, stream);
  });
}

// ---------------------------------------------------------------------------------------------
// The ops
// ---------------------------------------------------------------------------------------------

Tensor interpolate(const Tensor& real, const Tensor& fake, const Tensor& eps) {
  constexpr const char* op = "ganfast::interpolate";
  check_interpolate(op, real, fake, eps);
  const bool as_is = samples_are_blocks(real) && same_layout(real, fake);
  const Tensor r = as_is ? real : real.contiguous();
  const Tensor f = as_is ? fake : fake.contiguous();
  Tensor out = at::empty_like(r);
  const int64_t n = r.numel();
  if (n == 0) return out;
  check_index_range(op, n);
  const Tensor e = eps.to(r.scalar_type()).contiguous();
  const c10::cuda::CUDAGuard device_guard(r.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Samples s = samples_of(n, r.size(0));
  dispatch_floating(r.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    const scalar_t* fp = f.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const bool aligned = is_aligned(rp) && is_aligned(fp) && is_aligned(y);
    launch_sample_map<scalar_t>(aligned, s, r.device().index(), stream, [&](auto v) {
      return InterpolateMap<scalar_t, decltype(v)::value>{rp, fp, e.const_data_ptr<scalar_t>(), y, n, s};
    });
  });
  return out;
}

std::tuple<Tensor, Tensor> interpolate_backward(const Tensor& grad_output, const Tensor& eps) {
  constexpr const char* op = "ganfast::interpolate_backward";
  check_interpolate_backward(op, grad_output, eps);
  const Tensor g = as_sample_blocks(grad_output);
  Tensor grad_real = at::empty_like(g), grad_fake = at::empty_like(g);
  const int64_t n = g.numel();
  if (n == 0) return {grad_real, grad_fake};
  check_index_range(op, n);
  const Tensor e = eps.to(g.scalar_type()).contiguous();
  const c10::cuda::CUDAGuard device_guard(g.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Samples s = samples_of(n, g.size(0));
  dispatch_floating(g.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* yr = grad_real.mutable_data_ptr<scalar_t>();
    scalar_t* yf = grad_fake.mutable_data_ptr<scalar_t>();
    const bool aligned = is_aligned(gp) && is_aligned(yr) && is_aligned(yf);
    launch_sample_map<scalar_t>(aligned, s, g.device().index(), stream, [&](auto v) {
      return InterpolateBackwardMap<scalar_t, decltype(v)::value>{gp, e.const_data_ptr<scalar_t>(), yr, yf, n, s};
    });
  });
  return {grad_real, grad_fake};
}

std::tuple<Tensor, Tensor> penalty_from_grad(const Tensor& grad, c10::string_view kind_name, double center) {
  constexpr const char* op = "ganfast::penalty_from_grad";
  check_penalty_grad(op, grad);
  const PenaltyKind kind = parse_penalty_kind(kind_name);
  const Tensor g = as_sample_blocks(grad);
  const int64_t batch = g.size(0);
  Tensor norms = at::empty({batch}, g.options().dtype(compute_type(g.scalar_type())));
  if (batch == 0) return {at::full({}, std::numeric_limits<double>::quiet_NaN(), g.options()), norms};
  check_index_range(op, g.numel());
  Tensor out = at::empty({}, g.options());
  const c10::cuda::CUDAGuard device_guard(g.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_floating(g.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    launch_sample_reduce<false, scalar_t>(g, nullptr, kind, center, norms.mutable_data_ptr<acc_t>(), out, stream);
  });
  return {out, norms};
}

Tensor penalty_from_grad_backward(const Tensor& grad_output, const Tensor& grad, const Tensor& norms,
                                  c10::string_view kind_name, double center) {
  constexpr const char* op = "ganfast::penalty_from_grad_backward";
  check_penalty_grad(op, grad);
  check_penalty_norms(op, grad, norms);
  check_penalty_grad_output(op, grad_output, grad);
  const PenaltyKind kind = parse_penalty_kind(kind_name);
  const Tensor g = as_sample_blocks(grad);
  Tensor out = at::empty_like(g);
  const int64_t n = g.numel();
  if (n == 0) return out;
  check_index_range(op, n);
  const Tensor gamma = grad_output.reshape({}).to(g.scalar_type());
  const Tensor nrm = norms.contiguous();
  const c10::cuda::CUDAGuard device_guard(g.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t batch = g.size(0);
  const Samples s = samples_of(n, batch);
  dispatch_floating(g.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const acc_t c = static_cast<acc_t>(center);
    launch_sample_map<scalar_t>(
        is_aligned(gp) && is_aligned(y), s, g.device().index(), stream, [&](auto v) {
          return PenaltyBackwardMap<scalar_t, decltype(v)::value>{
              gp, nrm.const_data_ptr<acc_t>(), gamma.const_data_ptr<scalar_t>(), y, n, s, batch, kind, c};
        });
  });
  return out;
}

std::tuple<Tensor, Tensor> penalty_from_grad_double_backward(const Tensor& grad_grad, const Tensor& grad_output,
                                                             const Tensor& grad, const Tensor& norms,
                                                             c10::string_view kind_name, double center) {
  constexpr const char* op = "ganfast::penalty_from_grad_double_backward";
  check_penalty_grad(op, grad);
  check_penalty_norms(op, grad, norms);
  check_penalty_grad_output(op, grad_output, grad);
  check_penalty_grad_grad(op, grad_grad, grad);
  const PenaltyKind kind = parse_penalty_kind(kind_name);
  const Tensor g = as_sample_blocks(grad);
  const int64_t batch = g.size(0);
  Tensor d_grad = at::empty_like(g);
  // d/d grad_output of a backward whose output is empty is 0 (as torch's and the CPU's), not 0 / 0.
  if (batch == 0) return {at::zeros({}, g.options()), d_grad};
  const int64_t n = g.numel();
  check_index_range(op, n);
  const Tensor v = to_layout_of(grad_grad, g);  // an expanded grad_grad is materialised here
  const Tensor gamma = grad_output.reshape({}).to(g.scalar_type());
  const Tensor nrm = norms.contiguous();
  Tensor d_grad_output = at::empty({}, g.options());
  const c10::cuda::CUDAGuard device_guard(g.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const c10::DeviceIndex device = g.device().index();
  dispatch_floating(g.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    // Launch 1: the per-sample dots, the coefficients s_b and u_b of d_grad, and d_grad_output.
    const auto reduced = launch_sample_reduce<true, scalar_t>(
        g, v.const_data_ptr<scalar_t>(), kind, center,
        const_cast<acc_t*>(nrm.const_data_ptr<acc_t>()),  // read only (kDot)
        d_grad_output, stream);
    if (n == 0) return;
    // Launch 2: d_grad = (gamma / B) * (s_b * grad_grad + u_b * grad).
    const acc_t* coefs = reduced.coefs;
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* y = d_grad.mutable_data_ptr<scalar_t>();
    const Samples s = samples_of(n, batch);
    launch_sample_map<scalar_t>(
        is_aligned(vp) && is_aligned(gp) && is_aligned(y), s, device, stream, [&](auto vt) {
          return PenaltyDoubleBackwardMap<scalar_t, decltype(vt)::value>{
              vp, gp, coefs, gamma.const_data_ptr<scalar_t>(), y, n, s, batch};
        });
  });
  return {d_grad_output, d_grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CUDA, m) {
  m.impl("interpolate", &interpolate);
  m.impl("interpolate_backward", &interpolate_backward);
  m.impl("penalty_from_grad", &penalty_from_grad);
  m.impl("penalty_from_grad_backward", &penalty_from_grad_backward);
  m.impl("penalty_from_grad_double_backward", &penalty_from_grad_double_backward);
}

}  // namespace ganfast::cuda
