// autograd/losses.cpp: the derivatives of the losses family (see autograd_common.h for how
// every family's autograd is written, and why in C++).
//
// The losses family does not promise double backward: its backward ops are registered with
// autograd's not-implemented fallback, so differentiating through them raises
// "derivative for ganfast::..._backward is not implemented" instead of a wrong gradient.
#include "autograd_common.h"

namespace ganfast::autograd {
namespace {

// ---- binary cross-entropy with logits ----

using BceLogitsSig = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                            const std::optional<Tensor>&, c10::string_view);
using BceLogitsBwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
                               const std::optional<Tensor>&, c10::string_view);

struct BceWithLogitsBackward : public Node {
  SavedVariable input, target;
  SavedOptional weight, pos_weight;
  std::string reduction;

  std::string name() const override { return "ganfast::BceWithLogitsBackward"; }
  void release_variables() override {
    input.reset_data();
    target.reset_data();
    weight.reset();
    pos_weight.reset();
  }
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return variable_list(2);  // nothing flows back
    static const auto grad_input_op = find_op<BceLogitsBwdSig>("ganfast::bce_with_logits_backward");
    static const auto grad_target_op = find_op<BceLogitsBwdSig>("ganfast::bce_with_logits_target_backward");
    const Tensor x = input.unpack(), t = target.unpack();
    const auto w = weight.unpack(), pw = pos_weight.unpack();
    variable_list out(2);
    if (task_should_compute_output(0)) out[0] = grad_input_op.call(grads[0], x, t, w, pw, reduction);
    if (task_should_compute_output(1)) out[1] = grad_target_op.call(grads[0], x, t, w, pw, reduction);
    return out;
  }
};

Tensor bce_with_logits_autograd(const Tensor& input, const Tensor& target, const std::optional<Tensor>& weight,
                                const std::optional<Tensor>& pos_weight, c10::string_view reduction) {
  static const auto op = find_op<BceLogitsSig>("ganfast::bce_with_logits");
  constexpr const char* name = "ganfast::bce_with_logits";
  TORCH_CHECK(!(weight.has_value() && weight->requires_grad() && at::GradMode::is_enabled()), name,
              ": the gradient with respect to weight is not supported (torch.nn.functional does not "
              "provide it either); pass weight.detach()");
  TORCH_CHECK(!(pos_weight.has_value() && pos_weight->requires_grad() && at::GradMode::is_enabled()), name,
              ": the gradient with respect to pos_weight is not supported (torch.nn.functional does not "
              "provide it either); pass pos_weight.detach()");
  Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = op.call(input, target, weight, pos_weight, reduction);
  }
  if (torch::autograd::compute_requires_grad(input, target)) {
    auto node = make_node<BceWithLogitsBackward>();
    node->input = SavedVariable(input, false);
    node->target = SavedVariable(target, false);
    node->weight.save(weight);
    node->pos_weight.save(pos_weight);
    node->reduction = std::string(reduction);
    record(node, out, input, target);
  }
  return out;
}

// ---- binary cross-entropy on probabilities ----

using BceSig = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, c10::string_view);
using BceBwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
                         c10::string_view);

struct BinaryCrossEntropyBackward : public Node {
  SavedVariable input, target;
  SavedOptional weight;
  std::string reduction;

  std::string name() const override { return "ganfast::BinaryCrossEntropyBackward"; }
  void release_variables() override {
    input.reset_data();
    target.reset_data();
    weight.reset();
  }
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return variable_list(2);
    static const auto grad_input_op = find_op<BceBwdSig>("ganfast::binary_cross_entropy_backward");
    static const auto grad_target_op = find_op<BceBwdSig>("ganfast::binary_cross_entropy_target_backward");
    const Tensor x = input.unpack(), t = target.unpack();
    const auto w = weight.unpack();
    variable_list out(2);
    if (task_should_compute_output(0)) out[0] = grad_input_op.call(grads[0], x, t, w, reduction);
    if (task_should_compute_output(1)) out[1] = grad_target_op.call(grads[0], x, t, w, reduction);
    return out;
  }
};

