// CUDA kernels of the spectral_norm family: the twin of csrc/cpu/spectral_norm.cpp, with the same
// math (csrc/gan_math.h's sn_*) and checks (csrc/ganfast_common.h's check_spectral_norm).
//
// weight is read as (A, h, B), the matrix W (h, w = A * B) of torch's spectral norm. Kernels
// (kThreads = 256, int64 indexing, fp32 accumulation, double for float64):
//  * sn_mv_kernel: x = W v, a warp per row (rows grid-stride over the grid's warps), the lanes along
//    each of the row's A runs of B contiguous values (coalesced), xor-free warp_sum; lane 0 writes x_i.
//  * sn_mtv_kernel: t = W^T u, a block per 32 columns: lane = column (coalesced along b), the 8 warps
//    take every 8th row, their sums added through shared memory in warp order (fixed: deterministic).
//  * sn_normalize_kernel (one block): max(||x||, eps); x / it into the buffer (rounded to its dtype, as
//    torch's normalize(out=)) and the cache; the last step keeps v unrounded in the cache and writes
//    sigma = ||t||^2 / max(||t||, eps) to cache[0].
//  * sn_eval_kernel (one block): sigma = u . (W v); u and v copied into the cache.
//  * sn_scale_kernel: out = weight / sigma, sigma read on the device.
//  * backward: sn_dot_kernel (block partials of <G, W>), then sn_grad_kernel, whose every block adds the
//    partials in index order (the same bits in each) and writes (G - <G, W> / sigma u_i v_j) / sigma.
// Training: 4 launches per power step + 1; eval: 3; backward: 2. No host synchronisation, no atomics.
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

#include "../ganfast_common.h"
#include "cuda_utils.cuh"

