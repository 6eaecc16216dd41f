// autograd/batch_norm_act.cpp: the derivatives of batch_norm_act, first order.
//
// (out, save_mean, save_invstd) = batch_norm_act(input, weight, bias, running_mean, running_var,
// ...). out is differentiable w.r.t. input, weight and bias; its backward is
// batch_norm_act_backward, one op returning all three gradients (they share the per-channel
// sums; each has its operand's shape: (C,), or (N, C) for conditional BatchNorm's per-sample
// weight / bias, as the backward op returns them). save_mean and save_invstd are the backward's
// cache, never differentiated; the running statistics are mutated in place (their version
// counters are bumped here, as the ADInplaceOrView kernel of an ATen op would), never
// differentiated. batch_norm_act_backward gets autograd's not-implemented fallback: double
// backward raises "derivative for ganfast::batch_norm_act_backward is not implemented", never a
// silently wrong gradient.
//
// instance_norm_act (instance norm: batch_norm_act's kernels over the per-(n, c) axis) has the same
// shape without running statistics: InstanceNormActBackward below, first order only as well.
#include "autograd_common.h"

#include <torch/csrc/autograd/variable.h>

#include "../ganfast_common.h"

namespace ganfast::autograd {
namespace {

using Outputs = std::tuple<Tensor, Tensor, Tensor>;
using BatchNormActSig = Outputs(const Tensor&, const std::optional<Tensor>&, const std::optional<Tensor>&,
                                const std::optional<Tensor>&, const std::optional<Tensor>&, bool, double, double,
                                c10::string_view, double);
using BatchNormActBwdSig = Outputs(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                   const std::optional<Tensor>&, const Tensor&, const Tensor&, bool, c10::string_view,
                                   double);

struct BatchNormActBackward : public Node {
  SavedVariable input, save_mean, save_invstd;
  SavedOptional weight, bias;
  bool training = true;
  std::string act;
  double alpha = 0;
  std::string name() const override { return "ganfast::BatchNormActBackward"; }
  void release_variables() override {
    input.reset_data();
    save_mean.reset_data();
    save_invstd.reset_data();
    weight.reset();
    bias.reset();
  }
  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    if (!grads[0].defined()) return out;
    static const auto op = find_op<BatchNormActBwdSig>("ganfast::batch_norm_act_backward");
    // Through the dispatcher with autograd on: under create_graph the backward op records its
    // not-implemented node, so asking for the next derivative is an error.
    auto [dx, dw, db] = op.call(grads[0], input.unpack(), weight.unpack(), bias.unpack(), save_mean.unpack(),
                                save_invstd.unpack(), training, act, alpha);
    if (task_should_compute_output(0)) out[0] = dx;
    if (weight.present && task_should_compute_output(1)) out[1] = dw;
    if (bias.present && task_should_compute_output(2)) out[2] = db;
    return out;
  }
};

Outputs batch_norm_act_autograd(const Tensor& input, const std::optional<Tensor>& weight,
                                const std::optional<Tensor>& bias, const std::optional<Tensor>& running_mean,
                                const std::optional<Tensor>& running_var, bool training, double momentum, double eps,
                                c10::string_view act, double alpha) {
  static const auto op = find_op<BatchNormActSig>("ganfast::batch_norm_act");
  Outputs result;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    result = op.call(input, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha);
  }
  if (training) {
    for (const auto* r : {&running_mean, &running_var})
      if (r->has_value() && (*r)->defined()) torch::autograd::impl::bump_version(**r);
  }
  const Tensor w_or_undefined = weight.has_value() ? *weight : Tensor();
  const Tensor b_or_undefined = bias.has_value() ? *bias : Tensor();
  if (torch::autograd::compute_requires_grad(input, w_or_undefined, b_or_undefined)) {
    auto node = make_node<BatchNormActBackward>();
    node->input = SavedVariable(input, false);
    node->save_mean = SavedVariable(std::get<1>(result), false);
    node->save_invstd = SavedVariable(std::get<2>(result), false);
    node->weight.save(weight);
    node->bias.save(bias);
    node->training = training;
    node->act = std::string(act);
    node->alpha = alpha;
    record(node, std::get<0>(result), input, w_or_undefined, b_or_undefined);
  }
  return result;
}

using InstanceNormActSig = Outputs(const Tensor&, const std::optional<Tensor>&, const std::optional<Tensor>&, double,
                                   c10::string_view, double);
using InstanceNormActBwdSig = Outputs(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                      const std::optional<Tensor>&, const Tensor&, const Tensor&, c10::string_view,
                                      double);

struct InstanceNormActBackward : public Node {
  SavedVariable input, save_mean, save_invstd;
  SavedOptional weight, bias;
  std::string act;
  double alpha = 0;
  std::string name() const override { return "ganfast::InstanceNormActBackward"; }
  void release_variables() override {
    input.reset_data();
    save_mean.reset_data();
    save_invstd.reset_data();
    weight.reset();
    bias.reset();
  }
  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    if (!grads[0].defined()) return out;
    static const auto op = find_op<InstanceNormActBwdSig>("ganfast::instance_norm_act_backward");
    // Through the dispatcher with autograd on, as BatchNormActBackward: double backward is an error.
    auto [dx, dw, db] = op.call(grads[0], input.unpack(), weight.unpack(), bias.unpack(), save_mean.unpack(),
                                save_invstd.unpack(), act, alpha);
    if (task_should_compute_output(0)) out[0] = dx;
    if (weight.present && task_should_compute_output(1)) out[1] = dw;
    if (bias.present && task_should_compute_output(2)) out[2] = db;
    return out;
  }
};

Outputs instance_norm_act_autograd(const Tensor& input, const std::optional<Tensor>& weight,
                                   const std::optional<Tensor>& bias, double eps, c10::string_view act, double alpha) {
  static const auto op = find_op<InstanceNormActSig>("ganfast::instance_norm_act");
  Outputs result;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    result = op.call(input, weight, bias, eps, act, alpha);
  }
  const Tensor w_or_undefined = weight.has_value() ? *weight : Tensor();
  const Tensor b_or_undefined = bias.has_value() ? *bias : Tensor();
  if (torch::autograd::compute_requires_grad(input, w_or_undefined, b_or_undefined)) {
    auto node = make_node<InstanceNormActBackward>();
    node->input = SavedVariable(input, false);
    node->save_mean = SavedVariable(std::get<1>(result), false);
    node->save_invstd = SavedVariable(std::get<2>(result), false);
    node->weight.save(weight);
    node->bias.save(bias);
    node->act = std::string(act);
    node->alpha = alpha;
    record(node, std::get<0>(result), input, w_or_undefined, b_or_undefined);
  }
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, Autograd, m) {
  m.impl("batch_norm_act", &batch_norm_act_autograd);
  m.impl("batch_norm_act_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("instance_norm_act", &instance_norm_act_autograd);
  m.impl("instance_norm_act_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace ganfast::autograd
