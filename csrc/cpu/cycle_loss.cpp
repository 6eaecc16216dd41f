// CPU kernels of the cycle_loss family (CycleGAN's cycle-consistency / identity L1 loss over a list
// of (reconstructed, original) pairs). The math is csrc/gan_math.h's (l1_term, l1_sign); the
// argument handling ganfast_common.h's (check_cycle_loss, make_cycle_pairs: shared with
// csrc/cuda/cycle_loss.cu); the loops cpu_loops.h's, the same ones the losses family runs:
//  * forward: per pair, chunked_sum of |r - o| (16 float lanes per fixed 16384-element chunk,
//    chunks in parallel, the chunk partials added in order in double), divided by the pair's numel
//    in double; the pairs' means added in list order, times weight. The same result for any
//    thread count.
//  * backward: per pair, one chunked_for writing grad_r = s * sign(r - o) and/or grad_o = -grad_r,
//    s = grad_output * (weight / numel) in the compute type.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../ganfast_common.h"
#include "cpu_alloc.h"
#include "cpu_loops.h"

namespace ganfast::cpu {
namespace {

using at::Tensor;

Tensor cycle_loss(at::TensorList reconstructed, at::TensorList original, double weight) {
  constexpr const char* op = "ganfast::cycle_loss";
  check_cycle_loss(op, reconstructed, original, weight);
  const auto pairs = make_cycle_pairs(reconstructed, original);
  Tensor out = at::empty({}, reconstructed[0].options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "ganfast_cycle_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    double total = 0;
    for (const auto& p : pairs) {
      const scalar_t* r = p.r.const_data_ptr<scalar_t>();
      const scalar_t* o = p.o.const_data_ptr<scalar_t>();
      const double s = chunked_sum<acc_t>(p.n, [&](int64_t i) {
        return math::l1_term(static_cast<acc_t>(r[i]), static_cast<acc_t>(o[i]));
      });
      total += s / static_cast<double>(p.n);  // the mean of nothing is NaN, as F.l1_loss's
    }
    *out.data_ptr<scalar_t>() = static_cast<scalar_t>(total * weight);
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
  const Tensor grad = grad_output.reshape({}).to(reconstructed[0].scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "ganfast_cycle_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t g = static_cast<acc_t>(*grad.const_data_ptr<scalar_t>());
    for (const auto& p : pairs) {
      Tensor yr = grad_reconstructed ? empty_output_like(p.r) : Tensor();
      Tensor yo = grad_original ? empty_output_like(p.o) : Tensor();
      const scalar_t* r = p.r.const_data_ptr<scalar_t>();
      const scalar_t* o = p.o.const_data_ptr<scalar_t>();
      const acc_t s = g * static_cast<acc_t>(weight / static_cast<double>(p.n));
      if (grad_reconstructed && grad_original) {
        scalar_t* dr = yr.data_ptr<scalar_t>();
        scalar_t* dor = yo.data_ptr<scalar_t>();
        chunked_for(p.n, [&](int64_t i) {
          const acc_t d = s * math::l1_sign(static_cast<acc_t>(r[i]), static_cast<acc_t>(o[i]));
          dr[i] = static_cast<scalar_t>(d);
          dor[i] = static_cast<scalar_t>(-d);
        });
      } else if (grad_reconstructed) {
        scalar_t* dr = yr.data_ptr<scalar_t>();
        chunked_for(p.n, [&](int64_t i) {
          dr[i] = static_cast<scalar_t>(s * math::l1_sign(static_cast<acc_t>(r[i]), static_cast<acc_t>(o[i])));
        });
      } else {
        scalar_t* dor = yo.data_ptr<scalar_t>();
        chunked_for(p.n, [&](int64_t i) {
          dor[i] = static_cast<scalar_t>(-(s * math::l1_sign(static_cast<acc_t>(r[i]), static_cast<acc_t>(o[i]))));
        });
      }
      if (grad_reconstructed) grad_r.push_back(std::move(yr));
      if (grad_original) grad_o.push_back(std::move(yo));
    }
  });
  return {grad_r, grad_o};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("cycle_loss", &cycle_loss);
  m.impl("cycle_loss_backward", &cycle_loss_backward);
}

}  // namespace ganfast::cpu
