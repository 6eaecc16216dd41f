// CPU kernels of the info_loss family (InfoGAN's mutual-information loss). The math is
// csrc/gan_math.h's (info_gauss, exp_nonpos, exp_neg); the argument checks csrc/ganfast_common.h's
// (check_info_loss, shared with csrc/cuda/info_loss.cu); the loops cpu_loops.h's.
//
// Forward: the categorical rows (logsumexp - x_c, log-softmax in registers, compute type float for
// half inputs, double for float64) are summed over fixed pieces of rows, pieces in parallel where
// the logits are large, then the pieces added in order in double; the Gaussian terms are one
// chunked_sum. value = (cat_weight * sum_cat + cont_weight * sum_cont) / B, in double, rounded
// once: the same for any thread count. B = 0 gives 0 / 0 = NaN, as torch's mean of nothing.
// Backward: one pass over the rows (each row's max and sum of exponentials again, then its K
// gradients), one elementwise pass over the continuous codes.
// Class indices outside [0, K) raise IndexError here (reading CPU memory costs no sync).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../ganfast_common.h"
#include "cpu_loops.h"

namespace ganfast::cpu {
namespace {

using at::Tensor;

// Class indices in [0, K): the first one outside raises, naming its index.
void check_codes_in_range(const char* op, const InfoOperands& o) {
  if (!o.has_cat) return;
  const int64_t* c = o.cat_codes.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < o.B; ++b) {
    TORCH_CHECK_INDEX(c[b] >= 0 && c[b] < o.K, op, ": cat_codes must be class indices in [0, K) = [0, ", o.K,
                      "); got ", c[b], " at index ", b);
  }
}

// m = max_k x_k and s = sum_k e^(x_k - m) of one row (NaN in the row: s NaN).
template <typename scalar_t, typename acc_t>
GANFAST_CPU_CLONES void row_max_sum(const scalar_t* x, int64_t K, acc_t& m, acc_t& s) {
  acc_t mx = static_cast<acc_t>(x[0]);
  for (int64_t k = 1; k < K; ++k) mx = math::max_ignoring_nan(mx, static_cast<acc_t>(x[k]));
  acc_t sum = 0;
  for (int64_t k = 0; k < K; ++k) sum += math::exp_nonpos(static_cast<acc_t>(x[k]) - mx);
  m = mx;
  s = sum;
}

// Rows per piece of the categorical reduction: about kChunk logits, at least one row.
inline int64_t rows_per_piece(int64_t K) { return std::max<int64_t>(1, kChunk / std::max<int64_t>(K, 1)); }

template <typename scalar_t>
double cat_sum(const InfoOperands& o) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = o.cat_logits.const_data_ptr<scalar_t>();
  const int64_t* c = o.cat_codes.const_data_ptr<int64_t>();
  const int64_t K = o.K, rows = rows_per_piece(K);
  const int64_t pieces = (o.B + rows - 1) / rows;
  std::vector<double> partial(static_cast<size_t>(pieces), 0.0);
  auto piece = [&](int64_t p) {
    double total = 0;
    for (int64_t b = p * rows, e = std::min(o.B, (p + 1) * rows); b < e; ++b) {
      const scalar_t* row = x + b * K;
      acc_t m, s;
      row_max_sum(row, K, m, s);
      total += static_cast<double>(m + std::log(s) - static_cast<acc_t>(row[c[b]]));
    }
    partial[p] = total;
  };
  if (pieces == 1) {
    piece(0);
  } else {
    at::parallel_for(0, pieces, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) piece(p);
    });
  }
  double total = 0;
  for (double v : partial) total += v;
  return total;
}

template <typename scalar_t>
double cont_sum(const InfoOperands& o) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* mu = o.cont_mean.const_data_ptr<scalar_t>();
  const scalar_t* cc = o.cont_codes.const_data_ptr<scalar_t>();
  const int64_t n = o.B * o.J;
  if (o.has_logstd) {
    const scalar_t* ls = o.cont_logstd.const_data_ptr<scalar_t>();
    return chunked_sum<acc_t>(n, [&](int64_t i) {
      return math::info_gauss(static_cast<acc_t>(cc[i]), static_cast<acc_t>(mu[i]), static_cast<acc_t>(ls[i]), true);
    });
  }
  return chunked_sum<acc_t>(n, [&](int64_t i) {
    return math::info_gauss(static_cast<acc_t>(cc[i]), static_cast<acc_t>(mu[i]), acc_t(0), false);
  });
}

