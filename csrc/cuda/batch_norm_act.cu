// CUDA kernels of the batch_norm_act family: the twin of csrc/cpu/batch_norm_act.cpp, with the
// same functions, names and semantics; they also serve instance_norm_act, which is batch norm over
// the view (1, N * C, S) of contiguous input (instance k = n * C + c, affine parameters at k % C:
// ChannelIn::period, finalize_stats_kernel's period). The math is csrc/gan_math.h's (batch_norm_act_value,
// batch_norm_act_dz, batch_norm_grad_input); the argument checks csrc/ganfast_common.h's.
//
// Layouts (as the CPU kernels): Rows = NCHW contiguous with inner = prod(sizes[2:]) > 1, channel c's
// values are N rows of `inner`; Cyclic = the channel is the fastest dimension (channels_last, a
// contiguous (N, C)), c = i % C; anything else is made contiguous. The output is empty_like of
// what runs.
//
// Launches, none of which waits for the host (no host synchronisation anywhere):
//   forward, training  reduce (per channel, per piece: sum (x - K), sum (x - K)^2, K = the
//                      channel's first value, which keeps E[x^2] - E[x]^2 from cancelling where
//                      |mean| >> std) -> finalize (one block per channel adds its pieces in order:
//                      mean, invstd, running-statistics update, scale / shift) -> map (the
//                      elementwise pass).
//   forward, eval      finalize_eval (one thread per channel) -> map.
//   backward           reduce (sum dz, sum dz (x - mean)) -> finalize_backward (grad_weight,
//                      grad_bias, the grad_input coefficients) -> map (grad_input).
// Conditional BatchNorm (weight / bias (N, C); issue 12): the statistics launches run over NCHW-contiguous
// x without the affine parameters; the per-instance coefficients (N * C of them) are made by tiny torch
// ops on the stream; the elementwise passes and the backward's reduce / finalize run over the instance
// view (1, N * C, S) (every per-channel operand per instance); between the backward's finalize and its
// elementwise pass, the per-channel terms p, q of gan_math.h batch_norm_grad_input_per_sample are the
// w-weighted sums over the samples of the per-instance sums (torch ops on the stream, no host sync).
// Reductions are deterministic: each piece is one block's fixed-order tree (block_sum, or a fixed
// shared-memory fold), stored; the pieces of a channel are added by one block in a fixed order.
// Reduce kernels, Rows: one block per (channel, piece of kPieceVectors vectors of the channel),
// the row of a vector found by one division-free div_mod. Cyclic: one block per (tile of 32 vector
// columns of channels, piece of kPiecePositions positions); a warp reads 32 consecutive 16-byte
// vectors; the 8 warps' partial sums are folded in shared memory in warp order. (Few channels
// leave most of a Cyclic tile idle: C < 32 V uses C / V of its 32 columns.)
// Accumulation in opmath (float for float, half, bfloat16; double for double), int64 indexing,
// 16-byte vectors where the pointers are 16-byte aligned (and rows / channel counts are multiples
// of the vector width), a scalar instantiation otherwise.
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
#include <optional>
#include <tuple>

#include "../ganfast_common.h"
#include "channel_reduce.cuh"
#include "cuda_utils.cuh"

namespace ganfast::cuda {
namespace {

using at::Tensor;

// ---------------------------------------------------------------------------------------------
// Per-channel operands on the device (compute dtype, contiguous; null: absent)
// ---------------------------------------------------------------------------------------------

// The index of channel c's affine parameters: c itself (period 0: batch_norm_act), or c % period
// (instance_norm_act, whose channel c = n * C + channel is an instance of the view (1, N * C, S)). Once
// per channel (a reduce block's parameters, a finalize thread), never per element.
__device__ __forceinline__ int64_t param_index(int64_t c, int64_t period) { return period > 0 ? c % period : c; }

template <typename acc_t>
struct ChannelIn {
  const acc_t* weight = nullptr;  // null: 1
  const acc_t* bias = nullptr;    // null: 0
  const acc_t* mean = nullptr;
  const acc_t* invstd = nullptr;
  int64_t period = 0;  // the affine parameters of channel c at param_index(c, period)

