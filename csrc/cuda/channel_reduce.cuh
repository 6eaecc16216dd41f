// channel_reduce.cuh: per-channel reductions shared by the op families whose kernels sum over
// every dimension but the channel's (moved out of batch_norm_act.cu, where they began; bias_act's
// bias gradient uses them too): the reduce kernels over the two layouts, the launch that picks
// them, and the per-channel totals of a finalize.
//
// Layouts: Rows = contiguous with inner = prod(sizes after the channel dim) > 1, channel c's values
// are the rows (n * C + c) * inner + [0, inner); Cyclic = the channel is the fastest dimension
// (channels_last, a contiguous (N, C)), c = i % C.
// Reduce kernels, Rows: one block per (channel, piece of kPieceVectors vectors of the channel), the
// row of a vector found by one division-free div_mod. Cyclic: one block per (tile of 32 vector
// columns of channels, piece of kPiecePositions positions); a warp reads 32 consecutive 16-byte
// vectors; the 8 warps' partial sums are folded in shared memory in warp order. Each piece is one
// block's fixed-order tree (block_sum, or the fixed fold), stored in partial [kSums][C][P]; a
// finalize adds the pieces of a channel in a fixed order: deterministic, no atomics.
//
// A term (Term) gives scalar_t / acc_t, kGrad (whether g is read beside x), kSums (1 or 2),
// kWrites, param(c) once per channel, and per element either add(param, x, g, a, b) or, where it
// writes an output in the same pass (kWrites: bias_act's gradient, whose sum is the bias
// gradient), write(param, x, g, a) -> the output element, stored at t.out.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "cuda_utils.cuh"

namespace ganfast::cuda {
namespace {

using at::Tensor;

// Rows: vectors of one channel per reduce block (4 per thread).
constexpr int64_t kPieceVectors = int64_t(kThreads) * 4;
// Cyclic: positions per reduce block (8 per warp).
constexpr int64_t kPiecePositions = int64_t(kWarps) * 8;
constexpr int kTileColumns = 32;
// Every kernel here is declared __launch_bounds__(kThreads, kMinBlocks): with the thread count
// alone, ptxas (CUDA 13) trims registers to an occupancy step of its choosing (32, 40, 64) and
// spills a few cold values to local memory to stay there (seen on several reduce and elementwise
// instantiations). A minimum of two resident blocks caps registers at 128 per thread, above what
// the code needs (at most ~95 here, no spill: tests/test_cuda_build.py), and keeps at least 512
// threads per SM, each with a 16-byte load in flight: with one block (as before) an SM had 256
// loads in flight, too few to cover DRAM latency on these bandwidth-bound passes. The one-wave
// grids (wave_blocks) follow the occupancy calculator, so they grow with it.
constexpr int kMinBlocks = 2;

// W elements of x and, where a pass reads it, of g: what one step of a pass loads.
template <typename scalar_t, int W, bool kGrad>
struct XG {
  Vec<scalar_t, W> x, g;
  int64_t off;  // where they were read (a term that writes stores its output there)