Tensor info_loss(const std::optional<Tensor>& cat_logits, const std::optional<Tensor>& cat_codes,
                 const std::optional<Tensor>& cont_mean, const std::optional<Tensor>& cont_codes,
                 const std::optional<Tensor>& cont_logstd, double cat_weight, double cont_weight) {
  constexpr const char* op = "ganfast::info_loss";
  const InfoOperands o = check_info_loss(op, cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight,
                                         cont_weight);
  check_codes_in_range(op, o);
  Tensor out = at::empty({}, o.like.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.like.scalar_type(), "ganfast_info_loss", [&] {
    double total = 0;
    if (o.has_cat) total += cat_weight * cat_sum<scalar_t>(o);
    if (o.has_cont) total += cont_weight * cont_sum<scalar_t>(o);
    *out.data_ptr<scalar_t>() = static_cast<scalar_t>(total / static_cast<double>(o.B));  // B = 0: NaN
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
  check_codes_in_range(op, o);
  Tensor grad_x = info_grad_like(o.cat_logits, o.like);
  Tensor grad_mu = info_grad_like(o.cont_mean, o.like);
  Tensor grad_cc = info_grad_like(o.cont_codes, o.like);
  Tensor grad_ls = info_grad_like(o.cont_logstd, o.like);
  if (o.B == 0) return {grad_x, grad_mu, grad_cc, grad_ls};
  // CPU memory: no sync; rounded to the operands' dtype first, as the CUDA kernel reads it
  const double g = grad_output.reshape({}).to(o.like.scalar_type()).to(at::kDouble).item<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.like.scalar_type(), "ganfast_info_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (o.has_cat) {
      const acc_t scale = static_cast<acc_t>(g * cat_weight / static_cast<double>(o.B));
      const scalar_t* x = o.cat_logits.const_data_ptr<scalar_t>();
      const int64_t* c = o.cat_codes.const_data_ptr<int64_t>();
      scalar_t* gx = grad_x.data_ptr<scalar_t>();
      const int64_t K = o.K;
      at::parallel_for(0, o.B, rows_per_piece(K), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const scalar_t* row = x + b * K;
          scalar_t* grow = gx + b * K;
          acc_t m, s;
          row_max_sum(row, K, m, s);
          const acc_t r = scale / s;
          for_range(0, K, [&](int64_t k) {
            grow[k] = static_cast<scalar_t>(r * math::exp_nonpos(static_cast<acc_t>(row[k]) - m));
          });
          grow[c[b]] = static_cast<scalar_t>(r * math::exp_nonpos(static_cast<acc_t>(row[c[b]]) - m) - scale);
        }
      });
    }
    if (o.has_cont) {
      const acc_t scale = static_cast<acc_t>(g * cont_weight / static_cast<double>(o.B));
      const scalar_t* mu = o.cont_mean.const_data_ptr<scalar_t>();
      const scalar_t* cc = o.cont_codes.const_data_ptr<scalar_t>();
      scalar_t* gmu = grad_mu.data_ptr<scalar_t>();
      scalar_t* gcc = grad_cc.data_ptr<scalar_t>();
      const int64_t n = o.B * o.J;
      if (o.has_logstd) {
        const scalar_t* ls = o.cont_logstd.const_data_ptr<scalar_t>();
        scalar_t* gls = grad_ls.data_ptr<scalar_t>();
        chunked_for(n, [&](int64_t i) {
          acc_t dmu, dls;
          math::info_gauss_grad(static_cast<acc_t>(cc[i]), static_cast<acc_t>(mu[i]), static_cast<acc_t>(ls[i]), true,
                                dmu, dls);
          gmu[i] = static_cast<scalar_t>(scale * dmu);
          gcc[i] = static_cast<scalar_t>(-(scale * dmu));
          gls[i] = static_cast<scalar_t>(scale * dls);
        });
      } else {
        chunked_for(n, [&](int64_t i) {
          acc_t dmu, dls;
          math::info_gauss_grad(static_cast<acc_t>(cc[i]), static_cast<acc_t>(mu[i]), acc_t(0), false, dmu, dls);
          gmu[i] = static_cast<scalar_t>(scale * dmu);
          gcc[i] = static_cast<scalar_t>(-(scale * dmu));
        });
      }
    }
  });
  return {grad_x, grad_mu, grad_cc, grad_ls};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("info_loss", &info_loss);
  m.impl("info_loss_backward", &info_loss_backward);
}

}  // namespace ganfast::cpu
