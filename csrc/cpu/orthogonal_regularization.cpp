// CPU kernels of the orthogonal_regularization family (BigGAN's beta * sum_W ||W W^T (1 - I)||_F^2).
// The math is csrc/gan_math.h's (ortho_term); the checks, the cache layout, the GEMMs and the
// backward are ganfast_common.h's, shared with csrc/cuda/orthogonal_regularization.cu. What is this
// file's own is the fused reduction over every weight's Gram:
//  * per segment (ortho_segments), chunked_sum of ortho_term (16 float lanes per fixed chunk, chunks
//    in parallel, the chunk partials added in order in double), then the diagonal zeroed in the cache
//    (the masked Gram the backward scales); the segments' sums added in list order, times beta. The
//    same result for any thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../ganfast_common.h"
#include "cpu_loops.h"

namespace ganfast::cpu {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor> orthogonal_regularization(at::TensorList weights, double beta) {
  constexpr const char* op = "ganfast::orthogonal_regularization";
  check_orthogonal_regularization(op, weights, beta);
  int64_t total = 0;
  const auto layout = ortho_layout(weights, &total);
  Tensor cache = ortho_grams(weights, layout, total);
  const auto segments = ortho_segments(layout);
  Tensor out = at::empty({}, weights[0].options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "ganfast_orthogonal_regularization", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* x = cache.data_ptr<acc_t>();
    double sum = 0;
    for (const auto& s : segments) {
      acc_t* seg = x + s.offset;
      double part;
      if (s.period > 0) {
        const int64_t period = s.period;
        part = chunked_sum<acc_t>(s.n, [&](int64_t e) { return math::ortho_term(seg[e], e % period == 0); });
        for (int64_t e = 0; e < s.n; e += period) seg[e] = acc_t(0);
      } else {
        part = chunked_sum<acc_t>(s.n, [&](int64_t e) { return math::ortho_term(seg[e], false); });
      }
      sum += s.sign * part;
    }
    *out.data_ptr<scalar_t>() = static_cast<scalar_t>(sum * beta);
  });
  return {out, cache};
}

std::vector<Tensor> orthogonal_regularization_backward(const Tensor& grad_output, at::TensorList weights,
                                                        const Tensor& cache, double beta) {
  return ortho_backward("ganfast::orthogonal_regularization_backward", grad_output, weights, cache, beta);
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("orthogonal_regularization", &orthogonal_regularization);
  m.impl("orthogonal_regularization_backward", &orthogonal_regularization_backward);
}

}  // namespace ganfast::cpu
