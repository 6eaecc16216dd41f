// ganfast_common.h: host-side argument handling shared by the CPU and CUDA implementations
// (parsing the string enums, checking tensors, the broadcast map of weight operands), so both
// backends accept and reject exactly the same inputs with the same messages.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gan_math.h"

namespace ganfast {

inline Reduction parse_reduction(std::string_view name) {
  if (name == "mean") return Reduction::Mean;
  if (name == "sum") return Reduction::Sum;
  if (name == "none") return Reduction::None;
  TORCH_CHECK_VALUE(false, "ganfast: reduction must be one of 'none', 'mean', 'sum'; got '",
                    std::string(name), "'");
}

inline GanKind parse_gan_kind(std::string_view name) {
  if (name == "minimax") return GanKind::Minimax;
  if (name == "nonsaturating") return GanKind::NonSaturating;
  if (name == "hinge") return GanKind::Hinge;
  if (name == "wasserstein") return GanKind::Wasserstein;
  if (name == "least_squares") return GanKind::LeastSquares;
  TORCH_CHECK_VALUE(false,
                    "ganfast: kind must be one of 'minimax', 'nonsaturating', 'hinge', "
                    "'wasserstein', 'least_squares'; got '",
                    std::string(name), "'");
}

// Calls f with K as a compile-time constant, so kernels are specialised per objective.
template <typename F>
decltype(auto) dispatch_gan_kind(GanKind kind, F&& f) {
  switch (kind) {
    case GanKind::Minimax:
      return f(std::integral_constant<GanKind, GanKind::Minimax>{});
    case GanKind::NonSaturating:
      return f(std::integral_constant<GanKind, GanKind::NonSaturating>{});
    case GanKind::Hinge:
      return f(std::integral_constant<GanKind, GanKind::Hinge>{});
    case GanKind::Wasserstein:
      return f(std::integral_constant<GanKind, GanKind::Wasserstein>{});
    default:
      return f(std::integral_constant<GanKind, GanKind::LeastSquares>{});
  }
}

inline void check_floating(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", arg,
                   " must be a floating-point tensor; got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* arg_a, const char* arg_b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", arg_a, " and ", arg_b,
              " must be on the same device; got ", a.device(), " and ", b.device());
}

inline void check_same_shape(const at::Tensor& a, const at::Tensor& b, const char* op,
                             const char* arg_a, const char* arg_b) {
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), op, ": ", arg_b, " size (", b.sizes(),
                    ") must be the same as ", arg_a, " size (", a.sizes(), ")");
}

// An operand broadcast against a tensor of shape `shape`, read at flat index i of that tensor as
// data[(i / inner) % period]. That covers every broadcast whose non-1 dimensions form one
// contiguous run (a scalar, per-element, last-dim pos_weight, per-sample weight); any other
// pattern is expanded and materialised once, so the kernels only ever see this form.
struct Broadcast {
  at::Tensor data;  // contiguous, in the compute dtype; undefined when the operand is absent
  int64_t inner = 1;
  int64_t period = 1;
  bool present() const { return data.defined(); }
};

inline Broadcast make_broadcast(const std::optional<at::Tensor>& operand, const at::Tensor& like,
                                at::ScalarType dtype, const char* op, const char* arg) {
  Broadcast b;
  if (!operand.has_value() || !operand->defined()) return b;
  const at::Tensor& w = *operand;
  check_same_device(like, w, op, "input", arg);
  check_floating(w, op, arg);
  const auto shape = like.sizes();
  const auto wshape = w.sizes();
  const int64_t nd = static_cast<int64_t>(shape.size());
  const int64_t wd = static_cast<int64_t>(wshape.size());
  TORCH_CHECK_VALUE(wd <= nd, op, ": ", arg, " of shape ", wshape,
                    " cannot be broadcast to input of shape ", shape);
  int64_t lo = -1, hi = -1;  // the run of input dims where the operand is not 1
  bool contiguous_run = true;
  for (int64_t d = 0; d < nd; ++d) {
    const int64_t k = d - (nd - wd);
    const int64_t ws = k >= 0 ? wshape[k] : 1;
    TORCH_CHECK_VALUE(ws == 1 || ws == shape[d], op, ": ", arg, " of shape ", wshape,
                      " cannot be broadcast to input of shape ", shape);
    if (ws != 1) {
      if (lo < 0) lo = d;
      else if (hi != d - 1) contiguous_run = false;
      hi = d;
    }
  }
  if (lo >= 0) {
    // A size-1 gap inside the run only breaks it if the input is larger than 1 there.
    for (int64_t d = lo; d <= hi && contiguous_run; ++d) {
      const int64_t k = d - (nd - wd);
      const int64_t ws = k >= 0 ? wshape[k] : 1;
      if (ws == 1 && shape[d] != 1) contiguous_run = false;
    }
  }
  if (!contiguous_run) {
    b.data = w.expand(shape).to(dtype).contiguous();
    b.inner = 1;
    b.period = like.numel();
    return b;
  }
  b.data = w.to(dtype).contiguous();
  if (lo < 0) return b;  // a single value: inner = period = 1
  b.inner = 1;
  for (int64_t d = hi + 1; d < nd; ++d) b.inner *= shape[d];
  b.period = 1;
  for (int64_t d = lo; d <= hi; ++d) b.period *= shape[d];
  return b;
}

// A gradient that arrives as an expanded scalar (every stride 0, as the backward of .sum() or
// .mean() produces) is read as one value instead of being materialised.
inline bool is_expanded_scalar(const at::Tensor& t) {
  for (auto s : t.strides())
    if (s != 0) return false;
  return true;
}

// Everything a loss kernel needs to know about its operands, checked once for both backends.
struct LossOperands {
  at::Tensor input;   // contiguous
  at::Tensor target;  // contiguous, input's dtype
  Broadcast weight;
  Broadcast pos_weight;
  Reduction reduction;
};

inline LossOperands prepare_loss_operands(const char* op, const at::Tensor& input,
                                          const at::Tensor& target,
                                          const std::optional<at::Tensor>& weight,
                                          const std::optional<at::Tensor>& pos_weight,
                                          std::string_view reduction) {
  check_floating(input, op, "input");
  check_floating(target, op, "target");
  check_same_device(input, target, op, "input", "target");
  check_same_shape(input, target, op, "input", "target");
  LossOperands o;
  o.reduction = parse_reduction(reduction);
  o.input = input.contiguous();
  o.target = target.to(input.scalar_type()).contiguous();
  o.weight = make_broadcast(weight, input, input.scalar_type(), op, "weight");
  o.pos_weight = make_broadcast(pos_weight, input, input.scalar_type(), op, "pos_weight");
  return o;
}