  __device__ __forceinline__ void affine(int64_t c, acc_t& scale, acc_t& shift, acc_t& mean_c) const {
    const int64_t pc = param_index(c, period);
    const acc_t w = weight != nullptr ? load_ro(weight + pc) : acc_t(1);
    const acc_t b = bias != nullptr ? load_ro(bias + pc) : acc_t(0);
    mean_c = load_ro(mean + c);
    scale = w * load_ro(invstd + c);
    shift = b - mean_c * scale;
  }
};

// ---------------------------------------------------------------------------------------------
// Reduction terms: param(c) once per channel, add(param, x, g, a, b) per element.
// ---------------------------------------------------------------------------------------------

// (x - K, (x - K)^2), K = x[c * k_stride], the channel's first value.
template <typename scalar_t_>
struct StatsTerm {
  using scalar_t = scalar_t_;
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kGrad = false;
  static constexpr int kSums = 2;
  static constexpr bool kWrites = false;
  const scalar_t* x;
  const scalar_t* g;  // unused
  int64_t k_stride;
  struct Param {
    acc_t k;
  };
  __device__ __forceinline__ Param param(int64_t c) const { return {static_cast<acc_t>(load_ro(x + c * k_stride))}; }
  __device__ __forceinline__ void add(const Param& p, acc_t xv, acc_t, acc_t& a, acc_t& b) const {
    const acc_t d = xv - p.k;
    a += d;
    b += d * d;
  }
};

// (dz, dz (x - mean)), dz = g f'(x * scale + shift).
template <typename scalar_t_, ActKind A>
struct DzTerm {
  using scalar_t = scalar_t_;
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kGrad = true;
  static constexpr int kSums = 2;
  static constexpr bool kWrites = false;
  const scalar_t* x;
  const scalar_t* g;
  ChannelIn<acc_t> ch;
  acc_t alpha;
  struct Param {
    acc_t scale, shift, mean;
  };
  __device__ __forceinline__ Param param(int64_t c) const {
    Param p;
    ch.affine(c, p.scale, p.shift, p.mean);
    return p;
  }
  __device__ __forceinline__ void add(const Param& p, acc_t xv, acc_t gv, acc_t& a, acc_t& b) const {
    const acc_t dz = math::batch_norm_act_dz<A>(gv, xv, p.scale, p.shift, alpha);
    a += dz;
    b += dz * (xv - p.mean);
  }
};

template <typename acc_t>
struct RunningStats {
  acc_t* mean = nullptr;  // null: not updated
  acc_t* var = nullptr;
  double momentum = 0;
};

// save_mean, save_invstd and the forward's coef [2][C] = scale, shift of channel c, from its
// mean and invstd in double; its affine parameters at pc.
template <typename acc_t>
__device__ __forceinline__ void store_channel_coefficients(int64_t c, int64_t pc, int64_t C, double mean,
                                                           double invstd, const acc_t* weight, const acc_t* bias,
                                                           acc_t* save_mean, acc_t* save_invstd, acc_t* coef) {
  const double scale = (weight != nullptr ? static_cast<double>(weight[pc]) : 1.0) * invstd;
  save_mean[c] = static_cast<acc_t>(mean);
  save_invstd[c] = static_cast<acc_t>(invstd);
  coef[c] = static_cast<acc_t>(scale);
  coef[C + c] = static_cast<acc_t>((bias != nullptr ? static_cast<double>(bias[pc]) : 0.0) - mean * scale);
}

// One block per channel: mean, invstd, the running statistics, scale / shift (coef [2][C]).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    finalize_stats_kernel(const acc_t* __restrict__ partial, const int64_t C, const int64_t P, const int64_t M,
                          const scalar_t* __restrict__ x, const int64_t k_stride, const acc_t* __restrict__ weight,
                          const acc_t* __restrict__ bias, const int64_t period, const RunningStats<acc_t> running,
                          const double eps, acc_t* __restrict__ save_mean, acc_t* __restrict__ save_invstd,
                          acc_t* __restrict__ coef) {
  const int64_t c = blockIdx.x;
  double s1, s2;
  channel_totals(partial, C, P, c, s1, s2);
  if (threadIdx.x != 0) return;
  double mean = 0, var = 0;
  if (M > 0) {
    const double d = s1 / static_cast<double>(M);
    mean = static_cast<double>(static_cast<acc_t>(load_ro(x + c * k_stride))) + d;
    var = std::max(s2 / static_cast<double>(M) - d * d, 0.0);
    if (running.mean != nullptr) {  // training guarantees M > 1
      const double m = running.momentum;
      const double unbias = static_cast<double>(M) / static_cast<double>(M - 1);
      running.mean[c] = static_cast<acc_t>((1.0 - m) * static_cast<double>(running.mean[c]) + m * mean);
      running.var[c] = static_cast<acc_t>((1.0 - m) * static_cast<double>(running.var[c]) + m * var * unbias);
    }
  }
  store_channel_coefficients(c, param_index(c, period), C, mean, 1.0 / std::sqrt(var + eps), weight, bias, save_mean,
                             save_invstd, coef);
}

// One thread per channel: the running statistics as the batch's.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    finalize_eval_kernel(const int64_t C, const acc_t* __restrict__ running_mean, const acc_t* __restrict__ running_var,
                         const acc_t* __restrict__ weight, const acc_t* __restrict__ bias, const double eps,
                         acc_t* __restrict__ save_mean, acc_t* __restrict__ save_invstd, acc_t* __restrict__ coef) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= C) return;
  store_channel_coefficients(c, c, C, static_cast<double>(running_mean[c]),
                             1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps), weight, bias, save_mean,
                             save_invstd, coef);
}

