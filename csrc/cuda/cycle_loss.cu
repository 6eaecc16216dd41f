// CUDA kernels of the cycle_loss family: the twin of csrc/cpu/cycle_loss.cpp (same ops, same
// semantics). The math is csrc/gan_math.h's (l1_term, l1_sign); the argument handling
// ganfast_common.h's (check_cycle_loss, make_cycle_pairs); the vector loads, vec_loop, block_sum
// and grid sizing cuda_utils.cuh's.
//
// The list in one launch: the pairs' pointers and int64 sizes travel in a kernel-argument struct
// (CycleTable, up to kMaxPairs pairs: ~0.5 KB of parameters, no device-side table to upload, no
// host synchronisation). The grid is cut into one run of blocks per pair, in proportion to the
// pairs' sizes (every pair at least one block, an empty one too: its mean of nothing is NaN), and
// a block finds its pair by comparing its index with the runs' first blocks. Within its run a block
// walks its pair grid-stride over 16-byte vectors (vec_loop; a scalar instantiation when any
// pointer of the launch is not 16-byte aligned). int64 indexing throughout.
//  * cycle_forward_kernel: each block sums |r - o| of its pair in opmath (float, double for
//    float64), reduces with block_sum (fixed order) and stores partial = sum / numel in double; the
//    last block to arrive (atomic counter, zeroed by cudaMemsetAsync) adds the partials in index
//    order in double: the pairs' means in list order, the same result for any block schedule. No
//    float atomics. A one-block grid writes directly.
//  * cycle_backward_kernel: grad_r = s * sign(r - o) and/or grad_o = -grad_r, s = grad_output *
//    (weight / numel) with grad_output read on the device.
// More than kMaxPairs pairs (CycleGAN has 2 to 4): one launch per kMaxPairs, the forward carrying
// the running total from launch to launch in a double of its workspace (stream order), so the
// result is the one a single launch would give.
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
#include <vector>

#include "../ganfast_common.h"
#include "cuda_utils.cuh"