// The upstream gradient of a loss: a 0-dim tensor for "mean"/"sum", input's shape for "none".
inline at::Tensor prepare_loss_grad(const char* op, const at::Tensor& grad,
                                    const at::Tensor& input, Reduction reduction,
                                    bool* grad_is_scalar) {
  check_same_device(input, grad, op, "input", "grad_output");
  check_floating(grad, op, "grad_output");
  if (reduction == Reduction::None) {
    check_same_shape(input, grad, op, "input", "grad_output");
    *grad_is_scalar = is_expanded_scalar(grad) && grad.numel() > 0;
    if (*grad_is_scalar) return grad.as_strided({}, {}).to(input.scalar_type());
    return grad.to(input.scalar_type()).contiguous();
  }
  TORCH_CHECK_VALUE(grad.numel() == 1, op, ": grad_output must hold one value for reduction '",
                    reduction == Reduction::Mean ? "mean" : "sum", "'; got shape ", grad.sizes());
  *grad_is_scalar = true;
  return grad.reshape({}).to(input.scalar_type());
}

}  // namespace ganfast

namespace ganfast {

// Logits of the generator's loss.
inline void check_gan_logits(const char* op, const at::Tensor& fake) {
  check_floating(fake, op, "fake_logits");
}

// Real and fake logits of a GAN loss: floating, same dtype and device; shapes may differ
// (each half is averaged on its own).
inline void check_gan_logits(const char* op, const at::Tensor& real, const at::Tensor& fake) {
  check_floating(real, op, "real_logits");
  check_floating(fake, op, "fake_logits");
  check_same_device(real, fake, op, "real_logits", "fake_logits");
  TORCH_CHECK_TYPE(real.scalar_type() == fake.scalar_type(), op,
                   ": real_logits and fake_logits must have the same dtype; got ",
                   real.scalar_type(), " and ", fake.scalar_type());
}

inline void check_scalar_grad(const char* op, const at::Tensor& grad, const at::Tensor& like) {
  check_same_device(like, grad, op, "logits", "grad_output");
  check_floating(grad, op, "grad_output");
  TORCH_CHECK_VALUE(grad.numel() == 1, op, ": grad_output must hold one value; got shape ",
                    grad.sizes());
}

}  // namespace ganfast

// ---- penalty family -----------------------------------------------------------------------------

namespace ganfast {

inline PenaltyKind parse_penalty_kind(std::string_view name) {
  if (name == "wgan-gp") return PenaltyKind::WganGp;
  if (name == "one-sided") return PenaltyKind::OneSided;
  if (name == "r1") return PenaltyKind::R1;
  if (name == "r2") return PenaltyKind::R2;
  TORCH_CHECK_VALUE(false, "ganfast: kind must be one of 'wgan-gp', 'one-sided', 'r1', 'r2'; got '",
                    std::string(name), "'");
}

template <typename F>
decltype(auto) dispatch_penalty_kind(PenaltyKind kind, F&& f) {
  switch (kind) {
    case PenaltyKind::WganGp:
      return f(std::integral_constant<PenaltyKind, PenaltyKind::WganGp>{});
    case PenaltyKind::OneSided:
      return f(std::integral_constant<PenaltyKind, PenaltyKind::OneSided>{});
    default:  // r1 and r2 are the same function of the gradient
      return f(std::integral_constant<PenaltyKind, PenaltyKind::R1>{});
  }
}

// The gradient a penalty is taken of: floating, with a batch dimension.
inline void check_penalty_grad(const char* op, const at::Tensor& grad) {
  check_floating(grad, op, "grad");
  TORCH_CHECK_VALUE(grad.dim() >= 1, op,
                    ": grad must have a batch dimension (shape (B, ...)); got a 0-dim tensor");
}

// The per-sample norms penalty_from_grad returned: (B,) in grad's compute dtype.
inline void check_penalty_norms(const char* op, const at::Tensor& grad, const at::Tensor& norms) {
  check_same_device(grad, norms, op, "grad", "norms");
  const auto compute = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_VALUE(norms.dim() == 1 && norms.size(0) == grad.size(0), op,
                    ": norms must have shape (B,) = (", grad.size(0), ",); got ", norms.sizes());
  TORCH_CHECK_TYPE(norms.scalar_type() == compute, op, ": norms must be ", compute, "; got ",
                   norms.scalar_type());
}

// interpolate's operands: real and fake of one shape (B, ...), eps of shape (B,).
inline void check_interpolate(const char* op, const at::Tensor& real, const at::Tensor& fake,
                              const at::Tensor& eps) {
  check_floating(real, op, "real");
  check_floating(fake, op, "fake");
  check_floating(eps, op, "eps");
  check_same_device(real, fake, op, "real", "fake");
  check_same_device(real, eps, op, "real", "eps");
  TORCH_CHECK_VALUE(real.dim() >= 1, op, ": real must have a batch dimension (shape (B, ...))");
  TORCH_CHECK_VALUE(real.sizes() == fake.sizes(), op, ": real and fake must have the same shape; got ",
                    real.sizes(), " and ", fake.sizes());
  TORCH_CHECK_TYPE(real.scalar_type() == fake.scalar_type(), op,
                   ": real and fake must have the same dtype; got ", real.scalar_type(), " and ",
                   fake.scalar_type());
  TORCH_CHECK_VALUE(eps.dim() == 1 && eps.size(0) == real.size(0), op, ": eps must have shape (B,) = (",
                    real.size(0), ",); got ", eps.sizes());
}

// A tensor whose samples are contiguous blocks of memory (batch outermost, dense): NCHW
// contiguous and channels_last both are. Kernels of per-sample ops run over such memory as is.
inline bool samples_are_blocks(const at::Tensor& t) {
  if (t.dim() == 0 || !t.is_non_overlapping_and_dense()) return false;
  return t.size(0) <= 1 || t.stride(0) == t.numel() / t.size(0);
}

// ---- bias_act family ----------------------------------------------------------------------------

inline ActKind parse_act(std::string_view name) {
  if (name == "linear") return ActKind::Linear;
  if (name == "relu") return ActKind::Relu;
  if (name == "lrelu") return ActKind::Lrelu;
  if (name == "tanh") return ActKind::Tanh;
  if (name == "sigmoid") return ActKind::Sigmoid;
  if (name == "elu") return ActKind::Elu;
  if (name == "selu") return ActKind::Selu;
  if (name == "softplus") return ActKind::Softplus;
  if (name == "swish") return ActKind::Swish;
  TORCH_CHECK_VALUE(false,
                    "ganfast: act must be one of 'linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', "
                    "'selu', 'softplus', 'swish'; got '",
                    std::string(name), "'");
}

template <typename F>
decltype(auto) dispatch_act(ActKind act, F&& f) {
  switch (act) {
    case ActKind::Linear:
      return f(std::integral_constant<ActKind, ActKind::Linear>{});
    case ActKind::Relu:
      return f(std::integral_constant<ActKind, ActKind::Relu>{});
    case ActKind::Lrelu:
      return f(std::integral_constant<ActKind, ActKind::Lrelu>{});
    case ActKind::Tanh:
      return f(std::integral_constant<ActKind, ActKind::Tanh>{});
    case ActKind::Sigmoid:
      return f(std::integral_constant<ActKind, ActKind::Sigmoid>{});
    case ActKind::Elu:
      return f(std::integral_constant<ActKind, ActKind::Elu>{});
    case ActKind::Selu:
      return f(std::integral_constant<ActKind, ActKind::Selu>{});
    case ActKind::Softplus:
      return f(std::integral_constant<ActKind, ActKind::Softplus>{});
    default:
      return f(std::integral_constant<ActKind, ActKind::Swish>{});
  }
}

// bias_act's x and optional bias b of shape (x.size(dim),); returns dim made non-negative.
inline int64_t check_bias_act(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& b,
                              int64_t dim) {
  check_floating(x, op, "x");
  const int64_t nd = x.dim();
  if (b.has_value() && b->defined()) {
    check_floating(*b, op, "b");
    check_same_device(x, *b, op, "x", "b");
    TORCH_CHECK_VALUE(nd >= 1 && dim >= -nd && dim < nd, op, ": dim must be in [", -nd, ", ", nd,
                      ") for x of shape ", x.sizes(), "; got ", dim);
    const int64_t d = dim < 0 ? dim + nd : dim;
    TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == x.size(d), op, ": b must have shape (",
                      x.size(d), ",) = (x.size(", dim, "),); got ", b->sizes());
    return d;
  }
  return dim < 0 && nd > 0 ? dim + nd : dim;
}