// One block per channel: grad_bias = sum dz, grad_weight = invstd sum dz (x - mean), and grad_input's
// coefficients coef [6][C] = scale, shift, mean, a, mean_dz, k (gan_math.h's batch_norm_grad_input).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    finalize_backward_kernel(const acc_t* __restrict__ partial, const int64_t C, const int64_t P, const int64_t M,
                             const ChannelIn<acc_t> ch, const bool training, acc_t* __restrict__ grad_weight,
                             acc_t* __restrict__ grad_bias, acc_t* __restrict__ coef) {
  const int64_t c = blockIdx.x;
  double s1, s2;
  channel_totals(partial, C, P, c, s1, s2);
  if (threadIdx.x != 0) return;
  acc_t scale, shift, mean;
  ch.affine(c, scale, shift, mean);
  const double invstd = static_cast<double>(ch.invstd[c]);
  grad_bias[c] = static_cast<acc_t>(s1);
  grad_weight[c] = static_cast<acc_t>(s2 * invstd);
  const bool centre = training && M > 0;
  coef[c] = scale;
  coef[C + c] = shift;
  coef[2 * C + c] = mean;
  coef[3 * C + c] = scale;  // a = weight * invstd
  coef[4 * C + c] = centre ? static_cast<acc_t>(s1 / static_cast<double>(M)) : acc_t(0);
  coef[5 * C + c] = centre ? static_cast<acc_t>(invstd * invstd * s2 / static_cast<double>(M)) : acc_t(0);
}

// ---------------------------------------------------------------------------------------------
// Elementwise passes (elementwise_kernel below, map_kernel's shape): the channel of element i by BcastCursor
// (inner = Rows' inner or 1, period = C), the per-channel coefficients read from coef.
// ---------------------------------------------------------------------------------------------

// out[i] = op(x[i], g[i], the coefficients of i's channel): the elementwise pass of both
// directions. Op::kGrad says whether g is read; op(x, g, cf, C) reads the channel's coefficients
// at cf, cf + C, ... (coef [k][C]).
template <typename scalar_t, int V, typename Op>
struct ChannelMap {
  static constexpr int kWidth = V;
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  const scalar_t* g;  // unused unless Op::kGrad
  scalar_t* out;
  BcastRef<acc_t> ch;  // data: coef
  int64_t n;
  Op op;

  __device__ __forceinline__ void run(int64_t tid, int64_t nthreads) const {
    const int64_t C = ch.period;
    vec_loop_pairs<V>(
        n, tid, nthreads,
        [&](auto width, int64_t i) { return XG<scalar_t, decltype(width)::value, Op::kGrad>::load(x, g, i); },
        [&](auto width, int64_t i, const auto& v) {
          constexpr int W = decltype(width)::value;
          BcastCursor cur;
          cur.start(ch, i);
          Vec<scalar_t, W> o;
          for_each_element<acc_t>(v, [&](int k, acc_t xk, acc_t gk) {
            o.v[k] = static_cast<scalar_t>(op(xk, gk, ch.data + cur.idx, C));
            if (k + 1 < W) cur.advance(ch);
          });
          store_vec<W>(out + i, o);
        });
  }
};

// The forward: act(x * scale + shift), coef [2][C] = scale, shift.
template <typename acc_t, ActKind A>
struct ForwardOp {
  static constexpr bool kGrad = false;
  acc_t alpha;
  __device__ __forceinline__ acc_t operator()(acc_t xv, acc_t, const acc_t* cf, int64_t C) const {
    return math::batch_norm_act_value<A>(xv, load_ro(cf), load_ro(cf + C), alpha);
  }
};

// grad_input from g and x, coef [6][C] (finalize_backward_kernel's).
template <typename acc_t, ActKind A>
struct GradInputOp {
  static constexpr bool kGrad = true;
  acc_t alpha;
  __device__ __forceinline__ acc_t operator()(acc_t xv, acc_t gv, const acc_t* cf, int64_t C) const {
    const acc_t dz = math::batch_norm_act_dz<A>(gv, xv, load_ro(cf), load_ro(cf + C), alpha);
    return math::batch_norm_grad_input(dz, xv, load_ro(cf + 2 * C), load_ro(cf + 3 * C), load_ro(cf + 4 * C),
                                       load_ro(cf + 5 * C));
  }
};

