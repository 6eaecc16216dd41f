// autograd/orthogonal_regularization.cpp: the derivative of the orthogonal_regularization family (see
// autograd_common.h for how every family's autograd is written, and why in C++).
//
// One Node for the whole list: its next edges are weights[0..n); its backward is one call of
// orthogonal_regularization_backward with the forward's cache (the masked Grams: no GEMM is redone).
// The cache output is not differentiable (no history). First order only:
// orthogonal_regularization_backward is registered with autograd's not-implemented fallback, so
// differentiating through it raises "derivative for ganfast::orthogonal_regularization_backward is not
// implemented" instead of a wrong (zero) second derivative.
#include "autograd_common.h"

#include <vector>

namespace ganfast::autograd {
namespace {

using OrthoSig = std::tuple<Tensor, Tensor>(at::TensorList, double);
using OrthoBwdSig = std::vector<Tensor>(const Tensor&, at::TensorList, const Tensor&, double);

struct OrthogonalRegularizationBackward : public Node {
  std::vector<SavedVariable> weights;
  SavedVariable cache;
  double beta = 0.0;

  std::string name() const override { return "ganfast::OrthogonalRegularizationBackward"; }
  void release_variables() override {
    for (auto& v : weights) v.reset_data();
    cache.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    const size_t n = weights.size();
    variable_list out(n);
    if (!grads[0].defined()) return out;
    bool any = false;
    for (size_t i = 0; i < n; ++i) any = any || task_should_compute_output(i);
    if (!any) return out;
    static const auto op = find_op<OrthoBwdSig>("ganfast::orthogonal_regularization_backward");
    std::vector<Tensor> w;
    w.reserve(n);
    for (size_t i = 0; i < n; ++i) w.push_back(weights[i].unpack());
    auto g = op.call(grads[0], w, cache.unpack(), beta);
    for (size_t i = 0; i < n; ++i)
      if (task_should_compute_output(i)) out[i] = std::move(g[i]);
    return out;
  }
};

std::tuple<Tensor, Tensor> orthogonal_regularization_autograd(at::TensorList weights, double beta) {
  static const auto op = find_op<OrthoSig>("ganfast::orthogonal_regularization");
  Tensor loss, cache;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::tie(loss, cache) = op.call(weights, beta);
  }
  if (torch::autograd::compute_requires_grad(weights)) {
    auto node = make_node<OrthogonalRegularizationBackward>();
    node->weights.reserve(weights.size());
    for (const auto& t : weights) node->weights.emplace_back(t, false);
    node->cache = SavedVariable(cache, false);  // not differentiable: no history of its own
    node->beta = beta;
    record(node, loss, weights);
  }
  return {loss, cache};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, Autograd, m) {
  m.impl("orthogonal_regularization", &orthogonal_regularization_autograd);
  m.impl("orthogonal_regularization_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace ganfast::autograd