// bias_act_backward's order: >= 1; at most kMaxActOrder unless the activation is piecewise linear.
inline void check_act_order(const char* op, ActKind act, std::string_view name, int64_t order) {
  TORCH_CHECK_VALUE(order >= 1, op, ": order must be >= 1; got ", order);
  TORCH_CHECK(math::act_is_piecewise_linear(act) || order <= math::kMaxActOrder, op,
              ": derivatives of order ", order, " of act '", std::string(name),
              "' are not implemented (up to ", math::kMaxActOrder,
              "; linear, relu and lrelu have every order)");
}

}  // namespace ganfast

// ---- penalty family: the derivatives' operands ------------------------------------------------

namespace ganfast {

// interpolate_backward's operands: grad_output (B, ...) floating, eps (B,) on its device.
inline void check_interpolate_backward(const char* op, const at::Tensor& grad_output, const at::Tensor& eps) {
  check_floating(grad_output, op, "grad_output");
  check_floating(eps, op, "eps");
  check_same_device(grad_output, eps, op, "grad_output", "eps");
  TORCH_CHECK_VALUE(grad_output.dim() >= 1, op, ": grad_output must have a batch dimension (shape (B, ...))");
  TORCH_CHECK_VALUE(eps.dim() == 1 && eps.size(0) == grad_output.size(0), op, ": eps must have shape (B,) = (",
                    grad_output.size(0), ",); got ", eps.sizes());
}

// The upstream gradient of the 0-dim penalty: one value, floating, on grad's device.
inline void check_penalty_grad_output(const char* op, const at::Tensor& grad_output, const at::Tensor& grad) {
  check_same_device(grad, grad_output, op, "grad", "grad_output");
  check_floating(grad_output, op, "grad_output");
  TORCH_CHECK_VALUE(grad_output.numel() == 1, op, ": grad_output must hold one value; got shape ",
                    grad_output.sizes());
}

// The upstream gradient of penalty_from_grad_backward: grad's shape (possibly expanded).
inline void check_penalty_grad_grad(const char* op, const at::Tensor& grad_grad, const at::Tensor& grad) {
  check_same_device(grad, grad_grad, op, "grad", "grad_grad");
  check_floating(grad_grad, op, "grad_grad");
  check_same_shape(grad, grad_grad, op, "grad", "grad_grad");
}

}  // namespace ganfast

namespace ganfast {
// bias_act_backward's operands, in this order: act and order, then x (with b and dim, as
// bias_act checks them) or, x absent, whether y alone gives the derivative; y; grad_output.
// Returns dim made non-negative. (Python twin: ganfast/_args.py's check_bias_act_backward.)
inline int64_t check_bias_act_backward(const char* op, const at::Tensor& grad_output, const std::optional<at::Tensor>& x,
                                const std::optional<at::Tensor>& b, const at::Tensor& y, int64_t dim, ActKind act,
                                c10::string_view act_name, double alpha, int64_t order) {
  check_act_order(op, act, act_name, order);
  int64_t d = dim < 0 && y.dim() > 0 ? dim + y.dim() : dim;
  if (x.has_value() && x->defined()) {
    d = check_bias_act(op, *x, b, dim);
  } else {
    TORCH_CHECK_VALUE(math::act_derivatives_from_y(act, static_cast<double>(alpha)), op,
                      ": x is required for act '", std::string(act_name), "' with alpha ", alpha,
                      " (y does not determine its derivatives)");
  }
  check_floating(y, op, "y");
  if (x.has_value() && x->defined()) {
    check_same_device(*x, y, op, "x", "y");
    check_same_shape(*x, y, op, "x", "y");
    TORCH_CHECK_TYPE(x->scalar_type() == y.scalar_type(), op, ": x and y must have the same dtype; got ",
                     x->scalar_type(), " and ", y.scalar_type());
  }
  check_floating(grad_output, op, "grad_output");
  check_same_device(y, grad_output, op, "y", "grad_output");
  check_same_shape(y, grad_output, op, "y", "grad_output");
  return d;
}

// bias_act_backward_with_bias's operands: b first, which it requires (the bias whose gradient it
// returns), then bias_act_backward's (order 1), then, x absent, b against y (x's shape) as
// bias_act checks it against x. Returns dim made non-negative. (Python twin: ganfast/_args.py's
// check_bias_act_backward_with_bias.)
inline int64_t check_bias_act_backward_with_bias(const char* op, const at::Tensor& grad_output,
                                                 const std::optional<at::Tensor>& x,
                                                 const std::optional<at::Tensor>& b, const at::Tensor& y,
                                                 int64_t dim, ActKind act, c10::string_view act_name, double alpha) {
  TORCH_CHECK_VALUE(b.has_value() && b->defined(), op,
                    ": b is required (the bias whose gradient is returned); got None");
  const int64_t d = check_bias_act_backward(op, grad_output, x, b, y, dim, act, act_name, alpha, 1);
  if (!(x.has_value() && x->defined())) {
    check_floating(*b, op, "b");
    check_same_device(y, *b, op, "y", "b");
    const int64_t nd = y.dim();
    TORCH_CHECK_VALUE(nd >= 1 && dim >= -nd && dim < nd, op, ": dim must be in [", -nd, ", ", nd,
                      ") for y of shape ", y.sizes(), "; got ", dim);
    TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == y.size(d), op, ": b must have shape (", y.size(d),
                      ",) = (y.size(", dim, "),); got ", b->sizes());
  }
  return d;
}

}  // namespace ganfast