Tensor binary_cross_entropy_autograd(const Tensor& input, const Tensor& target,
                                     const std::optional<Tensor>& weight, c10::string_view reduction) {
  static const auto op = find_op<BceSig>("ganfast::binary_cross_entropy");
  TORCH_CHECK(!(weight.has_value() && weight->requires_grad() && at::GradMode::is_enabled()),
              "ganfast::binary_cross_entropy: the gradient with respect to weight is not supported "
              "(torch.nn.functional does not provide it either); pass weight.detach()");
  Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = op.call(input, target, weight, reduction);
  }
  if (torch::autograd::compute_requires_grad(input, target)) {
    auto node = make_node<BinaryCrossEntropyBackward>();
    node->input = SavedVariable(input, false);
    node->target = SavedVariable(target, false);
    node->weight.save(weight);
    node->reduction = std::string(reduction);
    record(node, out, input, target);
  }
  return out;
}

// ---- GAN objectives ----

using GanDSig = Tensor(const Tensor&, const Tensor&, c10::string_view, double, double);
using GanDBwdSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, c10::string_view,
                                              double, double);

struct GanDLossBackward : public Node {
  SavedVariable real, fake;
  std::string kind;
  double real_label = 1.0, fake_label = 0.0;

  std::string name() const override { return "ganfast::GanDLossBackward"; }
  void release_variables() override {
    real.reset_data();
    fake.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return variable_list(2);
    static const auto op = find_op<GanDBwdSig>("ganfast::gan_d_loss_backward");
    // One kernel gives both halves; the one nobody asked for is dropped.
    auto [grad_real, grad_fake] = op.call(grads[0], real.unpack(), fake.unpack(), kind, real_label, fake_label);
    variable_list out(2);
    if (task_should_compute_output(0)) out[0] = std::move(grad_real);
    if (task_should_compute_output(1)) out[1] = std::move(grad_fake);
    return out;
  }
};

Tensor gan_d_loss_autograd(const Tensor& real, const Tensor& fake, c10::string_view kind, double real_label,
                           double fake_label) {
  static const auto op = find_op<GanDSig>("ganfast::gan_d_loss");
  Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = op.call(real, fake, kind, real_label, fake_label);
  }
  if (torch::autograd::compute_requires_grad(real, fake)) {
    auto node = make_node<GanDLossBackward>();
    node->real = SavedVariable(real, false);
    node->fake = SavedVariable(fake, false);
    node->kind = std::string(kind);
    node->real_label = real_label;
    node->fake_label = fake_label;
    record(node, out, real, fake);
  }
  return out;
}

using GanGSig = Tensor(const Tensor&, c10::string_view);
using GanGBwdSig = Tensor(const Tensor&, const Tensor&, c10::string_view);

struct GanGLossBackward : public Node {
  SavedVariable fake;
  std::string kind;

  std::string name() const override { return "ganfast::GanGLossBackward"; }
  void release_variables() override { fake.reset_data(); }
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return variable_list(1);
    static const auto op = find_op<GanGBwdSig>("ganfast::gan_g_loss_backward");
    return {op.call(grads[0], fake.unpack(), kind)};
  }
};

Tensor gan_g_loss_autograd(const Tensor& fake, c10::string_view kind) {
  static const auto op = find_op<GanGSig>("ganfast::gan_g_loss");
  Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = op.call(fake, kind);
  }
  if (torch::autograd::compute_requires_grad(fake)) {
    auto node = make_node<GanGLossBackward>();
    node->fake = SavedVariable(fake, false);
    node->kind = std::string(kind);
    record(node, out, fake);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, Autograd, m) {
  m.impl("bce_with_logits", &bce_with_logits_autograd);
  m.impl("binary_cross_entropy", &binary_cross_entropy_autograd);
  m.impl("gan_d_loss", &gan_d_loss_autograd);
  m.impl("gan_g_loss", &gan_g_loss_autograd);
  for (const char* backward_op :
       {"bce_with_logits_backward", "bce_with_logits_target_backward", "binary_cross_entropy_backward",
        "binary_cross_entropy_target_backward", "gan_d_loss_backward", "gan_g_loss_backward"}) {
    m.impl(backward_op, torch::autograd::autogradNotImplementedFallback());
  }
}

}  // namespace ganfast::autograd
