// CUDA kernels of the orthogonal_regularization family: the twin of
// csrc/cpu/orthogonal_regularization.cpp (same ops, same semantics). The checks, the cache layout, the
// GEMMs (at::mm: cuBLAS) and the backward (ATen: one scale over every weight's cache, one GEMM per
// weight) are ganfast_common.h's; the math is gan_math.h's ortho_term; block_sum and grid sizing are
// cuda_utils.cuh's. This file's own kernel is the fused reduction over every weight's Gram:
//  * ortho_forward_kernel: the segments (ortho_segments: a Gram with its diagonal, a tall weight's
//    W^T W, its squared row norms with sign -1) travel in a kernel-argument struct (OrthoTable, up to
//    kMaxSegments: no device-side table to upload, no host synchronisation). The grid is cut into one
//    run of blocks per segment, in proportion to size; a block walks its segment grid-stride (int64
//    indices, coalesced), adds ortho_term in opmath, zeroes the diagonal entries in the cache (the
//    masked Gram the backward scales), reduces with block_sum and stores sign * sum as a double
//    partial; the last block to arrive (atomic counter, zeroed by cudaMemsetAsync) adds the partials
//    in index order in double and writes beta * total: the same result for any block schedule. The
//    diagonal test is e % (m + 1) == 0, kept as a running remainder (no 64-bit division per element).
// More than kMaxSegments segments: one launch per kMaxSegments, the running total carried from launch
// to launch in a double of the workspace (stream order), as cycle_loss.cu does.
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

constexpr int kMaxSegments = 48;  // a BigGAN-128 generator has 42; ~1.6 KB of kernel parameters

struct OrthoTable {
  int64_t offset[kMaxSegments];
  int64_t n[kMaxSegments];
  int64_t period[kMaxSegments];  // m + 1 for a Gram with its diagonal, 0 for none
  int sign[kMaxSegments];
  int first[kMaxSegments + 1];  // blocks [first[s], first[s + 1]) serve segment s
  int count;
};

struct SegmentView {
  int64_t offset = 0, n = 0, period = 0;
  int sign = 1, first = 0, blocks = 1;
};

// The segment this block serves (static indexing only: the table stays in parameter space).
__device__ __forceinline__ SegmentView segment_of_block(const OrthoTable& t) {
  SegmentView v;
  const int b = static_cast<int>(blockIdx.x);
#pragma unroll 4
  for (int q = 0; q < kMaxSegments; ++q) {
    if (q < t.count && b >= t.first[q] && b < t.first[q + 1]) {
      v.offset = t.offset[q];
      v.n = t.n[q];
      v.period = t.period[q];
      v.sign = t.sign[q];
      v.first = t.first[q];
      v.blocks = t.first[q + 1] - t.first[q];
    }
  }
  return v;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    ortho_forward_kernel(const OrthoTable t, at::opmath_type<scalar_t>* cache, double beta, double* partials,
                         unsigned int* counter, double* carry, bool carry_in, bool last_group, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const SegmentView s = segment_of_block(t);
  const int64_t tid = static_cast<int64_t>(blockIdx.x - s.first) * kThreads + threadIdx.x;
  const int64_t nthreads = static_cast<int64_t>(s.blocks) * kThreads;
  acc_t* x = cache + s.offset;
  acc_t sum = acc_t(0);
  if (s.period > 0) {
    int64_t r = tid % s.period;  // e % period, kept up to date as e advances
    const int64_t step = nthreads % s.period;
    for (int64_t e = tid; e < s.n; e += nthreads) {
      const bool diagonal = r == 0;
      sum += math::ortho_term(x[e], diagonal);
      if (diagonal) x[e] = acc_t(0);
      r += step;
      if (r >= s.period) r -= s.period;
    }
  } else {
    for (int64_t e = tid; e < s.n; e += nthreads) sum += math::ortho_term(x[e], false);
  }
  double value = static_cast<double>(s.sign) * static_cast<double>(block_sum(sum));
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
      *out = static_cast<scalar_t>(value * beta);
    } else {
      *carry = value;
    }
  }
}