// ---- batch_norm_act family ----------------------------------------------------------------------

namespace ganfast {

// The compute dtype of batch_norm_act (its save_mean / save_invstd): float64 for float64 input,
// float32 otherwise.
inline at::ScalarType batch_norm_compute_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

// Values per channel, M = N * prod(sizes[2:]) of an (N, C, *) input (0 when any of them is 0).
inline int64_t batch_norm_values_per_channel(const at::Tensor& input) {
  int64_t m = 1;
  for (int64_t d = 0; d < input.dim(); ++d)
    if (d != 1) m *= input.size(d);
  return m;
}

inline void check_input_nc(const char* op, const at::Tensor& input) {
  check_floating(input, op, "input");
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": input must have shape (N, C, *) (at least 2 dims); got shape ",
                    input.sizes());
}

// A per-channel operand (weight, bias, running_mean, ...): absent, or floating of shape (C,) on
// input's device.
inline void check_channel_vector(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& t,
                                 const char* arg) {
  if (!t.has_value() || !t->defined()) return;
  check_floating(*t, op, arg);
  check_same_device(input, *t, op, "input", arg);
  const int64_t c = input.size(1);
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == c, op, ": ", arg, " must have shape (C,) = (", c,
                    ",) (input.size(1)); got ", t->sizes());
}

// batch_norm_act's affine operand (weight or bias): absent, (C,) (one per channel) or (N, C) (one per
// sample and channel: conditional BatchNorm), floating, on input's device. Returns whether it is (N, C).
inline bool check_affine_operand(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& t,
                                 const char* arg) {
  if (!t.has_value() || !t->defined()) return false;
  check_floating(*t, op, arg);
  check_same_device(input, *t, op, "input", arg);
  const int64_t n = input.size(0), c = input.size(1);
  const bool per_channel = t->dim() == 1 && t->size(0) == c;
  const bool per_sample = t->dim() == 2 && t->size(0) == n && t->size(1) == c;
  TORCH_CHECK_VALUE(per_channel || per_sample, op, ": ", arg, " must have shape (C,) = (", c,
                    ",) (input.size(1)) or (N, C) = (", n, ", ", c, ") (one per sample); got ", t->sizes());
  return per_sample;
}

// Whether batch_norm_act runs per sample: weight or bias (N, C) (checked by check_batch_norm_act).
inline bool batch_norm_per_sample(const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias) {
  auto ps = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->defined() && t->dim() == 2; };
  return ps(weight) || ps(bias);
}

// batch_norm_act's operands, in this order: input; weight, bias ((C,) or (N, C) each), running_mean,
// running_var ((C,)); the running statistics given together and of one dtype; more than one value per channel when
// training, the running statistics when not. Returns M, the values per channel.
// (Python twin: ganfast/_args.py's check_batch_norm_act.)
inline int64_t check_batch_norm_act(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& bias,
                                    const std::optional<at::Tensor>& running_mean,
                                    const std::optional<at::Tensor>& running_var, bool training, double eps) {
  check_input_nc(op, input);
  check_affine_operand(op, input, weight, "weight");
  check_affine_operand(op, input, bias, "bias");
  check_channel_vector(op, input, running_mean, "running_mean");
  check_channel_vector(op, input, running_var, "running_var");
  const bool has_rm = running_mean.has_value() && running_mean->defined();
  const bool has_rv = running_var.has_value() && running_var->defined();
  TORCH_CHECK_VALUE(has_rm == has_rv, op, ": running_mean and running_var must be given together (both or neither)");
  if (has_rm) {
    TORCH_CHECK_TYPE(running_mean->scalar_type() == running_var->scalar_type(), op,
                     ": running_mean and running_var must have the same dtype; got ", running_mean->scalar_type(),
                     " and ", running_var->scalar_type());
  }
  const int64_t m = batch_norm_values_per_channel(input);
  if (training) {
    TORCH_CHECK_VALUE(m != 1, op, ": expected more than 1 value per channel when training; got input of shape ",
                      input.sizes());
    // as torch: the batch variance can be 0, and 1 / sqrt(var + eps) must stay finite
    TORCH_CHECK_VALUE(eps > 0, op, ": eps must be positive when training; got ", eps);
  } else {
    TORCH_CHECK_VALUE(has_rm, op, ": running_mean and running_var are required when training is False "
                      "(eval normalises with the running statistics)");
  }
  return m;
}

// batch_norm_act_backward's operands: input, weight, bias as batch_norm_act checks them;
// grad_output floating of input's shape on its device; save_mean and save_invstd of shape (C,)
// in the compute dtype. Returns M. (Python twin: ganfast/_args.py's check_batch_norm_act_backward.)
inline int64_t check_batch_norm_act_backward(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                                             const std::optional<at::Tensor>& weight,
                                             const std::optional<at::Tensor>& bias, const at::Tensor& save_mean,
                                             const at::Tensor& save_invstd) {
  check_input_nc(op, input);
  check_affine_operand(op, input, weight, "weight");
  check_affine_operand(op, input, bias, "bias");
  check_floating(grad_output, op, "grad_output");
  check_same_device(input, grad_output, op, "input", "grad_output");
  check_same_shape(input, grad_output, op, "input", "grad_output");
  const auto compute = batch_norm_compute_dtype(input.scalar_type());
  for (const auto& [t, arg] : {std::pair<const at::Tensor&, const char*>{save_mean, "save_mean"},
                               std::pair<const at::Tensor&, const char*>{save_invstd, "save_invstd"}}) {
    check_same_device(input, t, op, "input", arg);
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == input.size(1), op, ": ", arg, " must have shape (C,) = (",
                      input.size(1), ",) (input.size(1)); got ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == compute, op, ": ", arg, " must be ", compute, " (the compute dtype of ",
                     input.scalar_type(), " input); got ", t.scalar_type());
  }
  return batch_norm_values_per_channel(input);
}

}  // namespace ganfast

// ---- instance_norm_act family -------------------------------------------------------------------
// Instance norm over input (N, C, *) is batch norm over the per-(n, c) axis: the view (1, N * C, S) of
// a contiguous input, channel k = n * C + c, affine parameter k % C. The kernels are batch_norm_act's.

