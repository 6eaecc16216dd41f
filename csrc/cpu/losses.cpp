// CPU kernels of the losses family. The math is csrc/gan_math.h's; the argument handling is
// csrc/ganfast_common.h's (shared with csrc/cuda/losses.cu); the loops are cpu_loops.h's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../ganfast_common.h"
#include "cpu_alloc.h"
#include "cpu_loops.h"

namespace ganfast::cpu {
namespace {

using at::Tensor;

// Raw pointers of one loss call. weight(i)/pos_weight(i) read the broadcast operands; with
// kWeighted false they are the constant 1 and the loops vectorise.
template <typename scalar_t, bool kWeighted>
struct LossView {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  const scalar_t* t;
  const scalar_t* w = nullptr;
  int64_t w_inner = 1, w_period = 1;
  const scalar_t* pw = nullptr;
  int64_t pw_inner = 1, pw_period = 1;

  explicit LossView(const LossOperands& o)
      : x(o.input.const_data_ptr<scalar_t>()), t(o.target.const_data_ptr<scalar_t>()) {
    if (o.weight.present()) {
      w = o.weight.data.const_data_ptr<scalar_t>();
      w_inner = o.weight.inner;
      w_period = o.weight.period;
    }
    if (o.pos_weight.present()) {
      pw = o.pos_weight.data.const_data_ptr<scalar_t>();
      pw_inner = o.pos_weight.inner;
      pw_period = o.pos_weight.period;
    }
  }
  acc_t weight(int64_t i) const {
    if constexpr (kWeighted) {
      if (w) return static_cast<acc_t>(w[(i / w_inner) % w_period]);
    }
    return acc_t(1);
  }
  acc_t pos_weight(int64_t i) const {
    if constexpr (kWeighted) {
      if (pw) return static_cast<acc_t>(pw[(i / pw_inner) % pw_period]);
    }
    return acc_t(1);
  }
};

// Calls f with a LossView specialised on the dtype and on whether any weight is present.
template <typename F>
void dispatch_loss(const char* op, const LossOperands& o, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.input.scalar_type(), "ganfast_loss", [&] {
    if (o.weight.present() || o.pos_weight.present()) {
      f(LossView<scalar_t, true>(o));
    } else {
      f(LossView<scalar_t, false>(o));
    }
  });
}

// Forward of an elementwise loss l_i = elem(view, i) with reduction.
template <typename Elem>
Tensor loss_forward(const char* op, const LossOperands& o, const Elem& elem) {
  const int64_t n = o.input.numel();
  Tensor out = o.reduction == Reduction::None ? empty_output_like(o.input) : at::empty({}, o.input.options());
  dispatch_loss(op, o, [&](auto view) {
    using View = decltype(view);
    using scalar_t = std::remove_const_t<std::remove_pointer_t<decltype(view.x)>>;
    using acc_t = typename View::acc_t;
    if (o.reduction == Reduction::None) {
      scalar_t* y = out.data_ptr<scalar_t>();
      chunked_for(n, [&](int64_t i) { y[i] = static_cast<scalar_t>(elem(view, i)); });
      return;
    }
    const double total = chunked_sum<acc_t>(n, [&](int64_t i) { return elem(view, i); });
    // mean of nothing is NaN, as torch's
    const double value = o.reduction == Reduction::Mean ? total / static_cast<double>(n) : total;
    *out.data_ptr<scalar_t>() = static_cast<scalar_t>(value);
  });
  return out;
}

// Gradient of an elementwise loss: grad_i = upstream_i * scale * delem(view, i).
template <typename DElem>
Tensor loss_backward(const char* op, const Tensor& grad_output, const LossOperands& o,
                     const DElem& delem) {
  bool grad_is_scalar = false;
  const Tensor grad = prepare_loss_grad(op, grad_output, o.input, o.reduction, &grad_is_scalar);
  const int64_t n = o.input.numel();
  Tensor out = empty_output_like(o.input);
  dispatch_loss(op, o, [&](auto view) {
    using View = decltype(view);
    using scalar_t = std::remove_const_t<std::remove_pointer_t<decltype(view.x)>>;
    using acc_t = typename View::acc_t;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    const acc_t scale = o.reduction == Reduction::Mean ? acc_t(1) / static_cast<acc_t>(n) : acc_t(1);
    if (grad_is_scalar) {
      const acc_t g0 = static_cast<acc_t>(g[0]) * scale;
      chunked_for(n, [&](int64_t i) { y[i] = static_cast<scalar_t>(g0 * delem(view, i)); });
    } else {
      chunked_for(n, [&](int64_t i) {
        y[i] = static_cast<scalar_t>(static_cast<acc_t>(g[i]) * delem(view, i));
      });
    }
  });
  return out;
}

// ---- binary cross-entropy with logits ----

constexpr auto bce_logits_elem = [](const auto& v, int64_t i) {
  using acc_t = typename std::decay_t<decltype(v)>::acc_t;
  return math::bce_logits(static_cast<acc_t>(v.x[i]), static_cast<acc_t>(v.t[i]), v.weight(i), v.pos_weight(i));
};

Tensor bce_with_logits(const Tensor& input, const Tensor& target, const std::optional<Tensor>& weight,
                       const std::optional<Tensor>& pos_weight, c10::string_view reduction) {
  constexpr const char* op = "ganfast::bce_with_logits";
  const auto o = prepare_loss_operands(op, input, target, weight, pos_weight, reduction);
  return loss_forward(op, o, bce_logits_elem);
}

Tensor bce_with_logits_backward(const Tensor& grad_output, const Tensor& input, const Tensor& target,
                                const std::optional<Tensor>& weight,
                                const std::optional<Tensor>& pos_weight, c10::string_view reduction) {
  constexpr const char* op = "ganfast::bce_with_logits_backward";
  const auto o = prepare_loss_operands(op, input, target, weight, pos_weight, reduction);
  return loss_backward(op, grad_output, o, [](const auto& v, int64_t i) {
    using acc_t = typename std::decay_t<decltype(v)>::acc_t;
    return math::bce_logits_dinput(static_cast<acc_t>(v.x[i]), static_cast<acc_t>(v.t[i]), v.weight(i),
                                   v.pos_weight(i));
  });
}

Tensor bce_with_logits_target_backward(const Tensor& grad_output, const Tensor& input,
                                       const Tensor& target, const std::optional<Tensor>& weight,
                                       const std::optional<Tensor>& pos_weight,
                                       c10::string_view reduction) {
  constexpr const char* op = "ganfast::bce_with_logits_target_backward";
  const auto o = prepare_loss_operands(op, input, target, weight, pos_weight, reduction);
  return loss_backward(op, grad_output, o, [](const auto& v, int64_t i) {
    using acc_t = typename std::decay_t<decltype(v)>::acc_t;
    return math::bce_logits_dtarget(static_cast<acc_t>(v.x[i]), static_cast<acc_t>(v.t[i]), v.weight(i),
                                    v.pos_weight(i));
  });
}

// ---- binary cross-entropy on probabilities ----

// torch rejects probabilities (and targets) outside [0, 1], NaN included.
void check_probabilities(const LossOperands& o) {
  dispatch_loss("ganfast::binary_cross_entropy", o, [&](auto view) {
    using acc_t = typename decltype(view)::acc_t;
    const int64_t n = o.input.numel();
    const double bad_input = chunked_sum<acc_t>(n, [&](int64_t i) {
      return math::probability_in_range(static_cast<acc_t>(view.x[i])) ? acc_t(0) : acc_t(1);
    });
    TORCH_CHECK(bad_input == 0, "ganfast::binary_cross_entropy: all elements of input should be between 0 and 1");
    const double bad_target = chunked_sum<acc_t>(n, [&](int64_t i) {
      return math::probability_in_range(static_cast<acc_t>(view.t[i])) ? acc_t(0) : acc_t(1);
    });
    TORCH_CHECK(bad_target == 0, "ganfast::binary_cross_entropy: all elements of target should be between 0 and 1");
  });
}

Tensor binary_cross_entropy(const Tensor& input, const Tensor& target, const std::optional<Tensor>& weight,
                            c10::string_view reduction) {
  constexpr const char* op = "ganfast::binary_cross_entropy";
  const auto o = prepare_loss_operands(op, input, target, weight, std::nullopt, reduction);
  check_probabilities(o);
  return loss_forward(op, o, [](const auto& v, int64_t i) {
    using acc_t = typename std::decay_t<decltype(v)>::acc_t;
    return math::bce_prob(static_cast<acc_t>(v.x[i]), static_cast<acc_t>(v.t[i]), v.weight(i));
  });
}

Tensor binary_cross_entropy_backward(const Tensor& grad_output, const Tensor& input, const Tensor& target,
                                     const std::optional<Tensor>& weight, c10::string_view reduction) {
  constexpr const char* op = "ganfast::binary_cross_entropy_backward";
  const auto o = prepare_loss_operands(op, input, target, weight, std::nullopt, reduction);
  return loss_backward(op, grad_output, o, [](const auto& v, int64_t i) {
    using acc_t = typename std::decay_t<decltype(v)>::acc_t;
    return math::bce_prob_dinput(static_cast<acc_t>(v.x[i]), static_cast<acc_t>(v.t[i]), v.weight(i));
  });
}

Tensor binary_cross_entropy_target_backward(const Tensor& grad_output, const Tensor& input,
                                            const Tensor& target, const std::optional<Tensor>& weight,
                                            c10::string_view reduction) {
  constexpr const char* op = "ganfast::binary_cross_entropy_target_backward";
  const auto o = prepare_loss_operands(op, input, target, weight, std::nullopt, reduction);
  return loss_backward(op, grad_output, o, [](const auto& v, int64_t i) {
    using acc_t = typename std::decay_t<decltype(v)>::acc_t;
    return math::bce_prob_dtarget(static_cast<acc_t>(v.x[i]), static_cast<acc_t>(v.t[i]), v.weight(i));
  });
}

// ---- GAN objectives ----

// Calls f(scalar_t tag, K) for the logits' dtype and the objective.
template <typename F>
void dispatch_gan(const char* op, const Tensor& logits, GanKind kind, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "ganfast_gan_loss", [&] {
    dispatch_gan_kind(kind, [&](auto k) { f(scalar_t(0), k); });
  });
}