// Conditional BatchNorm's grad_input (per-instance coefficients over the instance view), coef [6][NC]
// = scale, shift, mean, a, p, q: dx = a dz - p - (x - mean) q (gan_math.h batch_norm_grad_input_per_sample).
template <typename acc_t, ActKind A>
struct PerSampleGradInputOp {
  static constexpr bool kGrad = true;
  acc_t alpha;
  __device__ __forceinline__ acc_t operator()(acc_t xv, acc_t gv, const acc_t* cf, int64_t C) const {
    const acc_t dz = math::batch_norm_act_dz<A>(gv, xv, load_ro(cf), load_ro(cf + C), alpha);
    return math::batch_norm_grad_input_per_sample(dz, xv, load_ro(cf + 2 * C), load_ro(cf + 3 * C),
                                                  load_ro(cf + 4 * C), load_ro(cf + 5 * C));
  }
};

// map_kernel of cuda_utils.cuh with one segment and __launch_bounds__(kThreads, kMinBlocks) (see above).
template <typename M>
__global__ void __launch_bounds__(kThreads, kMinBlocks) elementwise_kernel(const M m) {
  m.run(static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x, static_cast<int64_t>(gridDim.x) * kThreads);
}

// ---------------------------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------------------------

// One launch of elementwise_kernel: a vector per thread, at most one wave (then grid-stride).
template <typename M>
void launch_elementwise(const M& m, c10::DeviceIndex device, cudaStream_t stream) {
  static std::atomic<int> resident[kMaxDevices];
  int64_t blocks = segment_blocks(m);
  if (blocks == 0) return;
  blocks = std::min(blocks, wave_blocks(elementwise_kernel<M>, device, resident));
  GANFAST_LAUNCH(static_cast<unsigned int>(blocks), kThreads, 0, stream, elementwise_kernel<M>)(m);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Whether every element (n, c, s) of t sits at ((n * S) + s) * C + c from its first.
bool channels_fastest(const Tensor& t) {
  int64_t expected = 1;
  auto ok = [&](int64_t d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
    return true;
  };
  if (!ok(1)) return false;
  for (int64_t d = t.dim() - 1; d >= 2; --d)
    if (!ok(d)) return false;
  return ok(0);
}

Tensor walkable(const Tensor& t) { return t.is_contiguous() || channels_fastest(t) ? t : t.contiguous(); }

// A per-channel operand in the compute dtype, contiguous (undefined where absent).
Tensor channel_operand(const std::optional<Tensor>& t, at::ScalarType compute) {
  if (!t.has_value() || !t->defined()) return Tensor();
  return t->to(compute).contiguous();
}

template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

template <typename acc_t>
BcastRef<acc_t> channel_ref(const Tensor& coef, const Geometry& g) {
  BcastRef<acc_t> r;
  r.data = coef.const_data_ptr<acc_t>();
  r.inner = g.inner;
  r.period = g.C;
  r.inv_inner = 1.0 / static_cast<double>(g.inner);
  r.inv_period = 1.0 / static_cast<double>(g.C);
  return r;
}

// What both ops set up before they launch: the input in a layout the kernels walk, its geometry,
// the compute dtype, the per-channel weight and bias in it, the stream. The caller holds the
// device guard (constructed before this, so the stream is the input device's).
struct Setup {
  ActKind act;
  Tensor x;
  Geometry g;
  at::ScalarType compute;
  at::TensorOptions copts;
  Tensor w, b;  // undefined where absent
  cudaStream_t stream;
  c10::DeviceIndex device;
};

Setup setup(const char* op, const Tensor& input, int64_t M, const std::optional<Tensor>& weight,
            const std::optional<Tensor>& bias, c10::string_view act_name) {
  Setup s;
  s.act = parse_act(act_name);
  s.x = walkable(input);
  s.g = channel_geometry(s.x, 1, M);
  check_launch(op, s.g.n, 0);
  s.compute = batch_norm_compute_dtype(s.x.scalar_type());
  s.copts = s.x.options().dtype(s.compute);
  s.w = channel_operand(weight, s.compute);
  s.b = channel_operand(bias, s.compute);
  s.stream = c10::cuda::getCurrentCUDAStream();
  s.device = s.x.device().index();
  return s;
}

template <typename F>
void dispatch_batch_norm_act(at::ScalarType t, ActKind act, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "ganfast_batch_norm_act_cuda", [&] {
    dispatch_act(act, [&](auto a) { f(scalar_t(0), a); });
  });
}