namespace ganfast {

// S = prod(sizes[2:]) of an (N, C, *) input: the values of each (n, c) instance.
inline int64_t instance_norm_spatial_size(const at::Tensor& input) {
  int64_t s = 1;
  for (int64_t d = 2; d < input.dim(); ++d) s *= input.size(d);
  return s;
}

inline void check_input_ncs(const char* op, const at::Tensor& input) {
  check_floating(input, op, "input");
  TORCH_CHECK_VALUE(input.dim() >= 3, op,
                    ": input must have shape (N, C, *) with at least one spatial dim (at least 3 dims); got shape ",
                    input.sizes());
}

// instance_norm_act's operands, in this order: input; weight, bias (C,) as batch_norm_act's; more
// than one spatial element (torch's instance_norm refuses one too; none is an empty result, as
// torch's); eps > 0. Returns S. (Python twin: ganfast/_args.py's check_instance_norm_act.)
inline int64_t check_instance_norm_act(const char* op, const at::Tensor& input,
                                       const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& bias, double eps) {
  check_input_ncs(op, input);
  check_channel_vector(op, input, weight, "weight");
  check_channel_vector(op, input, bias, "bias");
  const int64_t s = instance_norm_spatial_size(input);
  TORCH_CHECK_VALUE(s != 1, op, ": expected more than 1 spatial element per (sample, channel); got input of shape ",
                    input.sizes());
  TORCH_CHECK_VALUE(eps > 0, op, ": eps must be positive; got ", eps);
  return s;
}

// instance_norm_act_backward's operands: input, weight, bias as instance_norm_act checks them;
// grad_output floating of input's shape on its device; save_mean and save_invstd of shape (N * C,)
// in the compute dtype. Returns S. (Python twin: ganfast/_args.py's check_instance_norm_act_backward.)
inline int64_t check_instance_norm_act_backward(const char* op, const at::Tensor& grad_output,
                                                const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                                const std::optional<at::Tensor>& bias,
                                                const at::Tensor& save_mean, const at::Tensor& save_invstd) {
  check_input_ncs(op, input);
  check_channel_vector(op, input, weight, "weight");
  check_channel_vector(op, input, bias, "bias");
  check_floating(grad_output, op, "grad_output");
  check_same_device(input, grad_output, op, "input", "grad_output");
  check_same_shape(input, grad_output, op, "input", "grad_output");
  const auto compute = batch_norm_compute_dtype(input.scalar_type());
  const int64_t nc = input.size(0) * input.size(1);
  for (const auto& [t, arg] : {std::pair<const at::Tensor&, const char*>{save_mean, "save_mean"},
                               std::pair<const at::Tensor&, const char*>{save_invstd, "save_invstd"}}) {
    check_same_device(input, t, op, "input", arg);
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == nc, op, ": ", arg, " must have shape (N * C,) = (", nc,
                      ",) (input.size(0) * input.size(1)); got ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == compute, op, ": ", arg, " must be ", compute, " (the compute dtype of ",
                     input.scalar_type(), " input); got ", t.scalar_type());
  }
  return instance_norm_spatial_size(input);
}

// The per-instance view (1, N * C, S) of a contiguous input (N, C, *): batch_norm_act's kernels run
// over it with N * C channels.
inline at::Tensor instance_view(const at::Tensor& contiguous_input) {
  return contiguous_input.view({1, contiguous_input.size(0) * contiguous_input.size(1),
                                instance_norm_spatial_size(contiguous_input)});
}

}  // namespace ganfast

// ---- info_loss family ---------------------------------------------------------------------------

namespace ganfast {

// info_loss's operands, checked: each present tensor contiguous; the flags say which parts are
// there. B rows; K classes (0 without the categorical part); J continuous codes (0 without).
struct InfoOperands {
  at::Tensor cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd;  // undefined when absent
  bool has_cat = false, has_cont = false, has_logstd = false;
  int64_t B = 0, K = 0, J = 0;
  at::Tensor like;  // the first floating operand: the result's dtype and device
};

inline bool info_present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

inline void check_info_weight(const char* op, const char* arg, double w) {
  TORCH_CHECK_VALUE(std::isfinite(w) && w >= 0, op, ": ", arg, " must be a finite number >= 0; got ", w);
}

// The checks, in this order: the weights; which operands are given together; the categorical
// part (cat_logits floating (B, K), K >= 2; cat_codes int64 (B,)); the continuous part (cont_mean,
// cont_codes, cont_logstd floating, one shape (B, J)); one dtype, one device and one B for all.
// The range of the codes (data) is each backend's: see csrc/cpu/info_loss.cpp.
// (Python twin: ganfast/_args.py's check_info_loss.)
inline InfoOperands check_info_loss(const char* op, const std::optional<at::Tensor>& cat_logits,
                                    const std::optional<at::Tensor>& cat_codes,
                                    const std::optional<at::Tensor>& cont_mean,
                                    const std::optional<at::Tensor>& cont_codes,
                                    const std::optional<at::Tensor>& cont_logstd, double cat_weight,
                                    double cont_weight) {
  check_info_weight(op, "cat_weight", cat_weight);
  check_info_weight(op, "cont_weight", cont_weight);
  InfoOperands o;
  o.has_cat = info_present(cat_logits);
  o.has_cont = info_present(cont_mean);
  o.has_logstd = info_present(cont_logstd);
  TORCH_CHECK_VALUE(o.has_cat == info_present(cat_codes), op,
                    ": cat_logits and cat_codes must be given together (both or neither)");
  TORCH_CHECK_VALUE(o.has_cont == info_present(cont_codes), op,
                    ": cont_mean and cont_codes must be given together (both or neither)");
  TORCH_CHECK_VALUE(o.has_cont || !o.has_logstd, op, ": cont_logstd needs cont_mean and cont_codes");
  TORCH_CHECK_VALUE(o.has_cat || o.has_cont, op,
                    ": nothing to compute: give cat_logits with cat_codes, cont_mean with cont_codes, or both");
  const char* like_name = nullptr;
  if (o.has_cat) {
    const at::Tensor& x = *cat_logits;
    const at::Tensor& c = *cat_codes;
    check_floating(x, op, "cat_logits");
    TORCH_CHECK_VALUE(x.dim() == 2, op, ": cat_logits must have shape (B, K); got shape ", x.sizes());
    TORCH_CHECK_VALUE(x.size(1) >= 2, op, ": cat_logits must have K >= 2 classes (shape (B, K)); got shape ",
                      x.sizes());
    TORCH_CHECK_TYPE(c.scalar_type() == at::kLong, op,
                     ": cat_codes must be an int64 (Long) tensor of class indices; got ", c.scalar_type());
    check_same_device(x, c, op, "cat_logits", "cat_codes");
    TORCH_CHECK_VALUE(c.dim() == 1 && c.size(0) == x.size(0), op, ": cat_codes must have shape (B,) = (",
                      x.size(0), ",) (cat_logits.size(0)); got shape ", c.sizes());
    o.B = x.size(0);
    o.K = x.size(1);
    o.like = x;
    like_name = "cat_logits";
  }
  if (o.has_cont) {
    const at::Tensor& mu = *cont_mean;
    check_floating(mu, op, "cont_mean");
    check_floating(*cont_codes, op, "cont_codes");
    if (o.has_logstd) check_floating(*cont_logstd, op, "cont_logstd");
    TORCH_CHECK_VALUE(mu.dim() == 2, op, ": cont_mean must have shape (B, J); got shape ", mu.sizes());
    check_same_device(mu, *cont_codes, op, "cont_mean", "cont_codes");
    check_same_shape(mu, *cont_codes, op, "cont_mean", "cont_codes");
    if (o.has_logstd) {
      check_same_device(mu, *cont_logstd, op, "cont_mean", "cont_logstd");
      check_same_shape(mu, *cont_logstd, op, "cont_mean", "cont_logstd");
    }
    if (o.has_cat) {
      check_same_device(o.like, mu, op, "cat_logits", "cont_mean");
      TORCH_CHECK_VALUE(mu.size(0) == o.B, op, ": cont_mean must have B = ", o.B,
                        " rows (cat_logits.size(0)); got shape ", mu.sizes());
    } else {
      o.B = mu.size(0);
      o.like = mu;
      like_name = "cont_mean";
    }
    o.J = mu.size(1);
    const auto dtype = o.like.scalar_type();
    for (const auto& [t, arg] : {std::pair<const at::Tensor&, const char*>{mu, "cont_mean"},
                                 std::pair<const at::Tensor&, const char*>{*cont_codes, "cont_codes"}}) {
      TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", arg, " must have the same dtype as ", like_name,
                       " (", dtype, "); got ", t.scalar_type());
    }
    if (o.has_logstd) {
      TORCH_CHECK_TYPE(cont_logstd->scalar_type() == dtype, op, ": cont_logstd must have the same dtype as ",
                       like_name, " (", dtype, "); got ", cont_logstd->scalar_type());
    }
  }
  if (o.has_cat) {
    o.cat_logits = cat_logits->contiguous();
    o.cat_codes = cat_codes->contiguous();
  }
  if (o.has_cont) {
    o.cont_mean = cont_mean->contiguous();
    o.cont_codes = cont_codes->contiguous();
    if (o.has_logstd) o.cont_logstd = cont_logstd->contiguous();
  }
  return o;
}

