// CUDA kernels of the info_loss family (InfoGAN's mutual-information loss): the twin of
// csrc/cpu/info_loss.cpp, with the same math (csrc/gan_math.h) and the same argument checks
// (csrc/ganfast_common.h's check_info_loss).
//
// Kernel shapes (kThreads = 256 threads a block, int64 indexing, fp32 accumulation for half
// inputs, double for float64):
//  * info_forward_kernel: one launch. A warp per categorical row (rows grid-stride over the
//    grid's warps): the lanes read the row's K logits coalesced (lane k, k + 32, ...), the row max
//    and the sum of exponentials by xor shuffles, so log-softmax never leaves registers; lane 0
//    adds cat_weight * (logsumexp - x_c). Then every thread adds cont_weight times the Gaussian
//    terms of the continuous codes, grid-stride. Each block reduces with warp shuffles in a fixed
//    order and stores its partial (double) in a workspace; the last block to arrive (atomic
//    counter, zeroed by cudaMemsetAsync on the stream) adds the partials in a fixed order in
//    double and divides by B (losses.cu's reduce_kernel, specialised here). A one-block grid
//    needs neither workspace nor counter. No float atomics: the same bits for any block order.
//  * info_backward_kernel: one launch, the same warp-per-row walk writing the K gradients of each
//    row (softmax - one-hot, scaled), then the continuous gradients elementwise (grad_cont_codes =
//    -grad_cont_mean written in the same pass). The upstream gradient is read on the device.
// A warp per row suits K <= 1024 (at most 32 logits a lane); larger K still runs, looping.
// Class indices outside [0, K) are a device-side assert (as torch's cross_entropy on CUDA): no
// host synchronisation anywhere. Loads are scalar (coalesced across the warp), not 16-byte
// vectors: at InfoGAN sizes (B ~ 64, K ~ 10) the launch, not the bandwidth, is the cost.
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
#include <limits>

#include "../ganfast_common.h"
#include "cuda_utils.cuh"

