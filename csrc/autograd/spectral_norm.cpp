// autograd/spectral_norm.cpp: the derivative of spectral_norm, first order.
//
// (out, cache) = spectral_norm(weight, u, v, ...). out = weight / sigma is differentiable w.r.t.
// weight only: u and v are the power method's state, constants of the derivative (torch clones them
// for its sigma), mutated in place in training (their version counters are bumped here, as the
// ADInplaceOrView kernel of an ATen op would). cache = [sigma, u, v] as used, never differentiated,
// saved by the node: a second forward that updates u and v before this backward runs (D(real), then
// D(fake)) does not change this one's gradient. spectral_norm_backward gets autograd's
// not-implemented fallback: double backward raises "derivative for ganfast::spectral_norm_backward
// is not implemented" (first order is what R1 / WGAN-GP on a spectrally normalised D need: their
// double backward goes through the convolutions, not through the normalisation of the weights).
#include "autograd_common.h"

#include <torch/csrc/autograd/variable.h>

namespace ganfast::autograd {
namespace {

using SnSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t, double, bool);
using SnBwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t);

struct SpectralNormBackward : public Node {
  SavedVariable weight, cache;
  int64_t dim = 0;
  std::string name() const override { return "ganfast::SpectralNormBackward"; }
  void release_variables() override {
    weight.reset_data();
    cache.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined() || !task_should_compute_output(0)) return variable_list(1);
    static const auto op = find_op<SnBwdSig>("ganfast::spectral_norm_backward");
    return {op.call(grads[0], weight.unpack(), cache.unpack(), dim)};
  }
};

std::tuple<Tensor, Tensor> spectral_norm_autograd(const Tensor& weight, const Tensor& u, const Tensor& v, int64_t dim,
                                                  int64_t n_power_iterations, double eps, bool training) {
  TORCH_CHECK(!u.requires_grad() && !v.requires_grad(), "ganfast::spectral_norm: u and v are the power method's "
              "state (buffers, updated in place) and must not require grad");
  static const auto op = find_op<SnSig>("ganfast::spectral_norm");
  std::tuple<Tensor, Tensor> result;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    result = op.call(weight, u, v, dim, n_power_iterations, eps, training);
  }
  if (training) {
    torch::autograd::impl::bump_version(u);
    torch::autograd::impl::bump_version(v);
  }
  if (torch::autograd::compute_requires_grad(weight)) {
    auto node = make_node<SpectralNormBackward>();
    node->weight = SavedVariable(weight, false);
    node->cache = SavedVariable(std::get<1>(result), false);
    node->dim = dim;
    record(node, std::get<0>(result), weight);
  }
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, Autograd, m) {
  m.impl("spectral_norm", &spectral_norm_autograd);
  m.impl("spectral_norm_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace ganfast::autograd