// info_loss_backward's upstream gradient: one value, floating, on the operands' device.
inline void check_info_grad_output(const char* op, const at::Tensor& grad_output, const InfoOperands& o) {
  check_floating(grad_output, op, "grad_output");
  check_same_device(o.like, grad_output, op, o.has_cat ? "cat_logits" : "cont_mean", "grad_output");
  TORCH_CHECK_VALUE(grad_output.numel() == 1, op, ": grad_output must hold one value; got shape ",
                    grad_output.sizes());
}

// The gradient of an operand: like t (contiguous), or an empty (0,) tensor where t is absent.
inline at::Tensor info_grad_like(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? at::empty_like(t, at::MemoryFormat::Contiguous) : at::empty({0}, like.options());
}

}  // namespace ganfast

// ---- cycle_loss family --------------------------------------------------------------------------

namespace ganfast {

// cycle_loss's operands, in this order: the lists non-empty and of one length; then per pair i:
// reconstructed[i] and original[i] floating, on reconstructed[0]'s device, of reconstructed[0]'s
// dtype, original[i] of reconstructed[i]'s shape (no broadcasting: F.l1_loss warns and
// broadcasts, ganfast refuses); weight finite and >= 0. (Python twin: ganfast/_args.py's
// check_cycle_loss.)
inline void check_cycle_loss(const char* op, at::TensorList reconstructed, at::TensorList original, double weight) {
  TORCH_CHECK_VALUE(!reconstructed.empty(), op, ": reconstructed must hold at least one tensor; got an empty list");
  TORCH_CHECK_VALUE(reconstructed.size() == original.size(), op,
                    ": reconstructed and original must have the same length; got ", reconstructed.size(), " and ",
                    original.size());
  const at::Tensor& first = reconstructed[0];
  for (size_t i = 0; i < reconstructed.size(); ++i) {
    const std::string r_name = "reconstructed[" + std::to_string(i) + "]";
    const std::string o_name = "original[" + std::to_string(i) + "]";
    const at::Tensor& r = reconstructed[i];
    const at::Tensor& o = original[i];
    check_floating(r, op, r_name.c_str());
    check_floating(o, op, o_name.c_str());
    if (i > 0) check_same_device(first, r, op, "reconstructed[0]", r_name.c_str());
    check_same_device(first, o, op, "reconstructed[0]", o_name.c_str());
    if (i > 0)
      TORCH_CHECK_TYPE(r.scalar_type() == first.scalar_type(), op, ": ", r_name,
                       " must have the dtype of reconstructed[0] (", first.scalar_type(), "); got ", r.scalar_type());
    TORCH_CHECK_TYPE(o.scalar_type() == first.scalar_type(), op, ": ", o_name,
                     " must have the dtype of reconstructed[0] (", first.scalar_type(), "); got ", o.scalar_type());
    check_same_shape(r, o, op, r_name.c_str(), o_name.c_str());
  }
  TORCH_CHECK_VALUE(std::isfinite(weight) && weight >= 0, op, ": weight must be finite and non-negative; got ",
                    weight);
}

// cycle_loss_backward's upstream gradient: one value, floating, on the inputs' device (read there).
inline void check_cycle_loss_grad_output(const char* op, const at::Tensor& grad_output, const at::Tensor& first) {
  check_same_device(first, grad_output, op, "reconstructed[0]", "grad_output");
  check_floating(grad_output, op, "grad_output");
  TORCH_CHECK_VALUE(grad_output.numel() == 1, op, ": grad_output must hold one value; got shape ",
                    grad_output.sizes());
}

// One pair as the kernels walk it: both dense (non-overlapping, every element in numel consecutive
// positions) and in the same layout, so element k of the walk is data_ptr()[k] in both and the
// gradients (empty_like of these) keep the layout. Contiguous and channels_last inputs are used as
// they are; a reconstructed that is not dense (a strided view) is copied contiguous, and an original
// whose layout differs from reconstructed's is copied into that layout (one extra read + write of
// that tensor; its gradient then comes back in reconstructed's layout).
struct CyclePair {
  at::Tensor r, o;
  int64_t n = 0;
};

inline bool same_dense_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

inline CyclePair make_cycle_pair(const at::Tensor& reconstructed, const at::Tensor& original) {
  CyclePair p;
  p.r = reconstructed.is_non_overlapping_and_dense() ? reconstructed : reconstructed.contiguous();
  if (same_dense_layout(original, p.r) && original.is_non_overlapping_and_dense()) {
    p.o = original;
  } else {
    p.o = at::empty_like(p.r);
    p.o.copy_(original);
  }
  p.n = p.r.numel();
  return p;
}

inline std::vector<CyclePair> make_cycle_pairs(at::TensorList reconstructed, at::TensorList original) {
  std::vector<CyclePair> pairs;
  pairs.reserve(reconstructed.size());
  for (size_t i = 0; i < reconstructed.size(); ++i) pairs.push_back(make_cycle_pair(reconstructed[i], original[i]));
  return pairs;
}

}  // namespace ganfast

