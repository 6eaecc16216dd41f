// autograd/info_loss.cpp: the derivatives of the info_loss family (see autograd_common.h).
//
// One Node for the forward op; its apply calls info_loss_backward once, which gives the gradients
// w.r.t. cat_logits, cont_mean, cont_codes and cont_logstd together (cat_codes are integers: no
// edge). First order only: info_loss_backward gets autograd's not-implemented fallback, so a
// second derivative raises "derivative for ganfast::info_loss_backward is not implemented".
#include "autograd_common.h"

namespace ganfast::autograd {
namespace {

using Opt = std::optional<Tensor>;
using InfoSig = Tensor(const Opt&, const Opt&, const Opt&, const Opt&, const Opt&, double, double);
using InfoBwdSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Opt&, const Opt&, const Opt&,
                                                              const Opt&, const Opt&, double, double);

struct InfoLossBackward : public Node {
  SavedOptional cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd;
  double cat_weight = 1.0, cont_weight = 1.0;

  std::string name() const override { return "ganfast::InfoLossBackward"; }
  void release_variables() override {
    cat_logits.reset();
    cat_codes.reset();
    cont_mean.reset();
    cont_codes.reset();
    cont_logstd.reset();
  }
  // Edges: cat_logits, cont_mean, cont_codes, cont_logstd (an absent one: an empty edge).
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return variable_list(4);
    static const auto op = find_op<InfoBwdSig>("ganfast::info_loss_backward");
    auto [gx, gmu, gcc, gls] = op.call(grads[0], cat_logits.unpack(), cat_codes.unpack(), cont_mean.unpack(),
                                       cont_codes.unpack(), cont_logstd.unpack(), cat_weight, cont_weight);
    variable_list out(4);
    if (cat_logits.present && task_should_compute_output(0)) out[0] = std::move(gx);
    if (cont_mean.present && task_should_compute_output(1)) out[1] = std::move(gmu);
    if (cont_codes.present && task_should_compute_output(2)) out[2] = std::move(gcc);
    if (cont_logstd.present && task_should_compute_output(3)) out[3] = std::move(gls);
    return out;
  }
};

Tensor info_loss_autograd(const Opt& cat_logits, const Opt& cat_codes, const Opt& cont_mean, const Opt& cont_codes,
                          const Opt& cont_logstd, double cat_weight, double cont_weight) {
  static const auto op = find_op<InfoSig>("ganfast::info_loss");
  Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = op.call(cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight, cont_weight);
  }
  if (torch::autograd::compute_requires_grad(cat_logits, cont_mean, cont_codes, cont_logstd)) {
    auto node = make_node<InfoLossBackward>();
    node->cat_logits.save(cat_logits);
    node->cat_codes.save(cat_codes);
    node->cont_mean.save(cont_mean);
    node->cont_codes.save(cont_codes);
    node->cont_logstd.save(cont_logstd);
    node->cat_weight = cat_weight;
    node->cont_weight = cont_weight;
    record(node, out, cat_logits, cont_mean, cont_codes, cont_logstd);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, Autograd, m) {
  m.impl("info_loss", &info_loss_autograd);
  m.impl("info_loss_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace ganfast::autograd