// Blocks per segment within one wave, in proportion to size, at least one each; fills t.first.
void cut_grid(OrthoTable& t, const std::vector<int64_t>& sizes, int64_t per_block, int64_t wave) {
  std::vector<int64_t> want(sizes.size());
  int64_t sum = 0, all = 0;
  for (size_t p = 0; p < sizes.size(); ++p) {
    want[p] = std::max<int64_t>(1, ceil_div(sizes[p], per_block));
    sum += want[p];
    all += sizes[p];
  }
  const int64_t budget = std::max<int64_t>(wave, static_cast<int64_t>(sizes.size()));
  if (sum > budget) {
    for (size_t p = 0; p < sizes.size(); ++p)
      want[p] = std::clamp<int64_t>(all > 0 ? budget * sizes[p] / all : 1, 1, want[p]);
  }
  t.first[0] = 0;
  for (size_t p = 0; p < sizes.size(); ++p) t.first[p + 1] = t.first[p] + static_cast<int>(want[p]);
}

template <typename scalar_t>
int64_t forward_wave(c10::DeviceIndex device) {
  static std::atomic<int> resident[kMaxDevices];
  return wave_blocks(ortho_forward_kernel<scalar_t>, device, resident);
}

std::tuple<Tensor, Tensor> orthogonal_regularization(at::TensorList weights, double beta) {
  constexpr const char* op = "ganfast::orthogonal_regularization";
  check_orthogonal_regularization(op, weights, beta);
  const c10::cuda::CUDAGuard device_guard(weights[0].device());
  int64_t total = 0;
  const auto layout = ortho_layout(weights, &total);
  Tensor cache = ortho_grams(weights, layout, total);  // cuBLAS, on the current stream
  const auto segments = ortho_segments(layout);
  Tensor out = at::empty({}, weights[0].options());
  if (segments.empty()) {
    out.zero_();
    return {out, cache};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const c10::DeviceIndex device = out.device().index();
  const size_t count = segments.size();
  const size_t groups = (count + kMaxSegments - 1) / kMaxSegments;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "ganfast_orthogonal_regularization", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<OrthoTable> tables(groups);
    int64_t max_blocks = 0;
    const int64_t wave = forward_wave<scalar_t>(device);
    for (size_t gi = 0; gi < groups; ++gi) {
      const size_t begin = gi * kMaxSegments, end = std::min(count, begin + kMaxSegments);
      OrthoTable& t = tables[gi];
      t = OrthoTable{};
      t.count = static_cast<int>(end - begin);
      std::vector<int64_t> sizes;
      for (size_t p = begin; p < end; ++p) {
        const size_t q = p - begin;
        t.offset[q] = segments[p].offset;
        t.n[q] = segments[p].n;
        t.period[q] = segments[p].period;
        t.sign[q] = segments[p].sign;
        sizes.push_back(segments[p].n);
      }
      cut_grid(t, sizes, kThreads * 16, wave);  // 16 elements a thread before another block is added
      max_blocks = std::max<int64_t>(max_blocks, t.first[t.count]);
    }
    Tensor workspace;
    double* carry = nullptr;
    double* partials = nullptr;
    unsigned int* counter = nullptr;
    if (groups > 1 || max_blocks > 1) {
      workspace = at::empty({(max_blocks + 2) * static_cast<int64_t>(sizeof(double))}, out.options().dtype(at::kByte));
      carry = reinterpret_cast<double*>(workspace.mutable_data_ptr());
      counter = reinterpret_cast<unsigned int*>(carry + 1);
      partials = carry + 2;
    }
    acc_t* x = cache.mutable_data_ptr<acc_t>();
    for (size_t gi = 0; gi < groups; ++gi) {
      const OrthoTable& t = tables[gi];
      const int blocks = t.first[t.count];
      if (blocks > 1) C10_CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(unsigned int), stream));
      GANFAST_LAUNCH(static_cast<unsigned int>(blocks), kThreads, 0, stream, ortho_forward_kernel<scalar_t>)(
          t, x, beta, partials, counter, carry, gi > 0, gi + 1 == groups, out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {out, cache};
}

std::vector<Tensor> orthogonal_regularization_backward(const Tensor& grad_output, at::TensorList weights,
                                                        const Tensor& cache, double beta) {
  const c10::cuda::CUDAGuard device_guard(weights.empty() ? grad_output.device() : weights[0].device());
  return ortho_backward("ganfast::orthogonal_regularization_backward", grad_output, weights, cache, beta);
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CUDA, m) {
  m.impl("orthogonal_regularization", &orthogonal_regularization);
  m.impl("orthogonal_regularization_backward", &orthogonal_regularization_backward);
}

}  // namespace ganfast::cuda