// ---- spectral_norm family -----------------------------------------------------------------------

namespace ganfast {

// The matrix torch's spectral norm works on: weight viewed as (A, h, B) (dim first, the rest
// flattened in order), W[i, a * B + b] = weight[a, i, b], w = A * B columns.
struct SpectralNormShape {
  int64_t A = 1, h = 0, B = 1, w = 0, dim = 0;
};

// sigma, u and v (the cache) and the kernels' accumulation: float32, float64 for float64 weights.
inline at::ScalarType spectral_norm_compute_dtype(at::ScalarType weight) {
  return weight == at::kDouble ? at::kDouble : at::kFloat;
}

// weight floating, >= 2 dims (a 1-D weight is F.normalize's business, as in torch), not empty; dim in
// [-ndim, ndim) as torch's message says it (IndexError). (Python twin: _args.spectral_norm_shape.)
inline SpectralNormShape spectral_norm_shape(const char* op, const at::Tensor& weight, int64_t dim) {
  check_floating(weight, op, "weight");
  const int64_t nd = weight.dim();
  TORCH_CHECK_VALUE(nd >= 2, op, ": weight must have at least 2 dimensions (torch normalizes a 1-D weight with "
                    "F.normalize); got shape ", weight.sizes());
  TORCH_CHECK_INDEX(dim >= -nd && dim < nd, op, ": Dimension out of range (expected to be in range of [", -nd, ", ",
                    nd - 1, "] but got ", dim, ")");
  TORCH_CHECK_VALUE(weight.numel() > 0, op, ": weight must have at least one element; got shape ", weight.sizes());
  SpectralNormShape s;
  s.dim = dim < 0 ? dim + nd : dim;
  for (int64_t d = 0; d < s.dim; ++d) s.A *= weight.size(d);
  s.h = weight.size(s.dim);
  for (int64_t d = s.dim + 1; d < nd; ++d) s.B *= weight.size(d);
  s.w = s.A * s.B;
  return s;
}

inline void check_spectral_norm_vector(const char* op, const at::Tensor& weight, const at::Tensor& t, const char* arg,
                                       int64_t size) {
  TORCH_CHECK_TYPE(t.scalar_type() == weight.scalar_type(), op, ": ", arg, " must have weight's dtype (",
                   weight.scalar_type(), "); got ", t.scalar_type());
  check_same_device(weight, t, op, "weight", arg);
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == size, op, ": ", arg, " must have shape (", size,
                    ",); got ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", arg, " must be contiguous (it is updated in place)");
}

// spectral_norm's operands, in this order: weight (spectral_norm_shape), u (h,) and v (w,) of weight's
// dtype and device, contiguous; n_power_iterations >= 1 (torch's rule); eps > 0 and finite.
// (Python twin: _args.check_spectral_norm.)
inline SpectralNormShape check_spectral_norm(const char* op, const at::Tensor& weight, const at::Tensor& u,
                                             const at::Tensor& v, int64_t dim, int64_t n_power_iterations,
                                             double eps) {
  const SpectralNormShape s = spectral_norm_shape(op, weight, dim);
  check_spectral_norm_vector(op, weight, u, "u", s.h);
  check_spectral_norm_vector(op, weight, v, "v", s.w);
  TORCH_CHECK_VALUE(n_power_iterations >= 1, op, ": Expected n_power_iterations to be positive, but got "
                    "n_power_iterations=", n_power_iterations);
  TORCH_CHECK_VALUE(eps > 0 && std::isfinite(eps), op, ": eps must be positive and finite; got ", eps);
  return s;
}

// spectral_norm_backward's operands: weight as above; grad_output of weight's shape, dtype and device;
// cache (1 + h + w,) in the compute dtype on weight's device. (Python twin: _args.check_spectral_norm_backward.)
inline SpectralNormShape check_spectral_norm_backward(const char* op, const at::Tensor& grad_output,
                                                      const at::Tensor& weight, const at::Tensor& cache,
                                                      int64_t dim) {
  const SpectralNormShape s = spectral_norm_shape(op, weight, dim);
  check_floating(grad_output, op, "grad_output");
  check_same_device(weight, grad_output, op, "weight", "grad_output");
  check_same_shape(weight, grad_output, op, "weight", "grad_output");
  TORCH_CHECK_TYPE(grad_output.scalar_type() == weight.scalar_type(), op, ": grad_output must have weight's dtype (",
                   weight.scalar_type(), "); got ", grad_output.scalar_type());
  const at::ScalarType compute = spectral_norm_compute_dtype(weight.scalar_type());
  TORCH_CHECK_TYPE(cache.scalar_type() == compute, op, ": cache must be ", compute, " for ", weight.scalar_type(),
                   " weight; got ", cache.scalar_type());
  check_same_device(weight, cache, op, "weight", "cache");
  TORCH_CHECK_VALUE(cache.dim() == 1 && cache.size(0) == 1 + s.h + s.w, op, ": cache must have shape (",
                    1 + s.h + s.w, ",) = (1 + h + w,), as spectral_norm returns it; got ", cache.sizes());
  return s;
}

}  // namespace ganfast

// ---- orthogonal_regularization family ----------------------------------------------------------
// Everything but the fused reduction is shared by the CPU and CUDA kernels: the checks, the cache
// layout, the GEMMs (at::mm: BLAS on CPU, cuBLAS on CUDA) and the whole backward (ATen only: one
// elementwise scale over every weight's cache, then one GEMM per weight). (Python twin:
// ganfast/_args.py's check_orthogonal_regularization and ortho_layout.)

