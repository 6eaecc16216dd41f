// autograd/bias_act.cpp: the derivatives of bias_act, of every order.
//
// y = bias_act(x, b). Its backward is bias_act_backward(dy, ..., order 1), whose derivative is
// the same op again: w.r.t. dy the same order (it is linear in dy), w.r.t. x the next order
// applied to u * dy. The bias gradient is the x gradient summed over every dim but `dim`.
//
// What is saved: activations whose derivatives y determines and whose second derivative is 0
// (linear, relu, lrelu with alpha >= 0) keep only y, every higher derivative being 0. The
// others keep x (and b) to evaluate derivatives of any order at x + b, and y for the layout.
// Smooth activations implement orders up to kMaxActOrder (3): asking for a fourth derivative
// raises the op's "not implemented" error, never a wrong number.
#include "autograd_common.h"

#include "../ganfast_common.h"

namespace ganfast::autograd {

namespace {
thread_local bool lean_flag = false;
}  // namespace

bool lean_double_backward() { return lean_flag; }
void set_lean_double_backward(bool on) { lean_flag = on; }

namespace {

using BiasActSig = Tensor(const Tensor&, const std::optional<Tensor>&, int64_t, c10::string_view, double, double,
                          double);
using BiasActBwdSig = Tensor(const Tensor&, const std::optional<Tensor>&, const std::optional<Tensor>&,
                             const Tensor&, int64_t, c10::string_view, double, double, double, int64_t);

struct BiasActParams {
  int64_t dim = 1;
  std::string act;
  double alpha = 0, gain = 1, clamp = -1;
};

// Whether x must be kept: everything but the piecewise-linear activations y describes.
bool keeps_x(const std::string& act_name, double alpha) {
  const ActKind act = parse_act(act_name);
  return !(math::act_is_piecewise_linear(act) && math::act_derivatives_from_y(act, alpha));
}

// The gradient of b: dx summed over every dim but `dim`.
Tensor bias_gradient(const Tensor& dx, int64_t dim) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < dx.dim(); ++d)
    if (d != dim) dims.push_back(d);
  return dims.empty() ? dx : dx.sum(dims);
}

Tensor call_backward(const Tensor& grad, const std::optional<Tensor>& x, const std::optional<Tensor>& b,
                     const Tensor& y, const BiasActParams& p, int64_t order) {
  static const auto op = find_op<BiasActBwdSig>("ganfast::bias_act_backward");
  return op.call(grad, x, b, y, p.dim, p.act, p.alpha, p.gain, p.clamp, order);
}

struct BiasActBackward : public Node {
  SavedVariable y;
  SavedOptional x, b;
  BiasActParams p;
  bool has_bias = false;
  bool lean = false;  // lean_double_backward() when the forward was recorded
  std::string name() const override { return "ganfast::BiasActBackward"; }
  void release_variables() override {
    y.reset_data();
    x.reset();
    b.reset();
  }
  variable_list apply(variable_list&& grads) override {
    variable_list out(2);
    if (!grads[0].defined()) return out;
    if (has_bias && task_should_compute_output(1) && !at::GradMode::is_enabled()) {
      // No graph of this backward (no create_graph): dx and the bias gradient in one pass. b is
      // not kept where y alone gives the derivative: a stand-in, read for its shape only, with
      // b's dtype and device from the metadata of b's edge. (bias_act_backward_with_bias is not
      // differentiable: create_graph takes bias_act_backward and a sum, below.)
      using Sig = std::tuple<Tensor, Tensor>(const Tensor&, const std::optional<Tensor>&, const std::optional<Tensor>&,
                                             const Tensor&, int64_t, c10::string_view, double, double, double);
      static const auto op = find_op<Sig>("ganfast::bias_act_backward_with_bias");
      const Tensor ys = y.unpack(self_ptr<Node>(this));
      std::optional<Tensor> bs = b.unpack();
      if (!bs.has_value()) {
        const auto& edge = next_edge(1);
        const auto options = edge.is_valid() ? edge.function->input_metadata(edge.input_nr).options() : ys.options();
        bs = at::empty({ys.size(p.dim)}, options);
      }
      auto [dx, db] = op.call(grads[0], x.unpack(), bs, ys, p.dim, p.act, p.alpha, p.gain, p.clamp);
      if (task_should_compute_output(0)) out[0] = std::move(dx);
      out[1] = std::move(db);
      return out;
    }
    // Through the dispatcher with autograd on: when the graph of this backward is kept
    // (create_graph), bias_act_backward records its own Node, so the next derivative exists;
    // the forward's lean flag decides whether that Node keeps its exact-zero edge.
    const LeanScope lean_scope(lean);
    const Tensor dx = call_backward(grads[0], x.unpack(), b.unpack(), y.unpack(self_ptr<Node>(this)), p, 1);
    if (task_should_compute_output(0)) out[0] = dx;
    if (has_bias && task_should_compute_output(1)) out[1] = bias_gradient(dx, p.dim);
    return out;
  }
};