namespace ganfast::cuda {
namespace {

using at::Tensor;

// Rows a warp takes before the grid grows by a block (forward; the backward writes one row a warp).
constexpr int64_t kRowsPerWarp = 4;

template <typename scalar_t>
struct InfoArgs {
  const scalar_t* x = nullptr;   // cat_logits (B, K); null without the categorical part
  const int64_t* c = nullptr;    // cat_codes (B,)
  const scalar_t* mu = nullptr;  // cont_mean (B, J); null without the continuous part
  const scalar_t* cc = nullptr;  // cont_codes (B, J)
  const scalar_t* ls = nullptr;  // cont_logstd (B, J) when kLogstd
  int64_t B = 0, K = 0, n = 0;   // n = B * J continuous terms (0 without the part)
  double cat_weight = 0, cont_weight = 0;
};

template <typename T>
__device__ __forceinline__ T warp_max_all(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = math::max_ignoring_nan(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The xor butterfly leaves the same sum in every lane (a + b = b + a).
template <typename T>
__device__ __forceinline__ T warp_sum_all(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Row b's max m and sum of e^(x - m), in every lane of the warp (called by the whole warp).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void row_max_sum(const scalar_t* row, int64_t K, int lane, acc_t& m, acc_t& s) {
  acc_t mx = acc_t(-INFINITY);
  for (int64_t k = lane; k < K; k += 32) mx = math::max_ignoring_nan(mx, static_cast<acc_t>(load_ro(row + k)));
  mx = warp_max_all(mx);
  acc_t sum = acc_t(0);
  for (int64_t k = lane; k < K; k += 32) sum += math::exp_nonpos(static_cast<acc_t>(load_ro(row + k)) - mx);
  m = mx;
  s = warp_sum_all(sum);
}

// Class index of row b, asserted in [0, K); -1 (read as NaN) past a failed assert.
__device__ __forceinline__ int64_t class_of(const int64_t* c, int64_t b, int64_t K) {
  const int64_t cls = load_ro(c + b);
  CUDA_KERNEL_ASSERT(cls >= 0 && cls < K && "cat_codes must be class indices in [0, K)");
  return cls >= 0 && cls < K ? cls : -1;
}

template <typename scalar_t, bool kLogstd>
__global__ void __launch_bounds__(kThreads)
    info_forward_kernel(const InfoArgs<scalar_t> a, double* partials, unsigned int* counter, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * kThreads;
  const int lane = threadIdx.x & 31;
  acc_t v = acc_t(0);
  if (a.x != nullptr) {
    const acc_t w = static_cast<acc_t>(a.cat_weight);
    for (int64_t b = tid >> 5; b < a.B; b += nthreads >> 5) {  // warp-uniform
      const scalar_t* row = a.x + b * a.K;
      acc_t m, s;
      row_max_sum(row, a.K, lane, m, s);
      if (lane == 0) {
        const int64_t cls = class_of(a.c, b, a.K);
        const acc_t xc = cls >= 0 ? static_cast<acc_t>(load_ro(row + cls)) : acc_t(NAN);
        v += w * (m + std::log(s) - xc);
      }
    }
  }
  if (a.mu != nullptr) {
    const acc_t w = static_cast<acc_t>(a.cont_weight);
    for (int64_t i = tid; i < a.n; i += nthreads) {
      const acc_t ls = kLogstd ? static_cast<acc_t>(load_ro(a.ls + i)) : acc_t(0);
      v += w * math::info_gauss(static_cast<acc_t>(load_ro(a.cc + i)), static_cast<acc_t>(load_ro(a.mu + i)), ls,
                                kLogstd);
    }
  }
  double p = static_cast<double>(block_sum(v));
  if (gridDim.x > 1) {
    __shared__ bool is_last;
    if (threadIdx.x == 0) {
      partials[blockIdx.x] = p;
      __threadfence();  // the partial is visible before the counter says so
      is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    p = 0.0;  // the last block: the partials in a fixed order, in double (through L2: __ldcg)
    for (unsigned int j = threadIdx.x; j < gridDim.x; j += kThreads) p += __ldcg(partials + j);
    p = block_sum(p);
  }
  if (threadIdx.x == 0) *out = static_cast<scalar_t>(p / static_cast<double>(a.B));
}

template <typename scalar_t, bool kLogstd>
__global__ void __launch_bounds__(kThreads)
    info_backward_kernel(const InfoArgs<scalar_t> a, const scalar_t* g, scalar_t* gx, scalar_t* gmu, scalar_t* gcc,
                         scalar_t* gls) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * kThreads;
  const int lane = threadIdx.x & 31;
  const double g0 = static_cast<double>(static_cast<acc_t>(load_ro(g)));
  if (a.x != nullptr) {
    const acc_t scale = static_cast<acc_t>(g0 * a.cat_weight / static_cast<double>(a.B));
    for (int64_t b = tid >> 5; b < a.B; b += nthreads >> 5) {  // warp-uniform
      const scalar_t* row = a.x + b * a.K;
      scalar_t* grow = gx + b * a.K;
      acc_t m, s;
      row_max_sum(row, a.K, lane, m, s);
      const int64_t cls = class_of(a.c, b, a.K);
      const acc_t r = scale / s;
      for (int64_t k = lane; k < a.K; k += 32) {
        const acc_t p = r * math::exp_nonpos(static_cast<acc_t>(load_ro(row + k)) - m);
        grow[k] = static_cast<scalar_t>(k == cls ? p - scale : p);
      }
    }
  }
  if (a.mu != nullptr) {
    const acc_t scale = static_cast<acc_t>(g0 * a.cont_weight / static_cast<double>(a.B));
    for (int64_t i = tid; i < a.n; i += nthreads) {
      const acc_t ls = kLogstd ? static_cast<acc_t>(load_ro(a.ls + i)) : acc_t(0);
      acc_t dmu, dls;
      math::info_gauss_grad(static_cast<acc_t>(load_ro(a.cc + i)), static_cast<acc_t>(load_ro(a.mu + i)), ls, kLogstd,
                            dmu, dls);
      gmu[i] = static_cast<scalar_t>(scale * dmu);
      gcc[i] = static_cast<scalar_t>(-(scale * dmu));
      if constexpr (kLogstd) gls[i] = static_cast<scalar_t>(scale * dls);
    }
  }
}

template <typename scalar_t>
InfoArgs<scalar_t> info_args(const InfoOperands& o, double cat_weight, double cont_weight) {
  InfoArgs<scalar_t> a;
  a.B = o.B;
  a.K = o.K;
  a.cat_weight = cat_weight;
  a.cont_weight = cont_weight;
  if (o.has_cat) {
    a.x = o.cat_logits.const_data_ptr<scalar_t>();
    a.c = o.cat_codes.const_data_ptr<int64_t>();
  }
  if (o.has_cont) {
    a.mu = o.cont_mean.const_data_ptr<scalar_t>();
    a.cc = o.cont_codes.const_data_ptr<scalar_t>();
    a.n = o.B * o.J;
    if (o.has_logstd) a.ls = o.cont_logstd.const_data_ptr<scalar_t>();
  }
  return a;
}

// Blocks for rows_per_warp rows a warp and per_thread continuous terms a thread, within one wave.
inline int64_t info_blocks(const InfoOperands& o, int64_t rows_per_warp, int64_t per_thread, int64_t wave) {
  const int64_t rows = o.has_cat ? ceil_div(o.B, kWarps * rows_per_warp) : 0;
  const int64_t terms = o.has_cont ? ceil_div(o.B * o.J, kThreads * per_thread) : 0;
  return std::clamp<int64_t>(std::max(rows, terms), 1, wave);
}

Tensor info_loss(const std::optional<Tensor>& cat_logits, const std::optional<Tensor>& cat_codes,
                 const std::optional<Tensor>& cont_mean, const std::optional<Tensor>& cont_codes,
                 const std::optional<Tensor>& cont_logstd, double cat_weight, double cont_weight) {
  constexpr const char* op = "ganfast::info_loss";
  const InfoOperands o = check_info_loss(op, cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight,
                                         cont_weight);
  // the mean over no rows is NaN, as torch's (and the CPU's 0 / 0)
  if (o.B == 0) return at::full({}, std::numeric_limits<double>::quiet_NaN(), o.like.options());
  const c10::cuda::CUDAGuard device_guard(o.like.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Tensor out = at::empty({}, o.like.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.like.scalar_type(), "ganfast_info_loss_cuda", [&] {
    const InfoArgs<scalar_t> a = info_args<scalar_t>(o, cat_weight, cont_weight);
    dispatch_bool(o.has_logstd, [&](auto logstd) {
      constexpr bool kLogstd = decltype(logstd)::value;
      static std::atomic<int> resident[kMaxDevices];
      const int64_t wave = wave_blocks(info_forward_kernel<scalar_t, kLogstd>, o.like.device().index(), resident);
      const int64_t blocks = info_blocks(o, kRowsPerWarp, kReduceVectorsPerThread, wave);
      double* partials = nullptr;
      unsigned int* counter = nullptr;
      Tensor workspace;
      if (blocks > 1) {
        workspace = at::empty({blocks * static_cast<int64_t>(sizeof(double)) + 16}, o.like.options().dtype(at::kByte));
        partials = reinterpret_cast<double*>(workspace.mutable_data_ptr());
        counter = reinterpret_cast<unsigned int*>(partials + blocks);
        C10_CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(unsigned int), stream));
      }
      GANFAST_LAUNCH(static_cast<unsigned int>(blocks), kThreads, 0, stream, info_forward_kernel<scalar_t, kLogstd>)(
          a, partials, counter, out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> info_loss_backward(
    const Tensor& grad_output, const std::optional<Tensor>& cat_logits, const std::optional<Tensor>& cat_codes,
    const std::optional<Tensor>& cont_mean, const std::optional<Tensor>& cont_codes,
    const std::optional<Tensor>& cont_logstd, double cat_weight, double cont_weight) {
  constexpr const char* op = "ganfast::info_loss_backward";
  const InfoOperands o = check_info_loss(op, cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight,
                                         cont_weight);
  check_info_grad_output(op, grad_output, o);
  Tensor grad_x = info_grad_like(o.cat_logits, o.like);
  Tensor grad_mu = info_grad_like(o.cont_mean, o.like);
  Tensor grad_cc = info_grad_like(o.cont_codes, o.like);
  Tensor grad_ls = info_grad_like(o.cont_logstd, o.like);
  if (o.B == 0) return {grad_x, grad_mu, grad_cc, grad_ls};
  const Tensor grad = grad_output.reshape({}).to(o.like.scalar_type());
  const c10::cuda::CUDAGuard device_guard(o.like.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.like.scalar_type(), "ganfast_info_loss_backward_cuda",
                                  [&] {
    const InfoArgs<scalar_t> a = info_args<scalar_t>(o, cat_weight, cont_weight);
    scalar_t* gx = o.has_cat ? grad_x.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gmu = o.has_cont ? grad_mu.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gcc = o.has_cont ? grad_cc.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gls = o.has_logstd ? grad_ls.mutable_data_ptr<scalar_t>() : nullptr;
    dispatch_bool(o.has_logstd, [&](auto logstd) {
      constexpr bool kLogstd = decltype(logstd)::value;
      static std::atomic<int> resident[kMaxDevices];
      const int64_t wave = wave_blocks(info_backward_kernel<scalar_t, kLogstd>, o.like.device().index(), resident);
      const int64_t blocks = info_blocks(o, 1, 1, wave);
      GANFAST_LAUNCH(static_cast<unsigned int>(blocks), kThreads, 0, stream, info_backward_kernel<scalar_t, kLogstd>)(
          a, grad.const_data_ptr<scalar_t>(), gx, gmu, gcc, gls);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_x, grad_mu, grad_cc, grad_ls};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CUDA, m) {
  m.impl("info_loss", &info_loss);
  m.impl("info_loss_backward", &info_loss_backward);
}

}  // namespace ganfast::cuda