namespace ganfast {

// orthogonal_regularization's operands: the list non-empty; per weight i: floating, of weights[0]'s
// dtype and device, at least 2 dims; beta finite and >= 0.
inline void check_orthogonal_regularization(const char* op, at::TensorList weights, double beta) {
  TORCH_CHECK_VALUE(!weights.empty(), op, ": weights must hold at least one tensor; got an empty list");
  const at::Tensor& first = weights[0];
  for (size_t i = 0; i < weights.size(); ++i) {
    const std::string name = "weights[" + std::to_string(i) + "]";
    const at::Tensor& w = weights[i];
    check_floating(w, op, name.c_str());
    if (i > 0) {
      check_same_device(first, w, op, "weights[0]", name.c_str());
      TORCH_CHECK_TYPE(w.scalar_type() == first.scalar_type(), op, ": ", name, " must have the dtype of weights[0] (",
                       first.scalar_type(), "); got ", w.scalar_type());
    }
    TORCH_CHECK_VALUE(w.dim() >= 2, op, ": ", name,
                      " must have at least 2 dimensions (biases and gains are skipped by "
                      "ganfast.penalty.orthogonal_regularization); got shape ",
                      w.sizes());
  }
  TORCH_CHECK_VALUE(std::isfinite(beta) && beta >= 0, op, ": beta must be finite and non-negative; got ", beta);
}

// Where a tall W (m x k, m >= 2k) uses W^T W: the identity ||W W^T (1 - I)||^2 = ||W^T W||^2 - sum_i
// ||w_i||^4 is exact, and with m >= 2k and rows of similar norm the subtraction loses at most about a
// factor 2 (the off-diagonal part is at least (1 - k/m) of ||W W^T||^2, since W W^T has rank <= k).
inline bool ortho_is_tall(int64_t m, int64_t k) { return m >= 2 * k; }

struct OrthoBlock {
  int64_t m = 0, k = 0, offset = 0;
  bool tall = false;
};

inline at::ScalarType ortho_acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The cache layout: per weight, W W^T (m*m) or, tall, W^T W (k*k) then d (m). Sets *total.
inline std::vector<OrthoBlock> ortho_layout(at::TensorList weights, int64_t* total) {
  std::vector<OrthoBlock> out;
  out.reserve(weights.size());
  int64_t offset = 0;
  for (const auto& w : weights) {
    OrthoBlock b;
    b.m = w.size(0);
    b.k = 1;
    for (int64_t d = 1; d < w.dim(); ++d) b.k *= w.size(d);
    b.tall = ortho_is_tall(b.m, b.k);
    b.offset = offset;
    offset += b.tall ? b.k * b.k + b.m : b.m * b.m;
    out.push_back(b);
  }
  *total = offset;
  return out;
}

// W as the m x k matrix the GEMMs take, in the cache's dtype (a view when it already is).
inline at::Tensor ortho_matrix(const at::Tensor& w, const OrthoBlock& b, at::ScalarType acc) {
  return w.reshape({b.m, b.k}).to(acc);
}

// The cache before the fused kernel: every Gram by one GEMM (the diagonal still in place), d of the
// tall weights.
inline at::Tensor ortho_grams(at::TensorList weights, const std::vector<OrthoBlock>& layout, int64_t total) {
  const at::ScalarType acc = ortho_acc_type(weights[0].scalar_type());
  at::Tensor cache = at::empty({total}, weights[0].options().dtype(acc));
  for (size_t i = 0; i < weights.size(); ++i) {
    const OrthoBlock& b = layout[i];
    if (b.m == 0) continue;
    const at::Tensor W = ortho_matrix(weights[i], b, acc);
    if (b.tall) {
      if (b.k > 0) {
        at::Tensor S = cache.narrow(0, b.offset, b.k * b.k).view({b.k, b.k});
        at::mm_out(S, W.t(), W);
      }
      at::Tensor d = cache.narrow(0, b.offset + b.k * b.k, b.m);
      at::sum_out(d, W.square(), {1});
    } else {
      at::Tensor G = cache.narrow(0, b.offset, b.m * b.m).view({b.m, b.m});
      at::mm_out(G, W, W.t());
    }
  }
  return cache;
}

// What the fused reduction walks: sign * sum of ortho_term over cache[offset, offset + n), where the
// entries e with e % period == 0 are a Gram's diagonal (period = m + 1; 0: no diagonal), which the
// kernel also zeroes in the cache. Empty segments are left out.
struct OrthoSegment {
  int64_t offset = 0, n = 0, period = 0;
  int sign = 1;
};

inline std::vector<OrthoSegment> ortho_segments(const std::vector<OrthoBlock>& layout) {
  std::vector<OrthoSegment> out;
  for (const auto& b : layout) {
    if (b.tall) {
      if (b.k > 0) out.push_back({b.offset, b.k * b.k, 0, 1});
      if (b.m > 0) out.push_back({b.offset + b.k * b.k, b.m, 0, -1});
    } else if (b.m > 0) {
      out.push_back({b.offset, b.m * b.m, b.m + 1, 1});
    }
  }
  return out;
}

// orthogonal_regularization_backward's upstream gradient (one value, floating, on the weights'
// device) and cache (1-D, of the layout's size, in the cache dtype, on the weights' device).
inline void check_orthogonal_regularization_backward(const char* op, const at::Tensor& grad_output,
                                                     at::TensorList weights, const at::Tensor& cache, int64_t total) {
  check_same_device(weights[0], grad_output, op, "weights[0]", "grad_output");
  check_floating(grad_output, op, "grad_output");
  TORCH_CHECK_VALUE(grad_output.numel() == 1, op, ": grad_output must hold one value; got shape ", grad_output.sizes());
  check_same_device(weights[0], cache, op, "weights[0]", "cache");
  const at::ScalarType acc = ortho_acc_type(weights[0].scalar_type());
  TORCH_CHECK_TYPE(cache.scalar_type() == acc, op, ": cache must be ", acc, " for weights of dtype ",
                   weights[0].scalar_type(), "; got ", cache.scalar_type());
  TORCH_CHECK_VALUE(cache.dim() == 1 && cache.size(0) == total, op,
                    ": cache must be the 1-D cache orthogonal_regularization returned for these weights (",
                    total, " values); got shape ", cache.sizes());
}

// The backward, the same on every device: M = cache * (4 beta grad_output) in one elementwise launch
// over every weight (the masked Grams were stored by the forward, so the mask costs nothing here; the
// scale stays on the device: no host synchronisation), then per weight grad = M_W W (one GEMM), tall:
// grad = W (c W^T W) - (c d) * W (one addmm).
inline std::vector<at::Tensor> ortho_backward(const char* op, const at::Tensor& grad_output, at::TensorList weights,
                                              const at::Tensor& cache, double beta) {
  check_orthogonal_regularization(op, weights, beta);
  int64_t total = 0;
  const auto layout = ortho_layout(weights, &total);
  check_orthogonal_regularization_backward(op, grad_output, weights, cache, total);
  const at::ScalarType acc = cache.scalar_type();
  const at::Tensor M = at::mul(cache.contiguous(), grad_output.reshape({}).to(acc) * (4.0 * beta));
  std::vector<at::Tensor> grads;
  grads.reserve(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    const OrthoBlock& b = layout[i];
    const at::Tensor W = ortho_matrix(w, b, acc);
    at::Tensor g;
    if (b.tall) {
      const at::Tensor S = M.narrow(0, b.offset, b.k * b.k).view({b.k, b.k});
      const at::Tensor d = M.narrow(0, b.offset + b.k * b.k, b.m).view({b.m, 1});
      g = at::addmm(W * d, W, S, /*beta=*/-1, /*alpha=*/1);
    } else if (w.scalar_type() == acc) {  // straight into the gradient, no copy
      g = at::empty({b.m, b.k}, w.options());
      at::mm_out(g, M.narrow(0, b.offset, b.m * b.m).view({b.m, b.m}), W);
    } else {
      g = at::mm(M.narrow(0, b.offset, b.m * b.m).view({b.m, b.m}), W);
    }
    grads.push_back(g.to(w.scalar_type()).view(w.sizes()));
  }
  return grads;
}

}  // namespace ganfast
