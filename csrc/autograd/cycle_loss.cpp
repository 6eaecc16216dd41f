// autograd/cycle_loss.cpp: the derivatives of the cycle_loss family (see autograd_common.h for how
// every family's autograd is written, and why in C++).
//
// One Node for the whole list: its next edges are reconstructed[0..n) then original[0..n); its
// backward is one call of cycle_loss_backward, told which of the two lists anyone needs (an
// original that is a real image needs no gradient, so its list is not written). First order only:
// cycle_loss_backward is registered with autograd's not-implemented fallback, so differentiating
// through it raises "derivative for ganfast::cycle_loss_backward is not implemented" instead of a
// wrong (zero) second derivative.
#include "autograd_common.h"

#include <vector>

namespace ganfast::autograd {
namespace {

using CycleSig = Tensor(at::TensorList, at::TensorList, double);
using CycleBwdSig = std::tuple<std::vector<Tensor>, std::vector<Tensor>>(const Tensor&, at::TensorList, at::TensorList,
                                                                         double, bool, bool);

struct CycleLossBackward : public Node {
  std::vector<SavedVariable> reconstructed, original;
  double weight = 1.0;

  std::string name() const override { return "ganfast::CycleLossBackward"; }
  void release_variables() override {
    for (auto& v : reconstructed) v.reset_data();
    for (auto& v : original) v.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    const size_t n = reconstructed.size();
    variable_list out(2 * n);
    if (!grads[0].defined()) return out;  // nothing flows back
    bool want_r = false, want_o = false;
    for (size_t i = 0; i < n; ++i) {
      want_r = want_r || task_should_compute_output(i);
      want_o = want_o || task_should_compute_output(n + i);
    }
    if (!want_r && !want_o) return out;
    static const auto op = find_op<CycleBwdSig>("ganfast::cycle_loss_backward");
    std::vector<Tensor> r, o;
    r.reserve(n);
    o.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      r.push_back(reconstructed[i].unpack());
      o.push_back(original[i].unpack());
    }
    auto [grad_r, grad_o] = op.call(grads[0], r, o, weight, want_r, want_o);
    for (size_t i = 0; i < n; ++i) {
      if (want_r && task_should_compute_output(i)) out[i] = std::move(grad_r[i]);
      if (want_o && task_should_compute_output(n + i)) out[n + i] = std::move(grad_o[i]);
    }
    return out;
  }
};

Tensor cycle_loss_autograd(at::TensorList reconstructed, at::TensorList original, double weight) {
  static const auto op = find_op<CycleSig>("ganfast::cycle_loss");
  Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = op.call(reconstructed, original, weight);
  }
  if (torch::autograd::compute_requires_grad(reconstructed, original)) {
    auto node = make_node<CycleLossBackward>();
    node->reconstructed.reserve(reconstructed.size());
    node->original.reserve(original.size());
    for (const auto& t : reconstructed) node->reconstructed.emplace_back(t, false);
    for (const auto& t : original) node->original.emplace_back(t, false);
    node->weight = weight;
    record(node, out, reconstructed, original);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, Autograd, m) {
  m.impl("cycle_loss", &cycle_loss_autograd);
  m.impl("cycle_loss_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace ganfast::autograd