// ---------------------------------------------------------------------------------------------
// The ops
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// The launches both families run, over the geometry of what runs (batch_norm_act: C channels;
// instance_norm_act: the N * C instances of the view (1, N * C, S), affine parameters at c % period)
// ---------------------------------------------------------------------------------------------

// Training statistics: reduce -> finalize_stats (save_mean, save_invstd, coef [2][g.C]; the running
// statistics rs updated where given).
template <typename scalar_t, typename acc_t>
void launch_statistics(const char* op, const Tensor& x, const Geometry& g, int64_t M, const Tensor& w, const Tensor& b,
                       int64_t period, const RunningStats<acc_t>& rs, double eps, Tensor& save_mean,
                       Tensor& save_invstd, Tensor& coef, cudaStream_t stream) {
  const StatsTerm<scalar_t> t{x.const_data_ptr<scalar_t>(), nullptr, g.rows ? g.inner : int64_t(1)};
  int64_t P = 0;
  const Tensor partial = launch_reduce(op, t, g, is_aligned(t.x), x, stream, &P);
  GANFAST_LAUNCH(static_cast<unsigned int>(g.C), kThreads, 0, stream, finalize_stats_kernel<scalar_t, acc_t>)(
      partial.const_data_ptr<acc_t>(), g.C, P, M, t.x, t.k_stride, ptr_or_null<acc_t>(w), ptr_or_null<acc_t>(b), period,
      rs, eps, save_mean.mutable_data_ptr<acc_t>(), save_invstd.mutable_data_ptr<acc_t>(),
      coef.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out = act(x * coef[0][c] + coef[1][c]): the forward's elementwise pass (g.n > 0).
void launch_normalize(const Tensor& x, Tensor& out, const Geometry& g, const Tensor& coef, ActKind act, double alpha,
                      c10::DeviceIndex device, cudaStream_t stream) {
  dispatch_batch_norm_act(x.scalar_type(), act, [&](auto tag, auto a) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr ActKind A = decltype(a)::value;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    const BcastRef<acc_t> ch = channel_ref<acc_t>(coef, g);
    dispatch_bool(is_aligned(xp) && is_aligned(op_), [&](auto aligned) {
      constexpr int V = decltype(aligned)::value ? kVec<scalar_t> : 1;
      launch_elementwise(ChannelMap<scalar_t, V, ForwardOp<acc_t, A>>{xp, nullptr, op_, ch, g.n, {static_cast<acc_t>(alpha)}},
                         device, stream);
    });
  });
}

// The backward: reduce (sum dz, sum dz (x - mean)) -> finalize_backward (grad_weight, grad_bias per
// channel of g, in the compute dtype; the grad_input coefficients) -> grad_input (g.n > 0). gx: the
// upstream gradient in x's layout and dtype; mean, invstd contiguous (g.C).
// Conditional BatchNorm (x the instance view (1, N * C, S), every per-channel operand per instance):
// the batch terms of grad_input are w-weighted sums over the samples of the per-instance sums.
struct PerSample {
  int64_t N = 0, C = 0;
  Tensor invstd;  // (C), compute dtype
};

// per_sample: conditional BatchNorm (see PerSample): finalize_backward writes the per-instance sums
// only (as in eval), p and q are made from them between the launches by tiny torch ops on the stream
// (no host synchronisation), and the elementwise pass is PerSampleGradInputOp.
void launch_backward(const char* op, const Tensor& x, const Tensor& gx, Tensor& grad_input, const Geometry& g,
                     int64_t M, bool training, const Tensor& w, const Tensor& b, int64_t period, const Tensor& mean,
                     const Tensor& invstd, ActKind act, double alpha, Tensor& grad_weight, Tensor& grad_bias,
                     const at::TensorOptions& copts, c10::DeviceIndex device, cudaStream_t stream,
                     const PerSample* per_sample = nullptr) {
  Tensor coef = at::empty({6, g.C}, copts);
  dispatch_batch_norm_act(x.scalar_type(), act, [&](auto tag, auto a) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr ActKind A = decltype(a)::value;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = gx.const_data_ptr<scalar_t>();
    scalar_t* op_ = grad_input.mutable_data_ptr<scalar_t>();
    ChannelIn<acc_t> ch;
    ch.weight = ptr_or_null<acc_t>(w);
    ch.bias = ptr_or_null<acc_t>(b);
    ch.mean = mean.const_data_ptr<acc_t>();
    ch.invstd = invstd.const_data_ptr<acc_t>();
    ch.period = period;
    const DzTerm<scalar_t, A> t{xp, gp, ch, static_cast<acc_t>(alpha)};
    int64_t P = 0;
    const Tensor partial = launch_reduce(op, t, g, is_aligned(xp) && is_aligned(gp), x, stream, &P);
    GANFAST_LAUNCH(static_cast<unsigned int>(g.C), kThreads, 0, stream, finalize_backward_kernel<acc_t>)(
        partial.const_data_ptr<acc_t>(), g.C, P, M, ch, training && per_sample == nullptr,
        grad_weight.mutable_data_ptr<acc_t>(), grad_bias.mutable_data_ptr<acc_t>(), coef.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (g.n == 0) return;
    const BcastRef<acc_t> cref = channel_ref<acc_t>(coef, g);
    if (per_sample != nullptr) {
      const int64_t N = per_sample->N, C = per_sample->C;
      if (training && M > 0) {  // p = invstd mean(w dz), q = invstd^2 mean(w dz x_hat) (grad_weight = sum dz x_hat)
        const Tensor wv = w.defined() ? w.view({N, C}) : at::ones({N, C}, copts);
        const Tensor& inv = per_sample->invstd;
        const Tensor m1 = (wv * grad_bias.view({N, C})).sum(0) / static_cast<double>(M);
        const Tensor m2 = (wv * grad_weight.view({N, C})).sum(0) / static_cast<double>(M);
        coef[4].copy_((inv * m1).repeat({N}));
        coef[5].copy_((inv * inv * m2).repeat({N}));
      }
      dispatch_bool(is_aligned(xp) && is_aligned(gp) && is_aligned(op_), [&](auto aligned) {
        constexpr int V = decltype(aligned)::value ? kVec<scalar_t> : 1;
        using Map = ChannelMap<scalar_t, V, PerSampleGradInputOp<acc_t, A>>;
        launch_elementwise(Map{xp, gp, op_, cref, g.n, {static_cast<acc_t>(alpha)}}, device, stream);
      });
      return;
    }
    dispatch_bool(is_aligned(xp) && is_aligned(gp) && is_aligned(op_), [&](auto aligned) {
      constexpr int V = decltype(aligned)::value ? kVec<scalar_t> : 1;
      launch_elementwise(
          ChannelMap<scalar_t, V, GradInputOp<acc_t, A>>{xp, gp, op_, cref, g.n, {static_cast<acc_t>(alpha)}}, device,
          stream);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The ops
// ---------------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor> batch_norm_act(const Tensor& input, const std::optional<Tensor>& weight,
                                                  const std::optional<Tensor>& bias,
                                                  const std::optional<Tensor>& running_mean,
                                                  const std::optional<Tensor>& running_var, bool training,
                                                  double momentum, double eps, c10::string_view act_name,
                                                  double alpha) {
  constexpr const char* op = "ganfast::batch_norm_act";
  const int64_t M = check_batch_norm_act(op, input, weight, bias, running_mean, running_var, training, eps);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const bool per_sample = batch_norm_per_sample(weight, bias);
  // Per sample (conditional BatchNorm): the statistics by channel over NCHW-contiguous x without the
  // affine parameters, then the elementwise pass over the instance view (1, N * C, S) with
  // per-instance coefficients.
  const auto [act, x, g, compute, copts, w_op, b_op, stream, device] =
      setup(op, per_sample ? input.contiguous() : input, M, weight, bias, act_name);
  const Tensor w = per_sample ? Tensor() : w_op, b = per_sample ? Tensor() : b_op;
  Tensor out = at::empty_like(x);
  Tensor save_mean = at::empty({g.C}, copts), save_invstd = at::empty({g.C}, copts);
  if (g.C == 0) return {out, save_mean, save_invstd};
  Tensor coef = at::empty({2, g.C}, copts);
  // The running statistics are updated in place where they are compute-dtype and contiguous (the
  // usual float32 buffers), else through a compute-dtype copy written back.
  const bool has_running = running_mean.has_value() && running_mean->defined();
  Tensor rm, rv;
  bool write_back = false;
  if (has_running) {
    const bool direct = running_mean->scalar_type() == compute && running_mean->is_contiguous() &&
                        running_var->is_contiguous();
    rm = direct ? *running_mean : running_mean->to(compute).contiguous().clone();
    rv = direct ? *running_var : running_var->to(compute).contiguous().clone();
    write_back = !direct && training && M > 0;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ganfast_batch_norm_act_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (training) {
      RunningStats<acc_t> rs;
      if (has_running && M > 0) {
        rs.mean = rm.mutable_data_ptr<acc_t>();
        rs.var = rv.mutable_data_ptr<acc_t>();
        rs.momentum = momentum;
      }
      launch_statistics<scalar_t, acc_t>(op, x, g, M, w, b, 0, rs, eps, save_mean, save_invstd, coef, stream);
    } else {
      GANFAST_LAUNCH(static_cast<unsigned int>(ceil_div(g.C, kThreads)), kThreads, 0, stream, finalize_eval_kernel<acc_t>)(
          g.C, rm.const_data_ptr<acc_t>(), rv.const_data_ptr<acc_t>(), ptr_or_null<acc_t>(w), ptr_or_null<acc_t>(b),
          eps, save_mean.mutable_data_ptr<acc_t>(), save_invstd.mutable_data_ptr<acc_t>(),
          coef.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (write_back) {
    running_mean->copy_(rm);
    running_var->copy_(rv);
  }
  if (g.n == 0) return {out, save_mean, save_invstd};
  if (per_sample) {
    // coef [2][N * C]: scale = w[n, c] invstd[c], shift = b[n, c] - mean[c] scale (tiny torch ops on the stream)
    const int64_t N = x.size(0), C = g.C;
    const Tensor inv = save_invstd.expand({N, C});
    const Tensor scale = w_op.defined() ? (w_op.dim() == 2 ? w_op : w_op.expand({N, C})) * inv : inv;
    Tensor shift = -save_mean.expand({N, C}) * scale;
    if (b_op.defined()) shift = shift + (b_op.dim() == 2 ? b_op : b_op.expand({N, C}));
    const Tensor icoef = at::stack({scale.reshape({N * C}), shift.reshape({N * C})});
    const Tensor xi = instance_view(x);
    Tensor out_i = out.view(xi.sizes());
    launch_normalize(xi, out_i, channel_geometry(xi, 1, instance_norm_spatial_size(x)), icoef, act, alpha, device,
                     stream);
    return {out, save_mean, save_invstd};
  }
  launch_normalize(x, out, g, coef, act, alpha, device, stream);
  return {out, save_mean, save_invstd};
}

// batch_norm_act_backward with a per-sample weight or bias: launch_backward over the instance view
// (1, N * C, S) of NCHW-contiguous x, every operand per instance, then each parameter gradient in its
// operand's shape ((N, C), or summed over the samples: (C,)).
std::tuple<Tensor, Tensor, Tensor> batch_norm_act_backward_per_sample(
    const char* op, const Tensor& grad_output, const Tensor& input, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& bias, const Tensor& save_mean, const Tensor& save_invstd, bool training,
    c10::string_view act_name, double alpha, int64_t M) {
  const int64_t N = input.size(0), C = input.size(1);
  const Tensor xc = input.contiguous();
  // the geometry of the view: S values per instance (M = N S per channel is the centring's count)
  const auto [act, x, g, compute, copts, w_op, b_op, stream, device] =
      setup(op, instance_view(xc), instance_norm_spatial_size(xc), weight, bias, act_name);
  const auto param_dtype = weight.has_value() && weight->defined() ? weight->scalar_type() : input.scalar_type();
  auto per_instance = [&](const Tensor& t) {
    return !t.defined() ? t : (t.dim() == 2 ? t.reshape({N * C}) : t.repeat({N}));
  };
  auto fold = [&](const Tensor& grad, const std::optional<Tensor>& t) {
    const bool ps = t.has_value() && t->defined() && t->dim() == 2;
    return (ps ? grad.view({N, C}) : grad.view({N, C}).sum(0)).to(param_dtype);
  };
  Tensor grad_input = at::empty_like(x);
  Tensor grad_weight = at::empty({g.C}, copts), grad_bias = at::empty({g.C}, copts);
  if (g.C > 0) {
    const Tensor gx = instance_view(grad_output.to(x.scalar_type()).contiguous());
    const Tensor sm = save_mean.to(compute).contiguous(), si = save_invstd.to(compute).contiguous();
    PerSample ps;
    ps.N = N;
    ps.C = C;
    ps.invstd = si;
    launch_backward(op, x, gx, grad_input, g, M, training, per_instance(w_op), per_instance(b_op), 0, sm.repeat({N}),
                    si.repeat({N}), act, alpha, grad_weight, grad_bias, copts, device, stream, &ps);
  }
  return {grad_input.view(input.sizes()), fold(grad_weight, weight), fold(grad_bias, bias)};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_act_backward(const Tensor& grad_output, const Tensor& input,
                                                           const std::optional<Tensor>& weight,
                                                           const std::optional<Tensor>& bias,
                                                           const Tensor& save_mean, const Tensor& save_invstd,
                                                           bool training, c10::string_view act_name, double alpha) {
  constexpr const char* op = "ganfast::batch_norm_act_backward";
  const int64_t M = check_batch_norm_act_backward(op, grad_output, input, weight, bias, save_mean, save_invstd);
  const c10::cuda::CUDAGuard device_guard(input.device());
  if (batch_norm_per_sample(weight, bias))
    return batch_norm_act_backward_per_sample(op, grad_output, input, weight, bias, save_mean, save_invstd, training,
                                              act_name, alpha, M);
  const auto [act, x, g, compute, copts, w, b, stream, device] = setup(op, input, M, weight, bias, act_name);
  const auto param_dtype = weight.has_value() && weight->defined() ? weight->scalar_type() : input.scalar_type();
  Tensor grad_input = at::empty_like(x);
  Tensor grad_weight = at::empty({g.C}, copts), grad_bias = at::empty({g.C}, copts);
  if (g.C == 0) return {grad_input, grad_weight.to(param_dtype), grad_bias.to(param_dtype)};
  launch_backward(op, x, to_layout_of(grad_output, x), grad_input, g, M, training, w, b, 0, save_mean.contiguous(),
                  save_invstd.contiguous(), act, alpha, grad_weight, grad_bias, copts, device, stream);
  return {grad_input, grad_weight.to(param_dtype), grad_bias.to(param_dtype)};
}

// instance_norm_act: the launches above over the view (1, N * C, S) of the contiguous input (a Rows
// geometry of N * C channels, S > 1; the training statistics without running statistics), the
// affine parameters at k % C.
std::tuple<Tensor, Tensor, Tensor> instance_norm_act(const Tensor& input, const std::optional<Tensor>& weight,
                                                     const std::optional<Tensor>& bias, double eps,
                                                     c10::string_view act_name, double alpha) {
  constexpr const char* op = "ganfast::instance_norm_act";
  const int64_t S = check_instance_norm_act(op, input, weight, bias, eps);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const int64_t C = input.size(1);
  const auto [act, x, g, compute, copts, w, b, stream, device] =
      setup(op, instance_view(input.contiguous()), S, weight, bias, act_name);
  Tensor out = at::empty_like(x);
  Tensor save_mean = at::empty({g.C}, copts), save_invstd = at::empty({g.C}, copts);
  if (g.C == 0) return {out.view(input.sizes()), save_mean, save_invstd};
  Tensor coef = at::empty({2, g.C}, copts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ganfast_instance_norm_act_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_statistics<scalar_t, acc_t>(op, x, g, S, w, b, C, RunningStats<acc_t>{}, eps, save_mean, save_invstd, coef,
                                       stream);
  });
  if (g.n > 0) launch_normalize(x, out, g, coef, act, alpha, device, stream);
  return {out.view(input.sizes()), save_mean, save_invstd};
}

std::tuple<Tensor, Tensor, Tensor> instance_norm_act_backward(const Tensor& grad_output, const Tensor& input,
                                                              const std::optional<Tensor>& weight,
                                                              const std::optional<Tensor>& bias,
                                                              const Tensor& save_mean, const Tensor& save_invstd,
                                                              c10::string_view act_name, double alpha) {
  constexpr const char* op = "ganfast::instance_norm_act_backward";
  const int64_t S = check_instance_norm_act_backward(op, grad_output, input, weight, bias, save_mean, save_invstd);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const int64_t N = input.size(0), C = input.size(1);
  const auto [act, x, g, compute, copts, w, b, stream, device] =
      setup(op, instance_view(input.contiguous()), S, weight, bias, act_name);
  const auto param_dtype = weight.has_value() && weight->defined() ? weight->scalar_type() : input.scalar_type();
  Tensor grad_input = at::empty_like(x);
  // per instance (N * C), in the compute dtype; summed over the samples below
  Tensor grad_weight = at::empty({g.C}, copts), grad_bias = at::empty({g.C}, copts);
  if (g.C > 0) {
    const Tensor gx = instance_view(grad_output.to(x.scalar_type()).contiguous());
    launch_backward(op, x, gx, grad_input, g, S, true, w, b, C, save_mean.contiguous(), save_invstd.contiguous(), act,
                    alpha, grad_weight, grad_bias, copts, device, stream);
  }
  // The (N, C) -> (C) sum of the per-instance weight / bias gradients: a tiny torch reduction over
  // the samples on the stream (no atomics, no host synchronisation), not folded into the finalize
  // (that would need a second last-block level over the instances of each channel).
  return {grad_input.view(input.sizes()), grad_weight.view({N, C}).sum(0).to(param_dtype),
          grad_bias.view({N, C}).sum(0).to(param_dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CUDA, m) {
  m.impl("batch_norm_act", &batch_norm_act);
  m.impl("batch_norm_act_backward", &batch_norm_act_backward);
  m.impl("instance_norm_act", &instance_norm_act);
  m.impl("instance_norm_act_backward", &instance_norm_act_backward);
}

}  // namespace ganfast::cuda