  __device__ __forceinline__ static XG load(const scalar_t* x, const scalar_t* g, int64_t off) {
    XG r;
    r.off = off;
    r.x = load_vec<W>(x + off);
    if constexpr (kGrad) r.g = load_vec<W>(g + off);
    return r;
  }
  template <typename acc_t>
  __device__ __forceinline__ acc_t g_at(int k) const {
    if constexpr (kGrad) {
      return static_cast<acc_t>(g.v[k]);
    } else {
      return acc_t(0);
    }
  }
};

// add(k, x, g) for the V elements of a loaded step.
template <typename acc_t, typename scalar_t, int V, bool kGrad, typename Add>
__device__ __forceinline__ void for_each_element(const XG<scalar_t, V, kGrad>& v, const Add& add) {
#pragma unroll
  for (int k = 0; k < V; ++k) add(k, static_cast<acc_t>(v.x.v[k]), v.template g_at<acc_t>(k));
}

// One loaded step of a reduce kernel: t.add(param, x, g, a, b) per element or, for a term that
// writes (kWrites), t.write(...) per element, its results stored as one vector where the step was
// read. prm(k): element k's channel parameters; a, b: its accumulators (stride 0: one pair for the
// whole step, Rows; stride 1: one per element, Cyclic).
template <int V, int kStride, typename Term, typename Step, typename Prm>
__device__ __forceinline__ void visit_step(const Term& t, const Step& v, const Prm& prm, typename Term::acc_t* a,
                                           typename Term::acc_t* b) {
  using acc_t = typename Term::acc_t;
  if constexpr (Term::kWrites) {
    static_assert(Term::kSums == 1, "a term that writes has one sum");
    Vec<typename Term::scalar_t, V> o;
    for_each_element<acc_t>(v, [&](int k, acc_t xk, acc_t gk) { o.v[k] = t.write(prm(k), xk, gk, a[k * kStride]); });
    store_vec<V>(t.out + v.off, o);
  } else {
    for_each_element<acc_t>(v, [&](int k, acc_t xk, acc_t gk) { t.add(prm(k), xk, gk, a[k * kStride], b[k * kStride]); });
  }
}

// partial: [kSums][C][P] (the sums of piece p of channel c at [k][c][p]).
template <int V, typename Term>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    rows_reduce_kernel(const Term t, const int64_t C, const int64_t inner, const double inv_inner, const int64_t M,
                       const int64_t P, typename Term::acc_t* __restrict__ partial) {
  using acc_t = typename Term::acc_t;
  // 32-bit division: blocks < 2^31 (check_launch); a 64-bit one is a subroutine call.
  const uint32_t block = blockIdx.x;
  const int64_t c = block / static_cast<uint32_t>(P), p = block - c * P;
  const typename Term::Param prm = t.param(c);
  const int64_t nvec = M / V;
  const int64_t q1 = std::min(nvec, (p + 1) * kPieceVectors);
  using Step = XG<typename Term::scalar_t, V, Term::kGrad>;
  acc_t a = 0, b = 0;
  strided_pairs(
      p * kPieceVectors + threadIdx.x, q1, kThreads,
      [&](int64_t q) {
        int64_t r;
        const int64_t n = div_mod(q * V, inner, inv_inner, r);
        return Step::load(t.x, t.g, (n * C + c) * inner + r);
      },
      [&](int64_t, const Step& v) { visit_step<V, 0>(t, v, [&](int) { return prm; }, &a, &b); });
  a = block_sum(a);
  if constexpr (Term::kSums > 1) b = block_sum(b);
  if (threadIdx.x == 0) {
    partial[c * P + p] = a;
    if constexpr (Term::kSums > 1) partial[(C + c) * P + p] = b;
  }
}

// positions: M (each a run of C contiguous values); tiles: column tiles of kTileColumns vectors.
template <int V, typename Term>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    cyclic_reduce_kernel(const Term t, const int64_t C, const int64_t M, const int64_t P, const int64_t tiles,
                         typename Term::acc_t* __restrict__ partial) {
  using acc_t = typename Term::acc_t;
  __shared__ acc_t folds[Term::kSums][kWarps][kTileColumns * V];
  const uint32_t block = blockIdx.x;  // 32-bit division, as in rows_reduce_kernel
  const int64_t p = block / static_cast<uint32_t>(tiles), tile = block - p * tiles;
  const int tx = threadIdx.x % kTileColumns, ty = threadIdx.x / kTileColumns;
  const int64_t c0 = (tile * kTileColumns + tx) * V;  // this thread's first channel
  const bool valid = c0 < C;
  acc_t a[V], b[V];
#pragma unroll
  for (int k = 0; k < V; ++k) a[k] = b[k] = acc_t(0);
  if (valid) {
    typename Term::Param prm[V];
#pragma unroll
    for (int k = 0; k < V; ++k) prm[k] = t.param(c0 + k);
    using Step = XG<typename Term::scalar_t, V, Term::kGrad>;
    const int64_t pos1 = std::min(M, (p + 1) * kPiecePositions);
    strided_pairs(
        p * kPiecePositions + ty, pos1, kWarps, [&](int64_t pos) { return Step::load(t.x, t.g, pos * C + c0); },
        [&](int64_t, const Step& v) { visit_step<V, 1>(t, v, [&](int k) { return prm[k]; }, a, b); });
  }
#pragma unroll
  for (int k = 0; k < V; ++k) {
    folds[0][ty][tx * V + k] = a[k];
    if constexpr (Term::kSums > 1) folds[Term::kSums - 1][ty][tx * V + k] = b[k];
  }
  __syncthreads();
  if (ty == 0 && valid) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      acc_t sa = 0, sb = 0;
      for (int w = 0; w < kWarps; ++w) {
        sa += folds[0][w][tx * V + k];
        if constexpr (Term::kSums > 1) sb += folds[Term::kSums - 1][w][tx * V + k];
      }
      partial[(c0 + k) * P + p] = sa;
      if constexpr (Term::kSums > 1) partial[(C + c0 + k) * P + p] = sb;
    }
  }
}

