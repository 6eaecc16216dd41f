// CPU kernels of the spectral_norm family (torch.nn.utils.parametrizations.spectral_norm, fused). The
// math is csrc/gan_math.h's (sn_norm_denominator, sn_sigma_from_t, sn_grad); the checks
// csrc/ganfast_common.h's (check_spectral_norm, shared with csrc/cuda/spectral_norm.cu).
//
// weight is read as (A, h, B), the matrix W (h, A * B) of torch's reshape. Per power step:
//  * x = W v: a dot product per row i (over its A runs of B contiguous values), rows in parallel, each
//    in 16 accumulator lanes (vectorised);
//  * t = W^T u: per column block (a, b0..b0+kCols) the rows added in order, u_i * W[a, i, b] (axpy,
//    vectorised), blocks in parallel.
// The norms are summed in double. Training: sigma = ||t||^2 / max(||t||, eps) from the last step (two
// reads of W per step); eval: sigma = u . (W v) (one read). Then out = W / sigma. Backward: one
// reduction <G, W> (chunked_sum: the same for any thread count) and one pass over the rows. Every
// reduction has a fixed order: the results do not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../ganfast_common.h"
#include "cpu_loops.h"

namespace ganfast::cpu {
namespace {

using at::Tensor;

// Columns per block of the W^T u pass: one block's accumulators stay in L1.
constexpr int64_t kCols = 512;

// sum_k w[k] * v[k] in 16 lanes, then the lanes in order.
template <typename scalar_t, typename acc_t>
GANFAST_CPU_CLONES acc_t dot(const scalar_t* w, const acc_t* v, int64_t n) {
  constexpr int kLanes = 16;
  acc_t lanes[kLanes] = {};
  const int64_t blocks = n / kLanes;
  for (int64_t k = 0; k < blocks; ++k) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<acc_t>(w[k * kLanes + l]) * v[k * kLanes + l];
  }
  acc_t s = 0;
  for (int l = 0; l < kLanes; ++l) s += lanes[l];
  for (int64_t k = blocks * kLanes; k < n; ++k) s += static_cast<acc_t>(w[k]) * v[k];
  return s;
}

// t[b] = sum_i u[i] * w[i * stride + b] for b < len, rows added in order.
template <typename scalar_t, typename acc_t>
GANFAST_CPU_CLONES void axpy_rows(const scalar_t* w, const acc_t* u, int64_t h, int64_t stride, int64_t len,
                                  acc_t* t) {
  for (int64_t b = 0; b < len; ++b) t[b] = 0;
  for (int64_t i = 0; i < h; ++i) {
    const acc_t ui = u[i];
    const scalar_t* row = w + i * stride;
    for (int64_t b = 0; b < len; ++b) t[b] += ui * static_cast<acc_t>(row[b]);
  }
}

// x = W v (x of h values).
template <typename scalar_t, typename acc_t>
void mat_vec(const scalar_t* W, const SpectralNormShape& s, const acc_t* v, acc_t* x) {
  const int64_t grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(s.w, 1));
  at::parallel_for(0, s.h, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      acc_t total = 0;
      for (int64_t a = 0; a < s.A; ++a) total += dot(W + (a * s.h + i) * s.B, v + a * s.B, s.B);
      x[i] = total;
    }
  });
}

// t = W^T u (t of w values).
template <typename scalar_t, typename acc_t>
void mat_t_vec(const scalar_t* W, const SpectralNormShape& s, const acc_t* u, acc_t* t) {
  const int64_t per_a = (s.B + kCols - 1) / kCols;
  const int64_t grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(s.h * std::min(s.B, kCols), 1));
  at::parallel_for(0, s.A * per_a, grain, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t a = k / per_a, b0 = (k % per_a) * kCols;
      axpy_rows(W + a * s.h * s.B + b0, u, s.h, s.B, std::min(kCols, s.B - b0), t + a * s.B + b0);
    }
  });
}

template <typename acc_t>
double sum_squares(const acc_t* x, int64_t n) {
  return chunked_sum<acc_t>(n, [&](int64_t i) { return x[i] * x[i]; });
}