Tensor gan_d_loss(const Tensor& real_logits, const Tensor& fake_logits, c10::string_view kind_name,
                  double real_label, double fake_label) {
  constexpr const char* op = "ganfast::gan_d_loss";
  check_gan_logits(op, real_logits, fake_logits);
  const GanKind kind = parse_gan_kind(kind_name);
  const Tensor real = real_logits.contiguous(), fake = fake_logits.contiguous();
  const int64_t nr = real.numel(), nf = fake.numel();
  Tensor out = at::empty({}, real.options());
  dispatch_gan(op, real, kind, [&](auto tag, auto k) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr GanKind K = decltype(k)::value;
    const scalar_t* xr = real.const_data_ptr<scalar_t>();
    const scalar_t* xf = fake.const_data_ptr<scalar_t>();
    const acc_t a = static_cast<acc_t>(real_label), b = static_cast<acc_t>(fake_label);
    const double sr = chunked_sum<acc_t>(nr, [&](int64_t i) { return math::gan_d_real<K>(static_cast<acc_t>(xr[i]), a); });
    const double sf = chunked_sum<acc_t>(nf, [&](int64_t i) { return math::gan_d_fake<K>(static_cast<acc_t>(xf[i]), b); });
    *out.data_ptr<scalar_t>() = static_cast<scalar_t>(sr / static_cast<double>(nr) + sf / static_cast<double>(nf));
  });
  return out;
}

