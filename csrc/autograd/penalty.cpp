// autograd/penalty.cpp: the derivatives of the penalty family, of every order training needs.
//
//   interpolate           -> interpolate_backward; that op is linear in its input, so its own
//                            derivative is interpolate again: every order.
//   penalty_from_grad     -> penalty_from_grad_backward (its `norms` output is a cache, not
//                            differentiable) -> penalty_from_grad_double_backward, which
//                            accounts for norms = ||grad|| -> third order: a clear error
//                            (autograd's not-implemented fallback).
#include "autograd_common.h"

namespace ganfast::autograd {
namespace {

// ---- interpolate ----

using InterpSig = Tensor(const Tensor&, const Tensor&, const Tensor&);
using InterpBwdSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&);

struct InterpolateBackward : public Node {
  SavedVariable eps;
  std::string name() const override { return "ganfast::InterpolateBackward"; }
  void release_variables() override { eps.reset_data(); }
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return variable_list(2);
    static const auto op = find_op<InterpBwdSig>("ganfast::interpolate_backward");
    auto [grad_real, grad_fake] = op.call(grads[0], eps.unpack());
    variable_list out(2);
    if (task_should_compute_output(0)) out[0] = std::move(grad_real);
    if (task_should_compute_output(1)) out[1] = std::move(grad_fake);
    return out;
  }
};

// The derivative of interpolate_backward (g -> (eps g, (1 - eps) g)) is interpolate itself.
struct InterpolateBackwardBackward : public Node {
  SavedVariable eps;
  std::string name() const override { return "ganfast::InterpolateBackwardBackward"; }
  void release_variables() override { eps.reset_data(); }
  variable_list apply(variable_list&& grads) override {
    const Tensor& gr = grads[0];
    const Tensor& gf = grads[1];
    if (!gr.defined() && !gf.defined()) return variable_list(1);
    static const auto op = find_op<InterpSig>("ganfast::interpolate");
    return {op.call(gr.defined() ? gr : at::zeros_like(gf), gf.defined() ? gf : at::zeros_like(gr), eps.unpack())};
  }
};

void refuse_eps_gradient(const Tensor& eps) {
  TORCH_CHECK(!(eps.requires_grad() && at::GradMode::is_enabled()),
              "ganfast::interpolate: the gradient with respect to eps is not supported; pass eps.detach()");
}

Tensor interpolate_autograd(const Tensor& real, const Tensor& fake, const Tensor& eps) {
  static const auto op = find_op<InterpSig>("ganfast::interpolate");
  refuse_eps_gradient(eps);
  Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = op.call(real, fake, eps);
  }
  if (torch::autograd::compute_requires_grad(real, fake)) {
    auto node = make_node<InterpolateBackward>();
    node->eps = SavedVariable(eps, false);
    record(node, out, real, fake);
  }
  return out;
}

std::tuple<Tensor, Tensor> interpolate_backward_autograd(const Tensor& grad_output, const Tensor& eps) {
  static const auto op = find_op<InterpBwdSig>("ganfast::interpolate_backward");
  refuse_eps_gradient(eps);
  Tensor grad_real, grad_fake;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::tie(grad_real, grad_fake) = op.call(grad_output, eps);
  }
  if (torch::autograd::compute_requires_grad(grad_output)) {
    auto node = make_node<InterpolateBackwardBackward>();
    node->eps = SavedVariable(eps, false);
    node->set_next_edges(torch::autograd::collect_next_edges(grad_output));
    torch::autograd::set_history(grad_real, node);
    torch::autograd::set_history(grad_fake, node);
  }
  return {grad_real, grad_fake};
}

// ---- penalty_from_grad ----

using PenaltySig = std::tuple<Tensor, Tensor>(const Tensor&, c10::string_view, double);
using PenaltyBwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, c10::string_view, double);
using PenaltyBwd2Sig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                  c10::string_view, double);

struct PenaltyFromGradBackward : public Node {
  SavedVariable grad, norms;
  std::string kind;
  double center = 1.0;
  std::string name() const override { return "ganfast::PenaltyFromGradBackward"; }
  void release_variables() override {
    grad.reset_data();
    norms.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return variable_list(1);
    static const auto op = find_op<PenaltyBwdSig>("ganfast::penalty_from_grad_backward");
    return {op.call(grads[0], grad.unpack(), norms.unpack(), kind, center)};
  }
};

// The derivative of penalty_from_grad_backward w.r.t. grad_output and grad (norms is ||grad||,
// accounted for inside penalty_from_grad_double_backward).
struct PenaltyFromGradBackwardBackward : public Node {
  SavedVariable grad_output, grad, norms;
  std::string kind;
  double center = 1.0;
  std::string name() const override { return "ganfast::PenaltyFromGradBackwardBackward"; }
  void release_variables() override {
    grad_output.reset_data();
    grad.reset_data();
    norms.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return variable_list(2);
    static const auto op = find_op<PenaltyBwd2Sig>("ganfast::penalty_from_grad_double_backward");
    auto [d_grad_output, d_grad] = op.call(grads[0], grad_output.unpack(), grad.unpack(), norms.unpack(), kind, center);
    variable_list out(2);
    if (task_should_compute_output(0)) out[0] = std::move(d_grad_output);
    if (task_should_compute_output(1)) out[1] = std::move(d_grad);
    return out;
  }
};

std::tuple<Tensor, Tensor> penalty_from_grad_autograd(const Tensor& grad, c10::string_view kind, double center) {
  static const auto op = find_op<PenaltySig>("ganfast::penalty_from_grad");
  Tensor penalty, norms;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::tie(penalty, norms) = op.call(grad, kind, center);
  }
  if (torch::autograd::compute_requires_grad(grad)) {
    auto node = make_node<PenaltyFromGradBackward>();
    node->grad = SavedVariable(grad, false);
    node->norms = SavedVariable(norms, false);  // not differentiable: no history of its own
    node->kind = std::string(kind);
    node->center = center;
    record(node, penalty, grad);
  }
  return {penalty, norms};
}

Tensor penalty_from_grad_backward_autograd(const Tensor& grad_output, const Tensor& grad, const Tensor& norms,
                                           c10::string_view kind, double center) {
  static const auto op = find_op<PenaltyBwdSig>("ganfast::penalty_from_grad_backward");
  Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = op.call(grad_output, grad, norms, kind, center);
  }
  if (torch::autograd::compute_requires_grad(grad_output, grad)) {
    auto node = make_node<PenaltyFromGradBackwardBackward>();
    node->grad_output = SavedVariable(grad_output, false);
    node->grad = SavedVariable(grad, false);
    node->norms = SavedVariable(norms.detach(), false);
    node->kind = std::string(kind);
    node->center = center;
    record(node, out, grad_output, grad);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, Autograd, m) {
  m.impl("interpolate", &interpolate_autograd);
  m.impl("interpolate_backward", &interpolate_backward_autograd);
  m.impl("penalty_from_grad", &penalty_from_grad_autograd);
  m.impl("penalty_from_grad_backward", &penalty_from_grad_backward_autograd);
  m.impl("penalty_from_grad_double_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace ganfast::autograd