// The derivative of bias_act_backward of order k: inputs (grad_output, x, b).
struct BiasActBackwardBackward : public Node {
  SavedVariable grad_output, y;
  SavedOptional x, b;
  BiasActParams p;
  int64_t order = 1;
  std::string name() const override { return "ganfast::BiasActBackwardBackward"; }
  void release_variables() override {
    grad_output.reset_data();
    y.reset_data();
    x.reset();
    b.reset();
  }
  variable_list apply(variable_list&& grads) override {
    variable_list out(4);
    const Tensor& u = grads[0];
    if (!u.defined()) return out;
    // Input 3 is y (or x's own edge, see bias_act_backward_autograd), recorded only when x was
    // not kept (a piecewise-linear activation): the derivative through it is exactly 0, made
    // explicit as eager PyTorch does, so x.grad becomes zeros rather than staying None.
    if (task_should_compute_output(3)) out[3] = at::zeros_like(y.unpack());
    const auto xs = x.unpack(), bs = b.unpack();
    const Tensor ys = y.unpack();
    if (task_should_compute_output(0)) out[0] = call_backward(u, xs, bs, ys, p, order);
    // Through x (and b): the next order. Without x the activation is piecewise linear and every
    // derivative past the first is 0, so nothing flows (an undefined gradient is a zero one).
    if (xs.has_value() && (task_should_compute_output(1) || task_should_compute_output(2))) {
      const Tensor dx = call_backward(u * grad_output.unpack(), xs, bs, ys, p, order + 1);
      if (task_should_compute_output(1)) out[1] = dx;
      if (task_should_compute_output(2)) out[2] = bias_gradient(dx, p.dim);
    }
    return out;
  }
};

Tensor bias_act_backward_autograd(const Tensor& grad_output, const std::optional<Tensor>& x,
                                  const std::optional<Tensor>& b, const Tensor& y, int64_t dim,
                                  c10::string_view act, double alpha, double gain, double clamp, int64_t order) {
  static const auto op = find_op<BiasActBwdSig>("ganfast::bias_act_backward");
  Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = op.call(grad_output, x, b, y, dim, act, alpha, gain, clamp, order);
  }
  const Tensor x_or_undefined = x.has_value() ? *x : Tensor();
  const Tensor b_or_undefined = b.has_value() ? *b : Tensor();
  // Without x the result still depends on x, through y (its slope pattern), with derivative 0:
  // record y so the result is part of the graph, as eager's leaky_relu_backward is -- unless lean
  // (autograd_common.h), where that exact zero is not sent anywhere.
  const Tensor y_edge = x.has_value() || lean_double_backward() ? Tensor() : y;
  if (torch::autograd::compute_requires_grad(grad_output, x_or_undefined, b_or_undefined, y_edge)) {
    auto node = make_node<BiasActBackwardBackward>();
    node->grad_output = SavedVariable(grad_output, false);
    node->y = SavedVariable(y.detach(), false);  // a cache of f(x): never differentiated
    node->x.save(x);
    node->b.save(b);
    node->p = {dim, std::string(act), alpha, gain, clamp};
    node->order = order;
    auto edges = torch::autograd::collect_next_edges(grad_output, x_or_undefined, b_or_undefined, y_edge);
    // The y edge carries an exact zero. When y comes from bias_act without a bias, send it
    // straight to x's edge, as eager's leaky_relu_backward (which takes x) does: through y it
    // would cost one more bias_act_backward, on zeros, before reaching x all the same.
    if (y_edge.defined()) {
      const auto* forward = dynamic_cast<const BiasActBackward*>(y_edge.grad_fn().get());
      if (forward != nullptr && !forward->has_bias && forward->next_edge(0).is_valid())
        edges[3] = forward->next_edge(0);
    }
    node->set_next_edges(std::move(edges));
    torch::autograd::set_history(out, node);
  }
  return out;
}

Tensor bias_act_autograd(const Tensor& x, const std::optional<Tensor>& b, int64_t dim, c10::string_view act,
                         double alpha, double gain, double clamp) {
  static const auto op = find_op<BiasActSig>("ganfast::bias_act");
  Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    y = op.call(x, b, dim, act, alpha, gain, clamp);
  }
  const Tensor b_or_undefined = b.has_value() ? *b : Tensor();
  if (torch::autograd::compute_requires_grad(x, b_or_undefined)) {
    auto node = make_node<BiasActBackward>();
    const int64_t d = check_bias_act("ganfast::bias_act", x, b, dim);
    node->p = {d, std::string(act), alpha, gain, clamp};
    node->has_bias = b.has_value() && b->defined();
    node->lean = lean_double_backward();
    if (keeps_x(node->p.act, alpha)) {
      node->x.save(x);
      node->b.save(b);
    }
    record(node, y, x, b_or_undefined);
    node->y = SavedVariable(y, true);  // y's own grad_fn is this node: saved as an output
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, Autograd, m) {
  m.impl("bias_act", &bias_act_autograd);
  m.impl("bias_act_backward", &bias_act_backward_autograd);
  // Not differentiable (taken only where no graph of the backward is built): an error if asked.
  m.impl("bias_act_backward_with_bias", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace ganfast::autograd