std::tuple<Tensor, Tensor> gan_d_loss_backward(const Tensor& grad_output, const Tensor& real_logits,
                                               const Tensor& fake_logits, c10::string_view kind_name,
                                               double real_label, double fake_label) {
  constexpr const char* op = "ganfast::gan_d_loss_backward";
  check_gan_logits(op, real_logits, fake_logits);
  check_scalar_grad(op, grad_output, real_logits);
  const GanKind kind = parse_gan_kind(kind_name);
  const Tensor real = real_logits.contiguous(), fake = fake_logits.contiguous();
  const int64_t nr = real.numel(), nf = fake.numel();
  Tensor grad_real = empty_output_like(real), grad_fake = empty_output_like(fake);
  const Tensor grad = grad_output.reshape({}).to(real.scalar_type());
  dispatch_gan(op, real, kind, [&](auto tag, auto k) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr GanKind K = decltype(k)::value;
    const acc_t g = static_cast<acc_t>(*grad.const_data_ptr<scalar_t>());
    const acc_t gr = g / static_cast<acc_t>(nr), gf = g / static_cast<acc_t>(nf);
    const acc_t a = static_cast<acc_t>(real_label), b = static_cast<acc_t>(fake_label);
    const scalar_t* xr = real.const_data_ptr<scalar_t>();
    const scalar_t* xf = fake.const_data_ptr<scalar_t>();
    scalar_t* yr = grad_real.data_ptr<scalar_t>();
    scalar_t* yf = grad_fake.data_ptr<scalar_t>();
    chunked_for(nr, [&](int64_t i) { yr[i] = static_cast<scalar_t>(gr * math::gan_d_real_dx<K>(static_cast<acc_t>(xr[i]), a)); });
    chunked_for(nf, [&](int64_t i) { yf[i] = static_cast<scalar_t>(gf * math::gan_d_fake_dx<K>(static_cast<acc_t>(xf[i]), b)); });
  });
  return {grad_real, grad_fake};
}