namespace ganfast::cuda {
namespace {

using at::Tensor;

constexpr int kMaxPairs = 8;

template <typename scalar_t>
struct CycleTable {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* r[kMaxPairs];
  const scalar_t* o[kMaxPairs];
  scalar_t* gr[kMaxPairs];  // backward outputs (null where not written)
  scalar_t* go[kMaxPairs];
  int64_t n[kMaxPairs];
  acc_t wn[kMaxPairs];       // backward: weight / numel
  int first[kMaxPairs + 1];  // blocks [first[p], first[p + 1]) serve pair p
  int count;
};

// The pair this block serves, and its values (static indexing only: the table stays in the
// parameter space, nothing goes to local memory).
template <typename scalar_t>
struct PairView {
  const scalar_t* r = nullptr;
  const scalar_t* o = nullptr;
  scalar_t* gr = nullptr;
  scalar_t* go = nullptr;
  int64_t n = 0;
  at::opmath_type<scalar_t> wn = 0;
  int first = 0, blocks = 1;
};

template <typename scalar_t>
__device__ __forceinline__ PairView<scalar_t> pair_of_block(const CycleTable<scalar_t>& t) {
  PairView<scalar_t> v;
  const int b = static_cast<int>(blockIdx.x);
#pragma unroll
  for (int q = 0; q < kMaxPairs; ++q) {
    if (q < t.count && b >= t.first[q] && b < t.first[q + 1]) {
      v.r = t.r[q];
      v.o = t.o[q];
      v.gr = t.gr[q];
      v.go = t.go[q];
      v.n = t.n[q];
      v.wn = t.wn[q];
      v.first = t.first[q];
      v.blocks = t.first[q + 1] - t.first[q];
    }
  }
  return v;
}

template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    cycle_forward_kernel(const CycleTable<scalar_t> t, double weight, double* partials, unsigned int* counter,
                         double* carry, bool carry_in, bool last_group, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const PairView<scalar_t> p = pair_of_block(t);
  const int64_t tid = static_cast<int64_t>(blockIdx.x - p.first) * kThreads + threadIdx.x;
  const int64_t nthreads = static_cast<int64_t>(p.blocks) * kThreads;
  acc_t s = acc_t(0);
  vec_loop<V>(p.n, tid, nthreads, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const Vec<scalar_t, W> rv = load_vec<W>(p.r + i);
    const Vec<scalar_t, W> ov = load_vec<W>(p.o + i);
#pragma unroll
    for (int k = 0; k < W; ++k) s += math::l1_term(static_cast<acc_t>(rv.v[k]), static_cast<acc_t>(ov.v[k]));
  });
  // this block's share of its pair's mean (0 / 0 = NaN for an empty pair, as F.l1_loss)
  double value = static_cast<double>(block_sum(s)) / static_cast<double>(p.n);
  if (gridDim.x > 1) {
    __shared__ bool is_last;
    if (threadIdx.x == 0) {
      partials[blockIdx.x] = value;
      __threadfence();  // the partials are visible before the counter says so
      is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    // The last block: the partials in a fixed order, in double (read through L2: __ldcg).
    value = 0.0;
    for (unsigned int j = threadIdx.x; j < gridDim.x; j += kThreads) value += __ldcg(partials + j);
    value = block_sum(value);
  }
  if (threadIdx.x == 0) {
    if (carry_in) value = *carry + value;
    if (last_group) {
      *out = static_cast<scalar_t>(value * weight);
    } else {
      *carry = value;
    }
  }
}

template <typename scalar_t, int V, bool kR, bool kO>
__global__ void __launch_bounds__(kThreads) cycle_backward_kernel(const CycleTable<scalar_t> t, const scalar_t* g) {
  using acc_t = at::opmath_type<scalar_t>;
  const PairView<scalar_t> p = pair_of_block(t);
  const int64_t tid = static_cast<int64_t>(blockIdx.x - p.first) * kThreads + threadIdx.x;
  const int64_t nthreads = static_cast<int64_t>(p.blocks) * kThreads;
  const acc_t s = static_cast<acc_t>(load_ro(g)) * p.wn;
  vec_loop<V>(p.n, tid, nthreads, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const Vec<scalar_t, W> rv = load_vec<W>(p.r + i);
    const Vec<scalar_t, W> ov = load_vec<W>(p.o + i);
    Vec<scalar_t, W> dr, dor;
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const acc_t d = s * math::l1_sign(static_cast<acc_t>(rv.v[k]), static_cast<acc_t>(ov.v[k]));
      dr.v[k] = static_cast<scalar_t>(d);
      dor.v[k] = static_cast<scalar_t>(-d);
    }
    if constexpr (kR) store_vec<W>(p.gr + i, dr);
    if constexpr (kO) store_vec<W>(p.go + i, dor);
  });
}

// Blocks per pair for `total` blocks at most (one wave), in proportion to the pairs' vectors, at
// least one each; fills t.first. `per_block`: vectors one block takes before another is added.
template <typename scalar_t>
void cut_grid(CycleTable<scalar_t>& t, const std::vector<int64_t>& units, int64_t per_block, int64_t wave) {
  std::vector<int64_t> want(units.size());
  int64_t sum = 0, all_units = 0;
  for (size_t p = 0; p < units.size(); ++p) {
    want[p] = std::max<int64_t>(1, ceil_div(units[p], per_block));
    sum += want[p];
    all_units += units[p];
  }
  const int64_t budget = std::max<int64_t>(wave, static_cast<int64_t>(units.size()));
  if (sum > budget) {  // share one wave in proportion to size, every pair at least one block
    for (size_t p = 0; p < units.size(); ++p)
      want[p] = std::clamp<int64_t>(all_units > 0 ? budget * units[p] / all_units : 1, 1, want[p]);
  }
  t.first[0] = 0;
  for (size_t p = 0; p < units.size(); ++p) t.first[p + 1] = t.first[p] + static_cast<int>(want[p]);
}