// The two sums of channel c's P pieces, in double and in a fixed order, valid in thread 0. From
// here on a channel's statistics are computed in double, as the CPU twin's: a float finalize
// loses digits of E[x^2] - E[x]^2 and of 1 / sqrt(var + eps) that the CPU kernels keep.
template <typename acc_t>
__device__ __forceinline__ void channel_totals(const acc_t* partial, int64_t C, int64_t P, int64_t c, double& s1,
                                               double& s2) {
  double a = 0, b = 0;
  for (int64_t i = threadIdx.x; i < P; i += kThreads) {
    a += static_cast<double>(partial[c * P + i]);
    b += static_cast<double>(partial[(C + c) * P + i]);
  }
  s1 = block_sum(a);
  s2 = block_sum(b);
}

// The sum of channel c's P pieces (partial [C][P], the first sum of a reduce), in double and in a
// fixed order, valid in thread 0.
template <typename acc_t>
__device__ __forceinline__ double channel_total(const acc_t* partial, int64_t P, int64_t c) {
  double a = 0;
  for (int64_t i = threadIdx.x; i < P; i += kThreads) a += static_cast<double>(partial[c * P + i]);
  return block_sum(a);
}

// One block per channel: out[c] = the sum of its P pieces (rounded once from double).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    channel_sum_kernel(const acc_t* __restrict__ partial, const int64_t P, acc_t* __restrict__ out) {
  const int64_t c = blockIdx.x;
  const double s = channel_total(partial, P, c);
  if (threadIdx.x == 0) out[c] = static_cast<acc_t>(s);
}

struct Geometry {
  bool rows = true;  // Rows (else Cyclic)
  int64_t n = 0, C = 0, M = 0;
  int64_t inner = 1;  // Rows: prod(sizes[dim+1:]); Cyclic: 1
};

// The geometry of t around its channel dimension `dim` (M elements per channel): Rows where t is
// contiguous with elements after dim, else Cyclic (c = i % C: dim last, or channels_last with
// dim 1). t is in a layout the kernels walk (contiguous or channels_last).
inline Geometry channel_geometry(const Tensor& t, int64_t dim, int64_t M) {
  Geometry g;
  g.n = t.numel();
  g.C = t.size(dim);
  g.M = M;
  int64_t inner = 1;
  for (int64_t d = dim + 1; d < t.dim(); ++d) inner *= t.size(d);
  g.rows = t.is_contiguous() && inner > 1;
  g.inner = g.rows ? inner : 1;
  return g;
}

inline void check_launch(const char* op, int64_t n, int64_t blocks) {
  TORCH_CHECK(n < kMaxBroadcastIndex && blocks <= std::numeric_limits<int32_t>::max(), op, ": a tensor of ", n,
              " elements is too large for the CUDA kernels");
}

// The reduce launch of a term over geometry g: partial [kSums][C][P] in the compute dtype.
template <typename Term>
Tensor launch_reduce(const char* op, const Term& t, const Geometry& g, bool aligned, const Tensor& like,
                     cudaStream_t stream, int64_t* pieces) {
  using scalar_t = typename Term::scalar_t;
  using acc_t = typename Term::acc_t;
  constexpr int VV = kVec<scalar_t>;
  const auto opts = like.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  if (g.rows) {
    const bool vec = aligned && g.inner % VV == 0;
    const int64_t P = ceil_div(g.M / (vec ? VV : 1), kPieceVectors);
    *pieces = P;
    Tensor partial = at::empty({Term::kSums, g.C, P}, opts);
    const int64_t blocks = g.C * P;
    check_launch(op, g.n, blocks);
    if (blocks == 0) return partial;
    const double inv_inner = 1.0 / static_cast<double>(g.inner);
    dispatch_bool(vec, [&](auto v) {
      constexpr int V = decltype(v)::value ? VV : 1;
      GANFAST_LAUNCH(static_cast<unsigned int>(blocks), kThreads, 0, stream, rows_reduce_kernel<V, Term>)(
          t, g.C, g.inner, inv_inner, g.M, P, partial.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return partial;
  }
  const bool vec = aligned && g.C % VV == 0;
  const int64_t P = ceil_div(g.M, kPiecePositions);
  *pieces = P;
  Tensor partial = at::empty({Term::kSums, g.C, P}, opts);
  dispatch_bool(vec, [&](auto v) {
    constexpr int V = decltype(v)::value ? VV : 1;
    const int64_t tiles = ceil_div(ceil_div(g.C, V), kTileColumns);
    const int64_t blocks = tiles * P;
    check_launch(op, g.n, blocks);
    if (blocks == 0) return;
    GANFAST_LAUNCH(static_cast<unsigned int>(blocks), kThreads, 0, stream, cyclic_reduce_kernel<V, Term>)(
        t, g.C, g.M, P, tiles, partial.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return partial;
}

}  // namespace
}  // namespace ganfast::cuda