Tensor gan_g_loss(const Tensor& fake_logits, c10::string_view kind_name) {
  constexpr const char* op = "ganfast::gan_g_loss";
  check_gan_logits(op, fake_logits);
  const GanKind kind = parse_gan_kind(kind_name);
  const Tensor fake = fake_logits.contiguous();
  const int64_t n = fake.numel();
  Tensor out = at::empty({}, fake.options());
  dispatch_gan(op, fake, kind, [&](auto tag, auto k) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr GanKind K = decltype(k)::value;
    const scalar_t* x = fake.const_data_ptr<scalar_t>();
    const double s = chunked_sum<acc_t>(n, [&](int64_t i) { return math::gan_g<K>(static_cast<acc_t>(x[i])); });
    *out.data_ptr<scalar_t>() = static_cast<scalar_t>(s / static_cast<double>(n));
  });
  return out;
}

Tensor gan_g_loss_backward(const Tensor& grad_output, const Tensor& fake_logits, c10::string_view kind_name) {
  constexpr const char* op = "ganfast::gan_g_loss_backward";
  check_gan_logits(op, fake_logits);
  check_scalar_grad(op, grad_output, fake_logits);
  const GanKind kind = parse_gan_kind(kind_name);
  const Tensor fake = fake_logits.contiguous();
  const int64_t n = fake.numel();
  Tensor grad_fake = empty_output_like(fake);
  const Tensor grad = grad_output.reshape({}).to(fake.scalar_type());
  dispatch_gan(op, fake, kind, [&](auto tag, auto k) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr GanKind K = decltype(k)::value;
    const acc_t g = static_cast<acc_t>(*grad.const_data_ptr<scalar_t>()) / static_cast<acc_t>(n);
    const scalar_t* x = fake.const_data_ptr<scalar_t>();
    scalar_t* y = grad_fake.data_ptr<scalar_t>();
    chunked_for(n, [&](int64_t i) { y[i] = static_cast<scalar_t>(g * math::gan_g_dx<K>(static_cast<acc_t>(x[i]))); });
  });
  return grad_fake;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("bce_with_logits", &bce_with_logits);
  m.impl("bce_with_logits_backward", &bce_with_logits_backward);
  m.impl("bce_with_logits_target_backward", &bce_with_logits_target_backward);
  m.impl("binary_cross_entropy", &binary_cross_entropy);
  m.impl("binary_cross_entropy_backward", &binary_cross_entropy_backward);
  m.impl("binary_cross_entropy_target_backward", &binary_cross_entropy_target_backward);
  m.impl("gan_d_loss", &gan_d_loss);
  m.impl("gan_d_loss_backward", &gan_d_loss_backward);
  m.impl("gan_g_loss", &gan_g_loss);
  m.impl("gan_g_loss_backward", &gan_g_loss_backward);
}

}  // namespace ganfast::cpu