// One wave of each kernel instantiation (occupancy cached per instantiation and device).
template <typename scalar_t, int V>
int64_t forward_wave(c10::DeviceIndex device) {
  static std::atomic<int> resident[kMaxDevices];
  return wave_blocks(cycle_forward_kernel<scalar_t, V>, device, resident);
}

template <typename scalar_t, int V, bool kR, bool kO>
void launch_backward(CycleTable<scalar_t>& t, const std::vector<int64_t>& units, const scalar_t* g,
                     c10::DeviceIndex device, cudaStream_t stream) {
  static std::atomic<int> resident[kMaxDevices];
  cut_grid(t, units, kThreads, wave_blocks(cycle_backward_kernel<scalar_t, V, kR, kO>, device, resident));
  GANFAST_LAUNCH(static_cast<unsigned int>(t.first[t.count]), kThreads, 0, stream,
                 cycle_backward_kernel<scalar_t, V, kR, kO>)(t, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool pairs_aligned(const std::vector<CyclePair>& pairs, size_t begin, size_t end,
                   const std::vector<Tensor>* gr, const std::vector<Tensor>* go) {
  for (size_t p = begin; p < end; ++p) {
    if (pairs[p].n == 0) continue;
    if (!is_aligned(pairs[p].r.const_data_ptr()) || !is_aligned(pairs[p].o.const_data_ptr())) return false;
    if (gr && !is_aligned((*gr)[p].const_data_ptr())) return false;
    if (go && !is_aligned((*go)[p].const_data_ptr())) return false;
  }
  return true;
}

Tensor cycle_loss(at::TensorList reconstructed, at::TensorList original, double weight) {
  constexpr const char* op = "ganfast::cycle_loss";
  check_cycle_loss(op, reconstructed, original, weight);
  const auto pairs = make_cycle_pairs(reconstructed, original);
  Tensor out = at::empty({}, reconstructed[0].options());
  const c10::cuda::CUDAGuard device_guard(out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const c10::DeviceIndex device = out.device().index();
  const size_t count = pairs.size();
  const size_t groups = (count + kMaxPairs - 1) / kMaxPairs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "ganfast_cycle_loss", [&] {
    // one workspace for every launch: [carry, counter, partials...] (the largest grid's partials)
    Tensor workspace;
    std::vector<CycleTable<scalar_t>> tables(groups);
    std::vector<bool> aligned(groups);
    int64_t max_blocks = 0;
    for (size_t gi = 0; gi < groups; ++gi) {
      const size_t begin = gi * kMaxPairs, end = std::min(count, begin + kMaxPairs);
      aligned[gi] = pairs_aligned(pairs, begin, end, nullptr, nullptr);
      const int64_t vec = aligned[gi] ? kVec<scalar_t> : 1;
      CycleTable<scalar_t>& t = tables[gi];
      t = CycleTable<scalar_t>{};
      t.count = static_cast<int>(end - begin);
      std::vector<int64_t> units;
      for (size_t p = begin; p < end; ++p) {
        const size_t q = p - begin;
        t.r[q] = pairs[p].r.const_data_ptr<scalar_t>();
        t.o[q] = pairs[p].o.const_data_ptr<scalar_t>();
        t.n[q] = pairs[p].n;
        units.push_back(ceil_div(pairs[p].n, vec));
      }
      const int64_t wave = aligned[gi] ? forward_wave<scalar_t, kVec<scalar_t>>(device) : forward_wave<scalar_t, 1>(device);
      cut_grid(t, units, kThreads * kReduceVectorsPerThread, wave);
      max_blocks = std::max<int64_t>(max_blocks, t.first[t.count]);
    }
    double* carry = nullptr;
    double* partials = nullptr;
    unsigned int* counter = nullptr;
    if (groups > 1 || max_blocks > 1) {
      workspace = at::empty({(max_blocks + 2) * static_cast<int64_t>(sizeof(double))}, out.options().dtype(at::kByte));
      carry = reinterpret_cast<double*>(workspace.mutable_data_ptr());
      counter = reinterpret_cast<unsigned int*>(carry + 1);
      partials = carry + 2;
    }
    for (size_t gi = 0; gi < groups; ++gi) {
      const CycleTable<scalar_t>& t = tables[gi];
      const int blocks = t.first[t.count];
      if (blocks > 1) C10_CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(unsigned int), stream));
      const bool carry_in = gi > 0, last = gi + 1 == groups;
      dispatch_bool(aligned[gi], [&](auto a) {
        constexpr int V = decltype(a)::value ? kVec<scalar_t> : 1;
        GANFAST_LAUNCH(static_cast<unsigned int>(blocks), kThreads, 0, stream, cycle_forward_kernel<scalar_t, V>)(
            t, weight, partials, counter, carry, carry_in, last, out.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  });
  return out;
}

std::tuple<std::vector<Tensor>, std::vector<Tensor>> cycle_loss_backward(
    const Tensor& grad_output, at::TensorList reconstructed, at::TensorList original, double weight,
    bool grad_reconstructed, bool grad_original) {
  constexpr const char* op = "ganfast::cycle_loss_backward";
  check_cycle_loss(op, reconstructed, original, weight);
  check_cycle_loss_grad_output(op, grad_output, reconstructed[0]);
  const auto pairs = make_cycle_pairs(reconstructed, original);
  std::vector<Tensor> grad_r, grad_o;
  if (!grad_reconstructed && !grad_original) return {grad_r, grad_o};
  for (const auto& p : pairs) {
    if (grad_reconstructed) grad_r.push_back(at::empty_like(p.r));
    if (grad_original) grad_o.push_back(at::empty_like(p.o));
  }
  const Tensor grad = grad_output.reshape({}).to(reconstructed[0].scalar_type());
  const c10::cuda::CUDAGuard device_guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const c10::DeviceIndex device = grad.device().index();
  const size_t count = pairs.size();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "ganfast_cycle_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (size_t begin = 0; begin < count; begin += kMaxPairs) {
      const size_t end = std::min(count, begin + kMaxPairs);
      const bool aligned = pairs_aligned(pairs, begin, end, grad_reconstructed ? &grad_r : nullptr,
                                         grad_original ? &grad_o : nullptr);
      const int64_t vec = aligned ? kVec<scalar_t> : 1;
      CycleTable<scalar_t> t{};
      t.count = static_cast<int>(end - begin);
      std::vector<int64_t> units;
      int64_t total = 0;
      for (size_t p = begin; p < end; ++p) {
        const size_t q = p - begin;
        t.r[q] = pairs[p].r.const_data_ptr<scalar_t>();
        t.o[q] = pairs[p].o.const_data_ptr<scalar_t>();
        t.gr[q] = grad_reconstructed ? grad_r[p].mutable_data_ptr<scalar_t>() : nullptr;
        t.go[q] = grad_original ? grad_o[p].mutable_data_ptr<scalar_t>() : nullptr;
        t.n[q] = pairs[p].n;
        t.wn[q] = static_cast<acc_t>(weight / static_cast<double>(std::max<int64_t>(pairs[p].n, 1)));
        units.push_back(ceil_div(pairs[p].n, vec));
        total += pairs[p].n;
      }
      if (total == 0) continue;
      const scalar_t* g = grad.const_data_ptr<scalar_t>();
      dispatch_bool(aligned, [&](auto a) {
        constexpr int V = decltype(a)::value ? kVec<scalar_t> : 1;
        if (grad_reconstructed && grad_original) {
          launch_backward<scalar_t, V, true, true>(t, units, g, device, stream);
        } else if (grad_reconstructed) {
          launch_backward<scalar_t, V, true, false>(t, units, g, device, stream);
        } else {
          launch_backward<scalar_t, V, false, true>(t, units, g, device, stream);
        }
      });
    }
  });
  return {grad_r, grad_o};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CUDA, m) {
  m.impl("cycle_loss", &cycle_loss);
  m.impl("cycle_loss_backward", &cycle_loss_backward);
}

}  // namespace ganfast::cuda
