// autograd.cpp: the derivative of every ganfast op, registered for the Autograd dispatch key.
//
// Each op's backward is itself a ganfast op (x_backward), called through the dispatcher so it
// runs on whichever backend (CPU, CUDA) holds the tensors, and so its own autograd kernel
// decides what a second derivative does.
//
// The autograd formulas live here, in C++, as plain autograd Nodes (the way PyTorch's own ops
// record their graph), rather than in Python (torch.library.register_autograd): at GAN batch
// sizes the Python autograd node alone costs more than eager PyTorch's whole BCE, and a
// torch::autograd::Function costs ~5 us more per call than a Node. See docs/architecture.md.
// The fake (meta) implementations stay in Python, in ganfast/ops.
//
// The losses family does not promise double backward: its backward ops are registered with
// autograd's not-implemented fallback, so differentiating through them raises
// "derivative for ganfast::..._backward is not implemented" instead of a wrong gradient.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <optional>
#include <string>

namespace ganfast::autograd {
namespace {

using at::Tensor;
using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Saves an optional operand (weight, pos_weight); unpacks to nullopt when it was absent.
struct SavedOptional {
  SavedVariable var;
  bool present = false;
  void save(const std::optional<Tensor>& t) {
    present = t.has_value() && t->defined();
    if (present) var = SavedVariable(*t, false);
  }
  std::optional<Tensor> unpack() const { return present ? std::optional<Tensor>(var.unpack()) : std::nullopt; }
  void reset() { var.reset_data(); }
};

// Records `node` as the producer of `out`, its next edges being the op's tensor inputs.
template <typename NodeT, typename... Inputs>
void record(const c10::intrusive_ptr<NodeT>& node, const Tensor& out, const Inputs&... inputs) {
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  torch::autograd::set_history(out, node);
}

// Gradients the ops do not provide: asking for them is an error, never a silent None.
void refuse_gradient(const Node& node, size_t input, const char* op, const char* arg) {
  TORCH_CHECK(!node.should_compute_output(input), op, ": the gradient with respect to ", arg,
              " is not supported (torch.nn.functional does not provide it either)");
}

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
    auto node = c10::make_intrusive<BceWithLogitsBackward>();
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
    auto node = c10::make_intrusive<BinaryCrossEntropyBackward>();
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
    auto node = c10::make_intrusive<GanDLossBackward>();
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
    auto node = c10::make_intrusive<GanGLossBackward>();
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