std::tuple<Tensor, Tensor> spectral_norm(const Tensor& weight, const Tensor& u, const Tensor& v, int64_t dim,
                                         int64_t n_power_iterations, double eps, bool training) {
  constexpr const char* op = "ganfast::spectral_norm";
  const SpectralNormShape s = check_spectral_norm(op, weight, u, v, dim, n_power_iterations, eps);
  const Tensor W = weight.contiguous();
  Tensor out = at::empty(weight.sizes(), weight.options());
  Tensor cache = at::empty({1 + s.h + s.w}, weight.options().dtype(spectral_norm_compute_dtype(weight.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "ganfast_spectral_norm", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* w = W.const_data_ptr<scalar_t>();
    scalar_t* up = u.data_ptr<scalar_t>();
    scalar_t* vp = v.data_ptr<scalar_t>();
    acc_t* c = cache.data_ptr<acc_t>();
    acc_t* cu = c + 1;        // u, and x = W v before it is normalised
    acc_t* cv = c + 1 + s.h;  // v, and t = W^T u before it is normalised
    const acc_t e = static_cast<acc_t>(eps);
    for (int64_t j = 0; j < s.w; ++j) cv[j] = static_cast<acc_t>(vp[j]);
    acc_t sigma;
    if (training) {
      double tt = 0;
      acc_t denom = 1;
      for (int64_t it = 0; it < n_power_iterations; ++it) {
        if (it > 0) {  // the previous step's v, rounded to the buffer's dtype as torch's normalize(out=v)
          for (int64_t j = 0; j < s.w; ++j) {
            vp[j] = static_cast<scalar_t>(cv[j] / denom);
            cv[j] = static_cast<acc_t>(vp[j]);
          }
        }
        mat_vec(w, s, cv, cu);
        const acc_t du = math::sn_norm_denominator(static_cast<acc_t>(sum_squares(cu, s.h)), e);
        for (int64_t i = 0; i < s.h; ++i) {
          up[i] = static_cast<scalar_t>(cu[i] / du);
          cu[i] = static_cast<acc_t>(up[i]);  // the rounded u is the one used, and stored, as torch's
        }
        mat_t_vec(w, s, cu, cv);
        tt = sum_squares(cv, s.w);
        denom = math::sn_norm_denominator(static_cast<acc_t>(tt), e);
      }
      for (int64_t j = 0; j < s.w; ++j) {
        cv[j] = cv[j] / denom;  // unrounded: sigma = u^T W v holds exactly for the cached v
        vp[j] = static_cast<scalar_t>(cv[j]);
      }
      sigma = math::sn_sigma_from_t(static_cast<acc_t>(tt), denom);
    } else {
      for (int64_t i = 0; i < s.h; ++i) cu[i] = static_cast<acc_t>(up[i]);
      std::vector<acc_t> x(static_cast<size_t>(s.h));
      mat_vec(w, s, cv, x.data());
      double total = 0;
      for (int64_t i = 0; i < s.h; ++i) total += static_cast<double>(cu[i]) * static_cast<double>(x[i]);
      sigma = static_cast<acc_t>(total);
    }
    c[0] = sigma;
    scalar_t* o = out.data_ptr<scalar_t>();
    chunked_for(W.numel(), [&](int64_t i) { o[i] = static_cast<scalar_t>(static_cast<acc_t>(w[i]) / sigma); });
  });
  return {out, cache};
}

Tensor spectral_norm_backward(const Tensor& grad_output, const Tensor& weight, const Tensor& cache, int64_t dim) {
  constexpr const char* op = "ganfast::spectral_norm_backward";
  const SpectralNormShape s = check_spectral_norm_backward(op, grad_output, weight, cache, dim);
  const Tensor W = weight.contiguous();
  const Tensor G = grad_output.contiguous();
  const Tensor C = cache.contiguous();
  Tensor grad = at::empty(weight.sizes(), weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "ganfast_spectral_norm_backward",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* w = W.const_data_ptr<scalar_t>();
    const scalar_t* g = G.const_data_ptr<scalar_t>();
    const acc_t* c = C.const_data_ptr<acc_t>();
    const acc_t sigma = c[0];
    const acc_t* cu = c + 1;
    const acc_t* cv = c + 1 + s.h;
    const double gw = chunked_sum<acc_t>(W.numel(), [&](int64_t i) {
      return static_cast<acc_t>(g[i]) * static_cast<acc_t>(w[i]);
    });
    const acc_t coef = static_cast<acc_t>(gw / static_cast<double>(sigma));  // <G, W / sigma>
    scalar_t* gr = grad.data_ptr<scalar_t>();
    const int64_t rows = s.A * s.h, B = s.B;
    at::parallel_for(0, rows, std::max<int64_t>(1, kChunk / B), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const acc_t ui = cu[r % s.h];
        const acc_t* vrow = cv + (r / s.h) * B;
        const scalar_t* grow = g + r * B;
        scalar_t* out = gr + r * B;
        for_range(0, B, [&](int64_t b) {
          out[b] = static_cast<scalar_t>(math::sn_grad(static_cast<acc_t>(grow[b]), coef, ui, vrow[b], sigma));
        });
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("spectral_norm", &spectral_norm);
  m.impl("spectral_norm_backward", &spectral_norm_backward);
}

}  // namespace ganfast::cpu