namespace ganfast::cuda {
namespace {

using at::Tensor;

// Rows a warp takes before the mat-vec grid grows by a block.
constexpr int64_t kRowsPerWarp = 2;
// Partials of the backward's <G, W>: at most this many blocks.
constexpr int64_t kMaxPartials = 1024;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sn_mv_kernel(const scalar_t* __restrict__ w, const scalar_t* __restrict__ v, acc_t* __restrict__ x, int64_t A,
                 int64_t h, int64_t B) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) >> 5; i < h; i += warps) {
    acc_t s = acc_t(0);
    for (int64_t a = 0; a < A; ++a) {
      const scalar_t* row = w + (a * h + i) * B;
      const scalar_t* va = v + a * B;
      for (int64_t b = lane; b < B; b += 32) s += static_cast<acc_t>(load_ro(row + b)) * static_cast<acc_t>(load_ro(va + b));
    }
    s = warp_sum(s);
    if (lane == 0) x[i] = s;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sn_mtv_kernel(const scalar_t* __restrict__ w, const scalar_t* __restrict__ u, acc_t* __restrict__ t, int64_t h,
                  int64_t B, int64_t ncols) {
  __shared__ acc_t part[kWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 32 + lane;
  acc_t s = acc_t(0);
  if (j < ncols) {
    const int64_t a = j / B, b = j % B;
    const scalar_t* col = w + a * h * B + b;
    for (int64_t i = warp; i < h; i += kWarps) s += static_cast<acc_t>(load_ro(u + i)) * static_cast<acc_t>(load_ro(col + i * B));
  }
  part[warp][lane] = s;
  __syncthreads();
  if (warp == 0 && j < ncols) {
    acc_t total = part[0][lane];
    for (int k = 1; k < kWarps; ++k) total += part[k][lane];
    t[j] = total;
  }
}

// x (n values) normalised: buf = x / max(||x||, eps) in the buffer's dtype; cache = the rounded values, or
// (final) the unrounded ones and cache_sigma = ||x||^2 / max(||x||, eps).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sn_normalize_kernel(const acc_t* __restrict__ x, scalar_t* __restrict__ buf, acc_t* __restrict__ cache,
                        acc_t* __restrict__ cache_sigma, int64_t n, acc_t eps, bool final_step) {
  __shared__ acc_t denom_shared;
  acc_t ss = acc_t(0);
  for (int64_t k = threadIdx.x; k < n; k += kThreads) ss += x[k] * x[k];
  ss = block_sum(ss);
  if (threadIdx.x == 0) {
    const acc_t d = math::sn_norm_denominator(ss, eps);
    denom_shared = d;
    if (final_step) *cache_sigma = math::sn_sigma_from_t(ss, d);
  }
  __syncthreads();
  const acc_t d = denom_shared;
  for (int64_t k = threadIdx.x; k < n; k += kThreads) {
    const acc_t y = x[k] / d;
    const scalar_t r = static_cast<scalar_t>(y);
    buf[k] = r;
    cache[k] = final_step ? y : static_cast<acc_t>(r);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sn_eval_kernel(const scalar_t* __restrict__ u, const scalar_t* __restrict__ v, const acc_t* __restrict__ x,
                   acc_t* __restrict__ cache, int64_t h, int64_t w) {
  acc_t s = acc_t(0);
  for (int64_t k = threadIdx.x; k < h; k += kThreads) {
    const acc_t uk = static_cast<acc_t>(u[k]);
    cache[1 + k] = uk;
    s += uk * x[k];
  }
  for (int64_t k = threadIdx.x; k < w; k += kThreads) cache[1 + h + k] = static_cast<acc_t>(v[k]);
  s = block_sum(s);
  if (threadIdx.x == 0) cache[0] = s;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sn_scale_kernel(const scalar_t* __restrict__ w, const acc_t* __restrict__ cache, scalar_t* __restrict__ out,
                    int64_t n) {
  const acc_t sigma = cache[0];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < n; k += stride)
    out[k] = static_cast<scalar_t>(static_cast<acc_t>(load_ro(w + k)) / sigma);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sn_dot_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ w, acc_t* __restrict__ partials,
                  int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  acc_t s = acc_t(0);
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < n; k += stride)
    s += static_cast<acc_t>(load_ro(g + k)) * static_cast<acc_t>(load_ro(w + k));
  s = block_sum(s);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sn_grad_kernel(const scalar_t* __restrict__ g, const acc_t* __restrict__ cache, const acc_t* __restrict__ partials,
                   int64_t nparts, scalar_t* __restrict__ grad, int64_t n, int64_t h, int64_t B) {
  __shared__ acc_t coef_shared;
  acc_t s = acc_t(0);
  for (int64_t k = threadIdx.x; k < nparts; k += kThreads) s += partials[k];
  s = block_sum(s);
  const acc_t sigma = cache[0];
  if (threadIdx.x == 0) coef_shared = s / sigma;  // <G, W / sigma>
  __syncthreads();
  const acc_t coef = coef_shared;
  const acc_t* u = cache + 1;
  const acc_t* v = cache + 1 + h;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < n; k += stride) {
    const int64_t r = k / B, b = k - r * B;  // r = a * h + i
    const int64_t a = r / h, i = r - a * h;
    grad[k] = static_cast<scalar_t>(
        math::sn_grad(static_cast<acc_t>(load_ro(g + k)), coef, u[i], v[a * B + b], sigma));
  }
}

template <typename Kernel>
int64_t elementwise_blocks(Kernel kernel, int64_t n, c10::DeviceIndex device, std::atomic<int> (&cache)[kMaxDevices]) {
  return std::clamp<int64_t>(ceil_div(n, kThreads * kReduceVectorsPerThread), 1, wave_blocks(kernel, device, cache));
}

std::tuple<Tensor, Tensor> spectral_norm(const Tensor& weight, const Tensor& u, const Tensor& v, int64_t dim,
                                         int64_t n_power_iterations, double eps, bool training) {
  constexpr const char* op = "ganfast::spectral_norm";
  const SpectralNormShape s = check_spectral_norm(op, weight, u, v, dim, n_power_iterations, eps);
  const c10::cuda::CUDAGuard device_guard(weight.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor W = weight.contiguous();
  const auto compute = spectral_norm_compute_dtype(weight.scalar_type());
  Tensor out = at::empty(weight.sizes(), weight.options());
  Tensor cache = at::empty({1 + s.h + s.w}, weight.options().dtype(compute));
  Tensor work = at::empty({s.h + (training ? s.w : 0)}, weight.options().dtype(compute));
  const auto device = weight.device().index();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "ganfast_spectral_norm_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* w = W.const_data_ptr<scalar_t>();
    scalar_t* up = u.mutable_data_ptr<scalar_t>();
    scalar_t* vp = v.mutable_data_ptr<scalar_t>();
    acc_t* c = cache.mutable_data_ptr<acc_t>();
    acc_t* x = work.mutable_data_ptr<acc_t>();
    static std::atomic<int> mv_resident[kMaxDevices];
    const int64_t mv_blocks = std::clamp<int64_t>(ceil_div(s.h, kWarps * kRowsPerWarp), 1,
                                                  wave_blocks(sn_mv_kernel<scalar_t, acc_t>, device, mv_resident));
    const acc_t e = static_cast<acc_t>(eps);
    if (training) {
      acc_t* t = x + s.h;
      const int64_t mtv_blocks = ceil_div(s.w, 32);
      for (int64_t it = 0; it < n_power_iterations; ++it) {
        const bool final_step = it == n_power_iterations - 1;
        GANFAST_LAUNCH(static_cast<unsigned int>(mv_blocks), kThreads, 0, stream, sn_mv_kernel<scalar_t, acc_t>)(
            w, vp, x, s.A, s.h, s.B);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        GANFAST_LAUNCH(1, kThreads, 0, stream, sn_normalize_kernel<scalar_t, acc_t>)(x, up, c + 1, c, s.h, e, false);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        GANFAST_LAUNCH(static_cast<unsigned int>(mtv_blocks), kThreads, 0, stream, sn_mtv_kernel<scalar_t, acc_t>)(
            w, up, t, s.h, s.B, s.w);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        GANFAST_LAUNCH(1, kThreads, 0, stream, sn_normalize_kernel<scalar_t, acc_t>)(t, vp, c + 1 + s.h, c, s.w, e,
                                                                                      final_step);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    } else {
      GANFAST_LAUNCH(static_cast<unsigned int>(mv_blocks), kThreads, 0, stream, sn_mv_kernel<scalar_t, acc_t>)(
          w, vp, x, s.A, s.h, s.B);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      GANFAST_LAUNCH(1, kThreads, 0, stream, sn_eval_kernel<scalar_t, acc_t>)(up, vp, x, c, s.h, s.w);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t n = W.numel();
    static std::atomic<int> scale_resident[kMaxDevices];
    const int64_t blocks = elementwise_blocks(sn_scale_kernel<scalar_t, acc_t>, n, device, scale_resident);
    GANFAST_LAUNCH(static_cast<unsigned int>(blocks), kThreads, 0, stream, sn_scale_kernel<scalar_t, acc_t>)(
        w, c, out.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, cache};
}

Tensor spectral_norm_backward(const Tensor& grad_output, const Tensor& weight, const Tensor& cache, int64_t dim) {
  constexpr const char* op = "ganfast::spectral_norm_backward";
  const SpectralNormShape s = check_spectral_norm_backward(op, grad_output, weight, cache, dim);
  const c10::cuda::CUDAGuard device_guard(weight.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor W = weight.contiguous();
  const Tensor G = grad_output.contiguous();
  const Tensor C = cache.contiguous();
  Tensor grad = at::empty(weight.sizes(), weight.options());
  const int64_t n = W.numel();
  const auto device = weight.device().index();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "ganfast_spectral_norm_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    static std::atomic<int> dot_resident[kMaxDevices];
    const int64_t parts = std::min<int64_t>(
        elementwise_blocks(sn_dot_kernel<scalar_t, acc_t>, n, device, dot_resident), kMaxPartials);
    Tensor partials = at::empty({parts}, C.options());
    GANFAST_LAUNCH(static_cast<unsigned int>(parts), kThreads, 0, stream, sn_dot_kernel<scalar_t, acc_t>)(
        G.const_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(), partials.mutable_data_ptr<acc_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    static std::atomic<int> grad_resident[kMaxDevices];
    const int64_t blocks = elementwise_blocks(sn_grad_kernel<scalar_t, acc_t>, n, device, grad_resident);
    GANFAST_LAUNCH(static_cast<unsigned int>(blocks), kThreads, 0, stream, sn_grad_kernel<scalar_t, acc_t>)(
        G.const_data_ptr<scalar_t>(), C.const_data_ptr<acc_t>(), partials.const_data_ptr<acc_t>(), parts,
        grad.mutable_data_ptr<scalar_t>(), n, s.h, s.B);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CUDA, m) {
  m.impl("spectral_norm", &spectral_norm);
  m.impl("spectral_norm_backward", &spectral_norm_backward);
}

}  // namespace ganfast::cuda
