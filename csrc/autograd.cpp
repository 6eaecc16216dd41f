// autograd.cpp: the derivative of every ganfast op, registered for the Autograd dispatch key.
//
// Each op's backward is itself a ganfast op (x_backward), called through the dispatcher so it
// runs on whichever backend (CPU, CUDA) holds the tensors. The autograd formulas live here, in
// C++, rather than in Python (torch.library.register_autograd) because a Python autograd node
// costs ~40 us per loss call on this CPU, more than eager PyTorch's whole BCE; see
// docs/architecture.md. The fake (meta) implementations stay in Python, in ganfast/ops.
//
// The losses family does not promise double backward: its backward ops are registered with
// autograd's not-implemented fallback, so differentiating through them raises
// "derivative for ganfast::..._backward is not implemented" instead of a wrong gradient.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <string>

namespace ganfast::autograd {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

std::optional<Tensor> optional_of(const Tensor& t) {
  return t.defined() ? std::optional<Tensor>(t) : std::nullopt;
}

// Gradients the ops do not provide: asking for them is an error, never a silent None.
void check_no_grad_requested(AutogradContext* ctx, size_t index, const char* op, const char* arg) {
  TORCH_CHECK(!ctx->needs_input_grad(index), op, ": the gradient with respect to ", arg,
              " is not supported (torch.nn.functional does not provide it either)");
}

// ---- binary cross-entropy with logits and on probabilities ----

using BceLogitsSig = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                            const std::optional<Tensor>&, c10::string_view);
using BceLogitsBwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
                               const std::optional<Tensor>&, c10::string_view);

struct BceWithLogitsFunction : public torch::autograd::Function<BceWithLogitsFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& target,
                        const std::optional<Tensor>& weight, const std::optional<Tensor>& pos_weight,
                        const std::string& reduction) {
    ctx->save_for_backward({input, target, weight.value_or(Tensor()), pos_weight.value_or(Tensor())});
    ctx->saved_data["reduction"] = reduction;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<BceLogitsSig>("ganfast::bce_with_logits");
    return op.call(input, target, weight, pos_weight, reduction);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    constexpr const char* name = "ganfast::bce_with_logits";
    check_no_grad_requested(ctx, 2, name, "weight");
    check_no_grad_requested(ctx, 3, name, "pos_weight");
    const auto saved = ctx->get_saved_variables();
    const auto weight = optional_of(saved[2]), pos_weight = optional_of(saved[3]);
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    Tensor grad_input, grad_target;
    if (ctx->needs_input_grad(0)) {
      static const auto op = find_op<BceLogitsBwdSig>("ganfast::bce_with_logits_backward");
      grad_input = op.call(grads[0], saved[0], saved[1], weight, pos_weight, reduction);
    }
    if (ctx->needs_input_grad(1)) {
      static const auto op = find_op<BceLogitsBwdSig>("ganfast::bce_with_logits_target_backward");
      grad_target = op.call(grads[0], saved[0], saved[1], weight, pos_weight, reduction);
    }
    return {grad_input, grad_target, Tensor(), Tensor(), Tensor()};
  }
};

Tensor bce_with_logits_autograd(const Tensor& input, const Tensor& target, const std::optional<Tensor>& weight,
                                const std::optional<Tensor>& pos_weight, c10::string_view reduction) {
  return BceWithLogitsFunction::apply(input, target, weight, pos_weight, std::string(reduction));
}

using BceSig = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, c10::string_view);
using BceBwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
                         c10::string_view);

struct BinaryCrossEntropyFunction : public torch::autograd::Function<BinaryCrossEntropyFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& target,
                        const std::optional<Tensor>& weight, const std::string& reduction) {
    ctx->save_for_backward({input, target, weight.value_or(Tensor())});
    ctx->saved_data["reduction"] = reduction;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<BceSig>("ganfast::binary_cross_entropy");
    return op.call(input, target, weight, reduction);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_no_grad_requested(ctx, 2, "ganfast::binary_cross_entropy", "weight");
    const auto saved = ctx->get_saved_variables();
    const auto weight = optional_of(saved[2]);
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    Tensor grad_input, grad_target;
    if (ctx->needs_input_grad(0)) {
      static const auto op = find_op<BceBwdSig>("ganfast::binary_cross_entropy_backward");
      grad_input = op.call(grads[0], saved[0], saved[1], weight, reduction);
    }
    if (ctx->needs_input_grad(1)) {
      static const auto op = find_op<BceBwdSig>("ganfast::binary_cross_entropy_target_backward");
      grad_target = op.call(grads[0], saved[0], saved[1], weight, reduction);
    }
    return {grad_input, grad_target, Tensor(), Tensor()};
  }
};

Tensor binary_cross_entropy_autograd(const Tensor& input, const Tensor& target,
                                     const std::optional<Tensor>& weight, c10::string_view reduction) {
  return BinaryCrossEntropyFunction::apply(input, target, weight, std::string(reduction));
}

// ---- GAN objectives ----

using GanDSig = Tensor(const Tensor&, const Tensor&, c10::string_view, double, double);
using GanDBwdSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, c10::string_view,
                                              double, double);

struct GanDLossFunction : public torch::autograd::Function<GanDLossFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& real, const Tensor& fake, const std::string& kind,
                        double real_label, double fake_label) {
    ctx->save_for_backward({real, fake});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["real_label"] = real_label;
    ctx->saved_data["fake_label"] = fake_label;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<GanDSig>("ganfast::gan_d_loss");
    return op.call(real, fake, kind, real_label, fake_label);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    static const auto op = find_op<GanDBwdSig>("ganfast::gan_d_loss_backward");
    auto [grad_real, grad_fake] =
        op.call(grads[0], saved[0], saved[1], ctx->saved_data["kind"].toStringRef(),
                ctx->saved_data["real_label"].toDouble(), ctx->saved_data["fake_label"].toDouble());
    return {grad_real, grad_fake, Tensor(), Tensor(), Tensor()};
  }
};

Tensor gan_d_loss_autograd(const Tensor& real, const Tensor& fake, c10::string_view kind, double real_label,
                           double fake_label) {
  return GanDLossFunction::apply(real, fake, std::string(kind), real_label, fake_label);
}

using GanGSig = Tensor(const Tensor&, c10::string_view);
using GanGBwdSig = Tensor(const Tensor&, const Tensor&, c10::string_view);

struct GanGLossFunction : public torch::autograd::Function<GanGLossFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& fake, const std::string& kind) {
    ctx->save_for_backward({fake});
    ctx->saved_data["kind"] = kind;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<GanGSig>("ganfast::gan_g_loss");
    return op.call(fake, kind);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    static const auto op = find_op<GanGBwdSig>("ganfast::gan_g_loss_backward");
    return {op.call(grads[0], saved[0], ctx->saved_data["kind"].toStringRef()), Tensor()};
  }
};

Tensor gan_g_loss_autograd(const Tensor& fake, c10::string_view kind) {
  return GanGLossFunction::apply(fake, std::string(kind));
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
