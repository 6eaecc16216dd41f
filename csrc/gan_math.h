// gan_math.h: the math every ganfast kernel computes, shared by host and device.
//
// The CPU kernels (csrc/cpu) and the CUDA kernels (csrc/cuda) both call these functions,
// so the formulas the GPU runs are the ones the CPU tests check. Only the two transcendental
// primitives differ by platform: on the device they are CUDA's expf/log1pf; on the host,
// float32 uses the branch-free polynomials below (libm's scalar expf + log1pf cost ~10 ns
// per element and never vectorise; these vectorise to ~0.7 ns and stay within 3 ulp).
// float64 always uses the C++ library, so float64 tests compare against exact math.
//
// Everything is templated on the compute type T (float, or double for float64 tensors);
// half-precision tensors are computed in float.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define GANFAST_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined, so each vectorised CPU loop (cpu_loops.h) compiles this math for its own
// instruction set instead of calling a baseline scalar copy.
#define GANFAST_HD inline __attribute__((always_inline))
#else
#define GANFAST_HD inline
#endif

namespace ganfast {

// Reductions, in torch's names ("none", "mean", "sum").
enum class Reduction : int { None, Mean, Sum };

// The GAN objectives that ganfast.losses implements (see gan_d_real/gan_d_fake/gan_g below).
enum class GanKind : int { Minimax, NonSaturating, Hinge, Wasserstein, LeastSquares };

// Gradient penalties ("wgan-gp", "one-sided", "r1", "r2"; see penalty_value below).
enum class PenaltyKind : int { WganGp, OneSided, R1, R2 };

// Activations of bias_act ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu",
// "softplus", "swish"; see act_value below).
enum class ActKind : int { Linear, Relu, Lrelu, Tanh, Sigmoid, Elu, Selu, Softplus, Swish };

namespace math {

// ---------------------------------------------------------------------------------------------
// Primitives
// ---------------------------------------------------------------------------------------------

// exp(x) for x <= 0 (all the losses need is exp(-|x|)); 0 below the float32 normal range.
GANFAST_HD float exp_nonpos(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  // Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, then Taylor to degree 7 (error < 5e-9).
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = std::fma(k, -0.693145751953125f, x);  // ln2 split in two: the high part is exact
  r = std::fma(k, -1.428606765330187e-06f, r);
  float p = 1.0f / 5040.0f;
  p = std::fma(p, r, 1.0f / 720.0f);
  p = std::fma(p, r, 1.0f / 120.0f);
  p = std::fma(p, r, 1.0f / 24.0f);
  p = std::fma(p, r, 1.0f / 6.0f);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  // 2^k built from its exponent bits; k >= -126 wherever the result is used.
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.0f ? 0.0f : p * scale;
#endif
}

GANFAST_HD double exp_nonpos(double x) { return std::exp(x); }

// log(1 + e) for e in [0, 1].
GANFAST_HD float log1p_unit(float e) {
#if defined(__CUDA_ARCH__)
  return log1pf(e);
#else
  // u = 1 + e rounds; log(u) by the atanh series around 1 after halving u > sqrt(2), then
  // the rounding of u is put back to first order: log1p(e) = log(u) + (e - (u - 1)) / u.
  const float u = 1.0f + e;
  const bool halve = u > 1.41421356f;
  const float m = halve ? 0.5f * u : u;  // m in [0.707, 1.415], m - 1 exact (Sterbenz)
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float q = 2.0f / 9.0f;
  q = std::fma(q, s2, 2.0f / 7.0f);
  q = std::fma(q, s2, 2.0f / 5.0f);
  q = std::fma(q, s2, 2.0f / 3.0f);
  q = std::fma(q, s2, 2.0f);
  const float log_u = std::fma(q, s, halve ? 0.693147180559945309f : 0.0f);
  return log_u + (e - (u - 1.0f)) / u;
#endif
}

GANFAST_HD double log1p_unit(double e) { return std::log1p(e); }

// ---------------------------------------------------------------------------------------------
// Activations of a logit, in stable form
// ---------------------------------------------------------------------------------------------

// softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^-|x|): never overflows, never log(0).
// NaN propagates through the second term.
template <typename T>
GANFAST_HD T softplus(T x) {
  return (x > T(0) ? x : T(0)) + log1p_unit(exp_nonpos(-std::fabs(x)));
}

// sigmoid(x) with e^-|x| only, so neither branch overflows.
template <typename T>
GANFAST_HD T sigmoid(T x) {
  const T e = exp_nonpos(-std::fabs(x));
  const T p = T(1) / (T(1) + e);
  return x >= T(0) ? p : e * p;
}

// Keeps a NaN logit visible in a derivative whose formula would otherwise hide it
// (the piecewise-constant derivatives of hinge and wasserstein).
template <typename T>
GANFAST_HD T keep_nan(T x, T d) {
  return x != x ? x : d;
}

// ---------------------------------------------------------------------------------------------
// Binary cross-entropy with logits, torch's definition (weight w, pos_weight pw):
//   l = w * [(1 - t) x + (1 + (pw - 1) t) softplus(-x)]
// ---------------------------------------------------------------------------------------------

template <typename T>
GANFAST_HD T bce_logits(T x, T t, T w, T pw) {
  return w * ((T(1) - t) * x + (T(1) + (pw - T(1)) * t) * softplus(-x));
}

// d l / d x = w * [(1 - t) - (1 + (pw - 1) t) sigmoid(-x)]
template <typename T>
GANFAST_HD T bce_logits_dinput(T x, T t, T w, T pw) {
  return w * ((T(1) - t) - (T(1) + (pw - T(1)) * t) * sigmoid(-x));
}

// d l / d t = w * [(pw - 1) softplus(-x) - x]
template <typename T>
GANFAST_HD T bce_logits_dtarget(T x, T t, T w, T pw) {
  (void)t;
  return w * ((pw - T(1)) * softplus(-x) - x);
}

// ---------------------------------------------------------------------------------------------
// Binary cross-entropy on probabilities p in [0, 1], torch's definition: each log is clamped
// at -100 so p = 0 or 1 gives a finite loss; the gradient divides by max(p (1 - p), 1e-12).
// ---------------------------------------------------------------------------------------------

template <typename T>
GANFAST_HD bool probability_in_range(T p) {
  return p >= T(0) && p <= T(1);  // false for NaN too, as torch's check
}

template <typename T>
GANFAST_HD T bce_prob(T p, T t, T w) {
  const T log_p = std::fmax(std::log(p), T(-100));
  const T log_1mp = std::fmax(std::log1p(-p), T(-100));
  return w * ((t - T(1)) * log_1mp - t * log_p);
}

template <typename T>
GANFAST_HD T bce_prob_dinput(T p, T t, T w) {
  return w * (p - t) / std::fmax((T(1) - p) * p, T(1e-12f));  // torch's EPSILON is a float
}

// d l / d t = w * (log(1 - p) - log(p)) = -w * logit(p), unclamped as torch's.
template <typename T>
GANFAST_HD T bce_prob_dtarget(T p, T t, T w) {
  (void)t;
  return w * (std::log1p(-p) - std::log(p));
}

// ---------------------------------------------------------------------------------------------
// GAN objectives on the discriminator's raw logits. The discriminator minimises
//   mean_real gan_d_real(x) + mean_fake gan_d_fake(x)
// and the generator minimises mean_fake gan_g(x):
//   minimax        D: BCE(x_r, a) + BCE(x_f, b)           G: log(1 - sigmoid(x)) = -softplus(x)
//   nonsaturating  D: same as minimax                     G: -log sigmoid(x) = softplus(-x)
//   hinge          D: relu(1 - x_r) + relu(1 + x_f)       G: -x
//   wasserstein    D: -x_r + x_f                          G: -x
//   least_squares  D: (x_r - a)^2 / 2 + (x_f - b)^2 / 2   G: (x - 1)^2 / 2
// with a = real_label, b = fake_label; BCE(x, y) = (1 - y) x + softplus(-x).
// ---------------------------------------------------------------------------------------------

template <GanKind K, typename T>
GANFAST_HD T gan_d_real(T x, T label) {
  if constexpr (K == GanKind::Minimax || K == GanKind::NonSaturating) {
    return (T(1) - label) * x + softplus(-x);
  } else if constexpr (K == GanKind::Hinge) {
    const T v = T(1) - x;
    return v < T(0) ? T(0) : v;  // written so a NaN passes through
  } else if constexpr (K == GanKind::Wasserstein) {
    return -x;
  } else {
    const T d = x - label;
    return T(0.5) * d * d;
  }
}

template <GanKind K, typename T>
GANFAST_HD T gan_d_real_dx(T x, T label) {
  if constexpr (K == GanKind::Minimax || K == GanKind::NonSaturating) {
    return sigmoid(x) - label;
  } else if constexpr (K == GanKind::Hinge) {
    return keep_nan(x, x < T(1) ? T(-1) : T(0));  // relu'(0) = 0, as torch's
  } else if constexpr (K == GanKind::Wasserstein) {
    return keep_nan(x, T(-1));
  } else {
    return x - label;
  }
}

template <GanKind K, typename T>
GANFAST_HD T gan_d_fake(T x, T label) {
  if constexpr (K == GanKind::Minimax || K == GanKind::NonSaturating) {
    return (T(1) - label) * x + softplus(-x);
  } else if constexpr (K == GanKind::Hinge) {
    const T v = T(1) + x;
    return v < T(0) ? T(0) : v;
  } else if constexpr (K == GanKind::Wasserstein) {
    return x;
  } else {
    const T d = x - label;
    return T(0.5) * d * d;
  }
}

template <GanKind K, typename T>
GANFAST_HD T gan_d_fake_dx(T x, T label) {
  if constexpr (K == GanKind::Minimax || K == GanKind::NonSaturating) {
    return sigmoid(x) - label;
  } else if constexpr (K == GanKind::Hinge) {
    return keep_nan(x, x > T(-1) ? T(1) : T(0));
  } else if constexpr (K == GanKind::Wasserstein) {
    return keep_nan(x, T(1));
  } else {
    return x - label;
  }
}

template <GanKind K, typename T>
GANFAST_HD T gan_g(T x) {
  if constexpr (K == GanKind::Minimax) {
    return -softplus(x);
  } else if constexpr (K == GanKind::NonSaturating) {
    return softplus(-x);
  } else if constexpr (K == GanKind::Hinge || K == GanKind::Wasserstein) {
    return -x;
  } else {
    const T d = x - T(1);
    return T(0.5) * d * d;
  }
}

template <GanKind K, typename T>
GANFAST_HD T gan_g_dx(T x) {
  if constexpr (K == GanKind::Minimax) {
    return -sigmoid(x);
  } else if constexpr (K == GanKind::NonSaturating) {
    return -sigmoid(-x);  // = sigmoid(x) - 1 without the cancellation as D saturates
  } else if constexpr (K == GanKind::Hinge || K == GanKind::Wasserstein) {
    return keep_nan(x, T(-1));
  } else {
    return x - T(1);
  }
}

// ---------------------------------------------------------------------------------------------
// Gradient penalties on the per-sample norm n = ||g_b||_2 of D's input gradient, center c:
//   wgan-gp    phi(n) = (n - c)^2                (Gulrajani et al. 2017)
//   one-sided  phi(n) = max(0, n - c)^2
//   r1, r2     phi(n) = n^2  (center unused)      (Mescheder et al. 2018; on real / fake data)
// The gradient w.r.t. g_b is phi'(n) / n * g_b =: s(n) g_b. At n = 0 the wgan-gp and one-sided
// s(n) are taken as 0, as torch's norm backward does (its subgradient at 0 is 0).
// ---------------------------------------------------------------------------------------------

template <PenaltyKind K, typename T>
GANFAST_HD T penalty_value(T n, T c) {
  if constexpr (K == PenaltyKind::WganGp) {
    const T d = n - c;
    return d * d;
  } else if constexpr (K == PenaltyKind::OneSided) {
    const T d = n - c;
    return d < T(0) ? T(0) : d * d;  // written so a NaN passes through
  } else {
    (void)c;
    return n * n;
  }
}

// s(n) = phi'(n) / n
template <PenaltyKind K, typename T>
GANFAST_HD T penalty_scale(T n, T c) {
  if constexpr (K == PenaltyKind::WganGp) {
    return keep_nan(n, n > T(0) ? T(2) * (n - c) / n : T(0));
  } else if constexpr (K == PenaltyKind::OneSided) {
    return keep_nan(n, n > c && n > T(0) ? T(2) * (n - c) / n : T(0));
  } else {
    (void)c;
    return keep_nan(n, T(2));
  }
}

// s'(n) / n, the second-order term: d(s(n) g)/dg = s(n) I + s'(n) / n * g g^T.
template <PenaltyKind K, typename T>
GANFAST_HD T penalty_scale_dn_over_n(T n, T c) {
  if constexpr (K == PenaltyKind::WganGp) {
    return keep_nan(n, n > T(0) ? T(2) * c / (n * n * n) : T(0));
  } else if constexpr (K == PenaltyKind::OneSided) {
    return keep_nan(n, n > c && n > T(0) ? T(2) * c / (n * n * n) : T(0));
  } else {
    (void)c;
    return keep_nan(n, T(0));
  }
}

// x_hat = eps * real + (1 - eps) * fake, as WGAN-GP writes it.
template <typename T>
GANFAST_HD T interpolate(T real, T fake, T eps) {
  return eps * real + (T(1) - eps) * fake;
}

// ---------------------------------------------------------------------------------------------
// Activations of bias_act: f and its derivatives of order 1 to 3 (kMaxActOrder), from x, or from
// f(x) for the activations whose derivatives f(x) determines (act_derivatives_from_y).
// alpha: lrelu's negative slope, elu's alpha; selu uses its fixed constants; softplus is exact
// (no threshold). Piecewise-linear activations have every derivative (zero past the first).
// ---------------------------------------------------------------------------------------------

constexpr double kSeluLambda = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr int kMaxActOrder = 3;

inline constexpr bool act_is_piecewise_linear(ActKind a) {
  return a == ActKind::Linear || a == ActKind::Relu || a == ActKind::Lrelu;
}

// Whether f(x) alone gives every derivative (so the backward may keep y instead of x).
inline constexpr bool act_derivatives_from_y(ActKind a, double alpha) {
  switch (a) {
    case ActKind::Softplus:
    case ActKind::Swish:
      return false;
    case ActKind::Lrelu:
    case ActKind::Elu:
      return alpha >= 0;  // then f(x) > 0 exactly where x > 0
    default:
      return true;
  }
}

template <ActKind A, typename T>
GANFAST_HD T act_value(T x, T alpha) {
  if constexpr (A == ActKind::Linear) {
    return x;
  } else if constexpr (A == ActKind::Relu) {
    return x < T(0) ? T(0) : x;  // NaN passes, as torch.relu
  } else if constexpr (A == ActKind::Lrelu) {
    return x > T(0) ? x : x * alpha;
  } else if constexpr (A == ActKind::Tanh) {
    return std::tanh(x);
  } else if constexpr (A == ActKind::Sigmoid) {
    return sigmoid(x);
  } else if constexpr (A == ActKind::Elu) {
    return x > T(0) ? x : alpha * std::expm1(x);
  } else if constexpr (A == ActKind::Selu) {
    return T(kSeluLambda) * (x > T(0) ? x : T(kSeluAlpha) * std::expm1(x));
  } else if constexpr (A == ActKind::Softplus) {
    return softplus(x);
  } else {
    return x * sigmoid(x);
  }
}

// d^order f / dx^order at x; order in [1, kMaxActOrder], any order >= 1 when piecewise linear.
template <ActKind A, typename T>
GANFAST_HD T act_derivative(T x, T alpha, int order) {
  if constexpr (A == ActKind::Linear) {
    return keep_nan(x, order == 1 ? T(1) : T(0));
  } else if constexpr (A == ActKind::Relu) {
    return keep_nan(x, order == 1 && x > T(0) ? T(1) : T(0));  // relu'(0) = 0, as torch's
  } else if constexpr (A == ActKind::Lrelu) {
    return keep_nan(x, order == 1 ? (x > T(0) ? T(1) : alpha) : T(0));
  } else if constexpr (A == ActKind::Tanh) {
    const T t = std::tanh(x), q = T(1) - t * t;
    return order == 1 ? q : order == 2 ? T(-2) * t * q : q * (T(6) * t * t - T(2));
  } else if constexpr (A == ActKind::Sigmoid || A == ActKind::Softplus || A == ActKind::Swish) {
    // sigmoid: s1 = s (1 - s), s2 = s1 (1 - 2 s), s3 = s1 (1 - 6 s + 6 s^2);
    // softplus of order k is sigmoid of order k - 1; swish of order k is k s_(k-1) + x s_k.
    const T s = sigmoid(x), s1 = s * (T(1) - s);
    const T s2 = s1 * (T(1) - T(2) * s), s3 = s1 * (T(1) - T(6) * s + T(6) * s * s);
    if constexpr (A == ActKind::Sigmoid) {
      return order == 1 ? s1 : order == 2 ? s2 : s3;
    } else if constexpr (A == ActKind::Softplus) {
      return order == 1 ? s : order == 2 ? s1 : s2;
    } else {
      return order == 1 ? s + x * s1 : order == 2 ? T(2) * s1 + x * s2 : T(3) * s2 + x * s3;
    }
  } else if constexpr (A == ActKind::Elu) {
    // order 1: x > 0: 1, else alpha e^x (torch: elu'(0) = alpha); order >= 2: x < 0: alpha e^x,
    // else 0 (torch's elu double backward masks with x < 0). NaN takes the exp branch: NaN.
    if (order == 1) return x > T(0) ? T(1) : alpha * std::exp(x);
    return x >= T(0) ? T(0) : alpha * std::exp(x);
  } else {
    if (order == 1) return x > T(0) ? T(kSeluLambda) : T(kSeluLambda * kSeluAlpha) * std::exp(x);
    return x >= T(0) ? T(0) : T(kSeluLambda * kSeluAlpha) * std::exp(x);
  }
}

// The same derivative from f = f(x), for the activations act_derivatives_from_y accepts.
template <ActKind A, typename T>
GANFAST_HD T act_derivative_from_y(T f, T alpha, int order) {
  if constexpr (A == ActKind::Linear) {
    return keep_nan(f, order == 1 ? T(1) : T(0));
  } else if constexpr (A == ActKind::Relu) {
    return keep_nan(f, order == 1 && f > T(0) ? T(1) : T(0));
  } else if constexpr (A == ActKind::Lrelu) {
    return keep_nan(f, order == 1 ? (f > T(0) ? T(1) : alpha) : T(0));
  } else if constexpr (A == ActKind::Tanh) {
    const T q = T(1) - f * f;
    return order == 1 ? q : order == 2 ? T(-2) * f * q : q * (T(6) * f * f - T(2));
  } else if constexpr (A == ActKind::Sigmoid) {
    const T q = f * (T(1) - f);
    return order == 1 ? q : order == 2 ? q * (T(1) - T(2) * f) : q * (T(1) - T(6) * f + T(6) * f * f);
  } else if constexpr (A == ActKind::Elu) {
    // alpha e^x = f + alpha; f >= 0 exactly where x >= 0 (orders >= 2: 0 at x = 0, as above)
    if (order == 1) return f > T(0) ? T(1) : f + alpha;
    return f >= T(0) ? T(0) : f + alpha;
  } else if constexpr (A == ActKind::Selu) {
    if (order == 1) return f > T(0) ? T(kSeluLambda) : f + T(kSeluLambda * kSeluAlpha);
    return f >= T(0) ? T(0) : f + T(kSeluLambda * kSeluAlpha);
  } else {
    (void)alpha;
    (void)order;
    return f;  // unused: softplus and swish always take x (act_derivatives_from_y)
  }
}

// bias_act's output from v = x + b: clamp(gain * f(v), -clamp, clamp); clamp < 0: none.
template <ActKind A, typename T>
GANFAST_HD T bias_act_value(T v, T alpha, T gain, T clamp) {
  const T y = gain * act_value<A>(v, alpha);
  if (clamp < T(0)) return y;
  return y > clamp ? clamp : y < -clamp ? -clamp : y;  // NaN passes
}

// d^order y / dv^order from v = x + b: gain * f^(order)(v), 0 where the clamp cuts (torch's
// clamp passes the gradient on [-clamp, clamp]).
template <ActKind A, typename T>
GANFAST_HD T bias_act_derivative(T v, T alpha, T gain, T clamp, int order) {
  const T d = gain * act_derivative<A>(v, alpha, order);
  if (clamp < T(0)) return d;
  const T y = gain * act_value<A>(v, alpha);
  return y > clamp || y < -clamp ? T(0) : d;
}

// The same from y (the saved output): f = y / gain; 0 where |y| reached the clamp (at exactly
// +-clamp this path cannot tell a cut value from an uncut one and takes 0).
template <ActKind A, typename T>
GANFAST_HD T bias_act_derivative_from_y(T y, T alpha, T gain, T clamp, int order) {
  if (clamp >= T(0) && (y >= clamp || y <= -clamp)) return T(0);
  return gain * act_derivative_from_y<A>(y / gain, alpha, order);
}

// ---------------------------------------------------------------------------------------------
// batch_norm_act: out = f(z), z = w (x - mean) invstd + b, written per channel as
// z = x * scale + shift (scale = w invstd, shift = b - mean scale: one multiply-add per element).
// The backward with dz = dy f'(z) (act_derivative, order 1) and a = w invstd:
//   training  dx = a (dz - mean(dz) - (x - mean) k),  k = invstd^2 mean(dz (x - mean))
//   eval      dx = a dz                               (mean_dz = k = 0)
// (x - mean) rather than x: no cancellation where |mean| is large against the spread.
// ---------------------------------------------------------------------------------------------

template <ActKind A, typename T>
GANFAST_HD T batch_norm_act_value(T x, T scale, T shift, T alpha) {
  return act_value<A>(x * scale + shift, alpha);
}

// dz = dy f'(z) at z = x * scale + shift.
template <ActKind A, typename T>
GANFAST_HD T batch_norm_act_dz(T dy, T x, T scale, T shift, T alpha) {
  return dy * act_derivative<A>(x * scale + shift, alpha, 1);
}

template <typename T>
GANFAST_HD T batch_norm_grad_input(T dz, T x, T mean, T a, T mean_dz, T k) {
  return a * (dz - mean_dz - (x - mean) * k);
}

// Conditional BatchNorm (weight w[n, c] per sample): with a = w[n, c] invstd[c] the training
// gradient is dx = invstd (w dz - mean(w dz) - x_hat mean(w dz x_hat)) = a dz - p - (x - mean) q,
// p = invstd mean(w dz), q = invstd^3 mean(w dz (x - mean)) per channel (means over n and s); the
// per-channel factoring above would divide by w. Eval: p = q = 0.
template <typename T>
GANFAST_HD T batch_norm_grad_input_per_sample(T dz, T x, T mean, T a, T p, T q) {
  return a * dz - p - (x - mean) * q;
}

// ---------------------------------------------------------------------------------------------
// info_loss (InfoGAN's mutual-information loss). The categorical part of row b is
// logsumexp_k x_k - x_c = m + log(sum_k e^(x_k - m)) - x_c (m = max_k x_k, every exponent <= 0:
// exp_nonpos), its gradient softmax_k - [k == c]. The continuous part, per element, is the
// Gaussian negative log-likelihood without its constant: ls + z^2 / 2, z = (c - mu) e^(-ls);
// d/dmu = -z e^(-ls), d/dc = z e^(-ls), d/dls = 1 - z^2. Without logstd (sigma = 1): (c - mu)^2 / 2.
// ---------------------------------------------------------------------------------------------

// e^(-s) for any s, from exp_nonpos (vectorisable on the host): e^(-|s|), inverted where s < 0.
// (float32: 1 / 0 = inf for s < -87, where e^87..e^88.7 would still be finite.)
template <typename T>
GANFAST_HD T exp_neg(T s) {
  const T e = exp_nonpos(-std::fabs(s));
  return s >= T(0) ? e : T(1) / e;
}

// The larger of a and b, NaN in b ignored (a NaN is kept by the sum of exponentials instead).
template <typename T>
GANFAST_HD T max_ignoring_nan(T a, T b) {
  return b > a ? b : a;
}

// The Gaussian term of one element; has_logstd false: ls unused (sigma = 1).
template <typename T>
GANFAST_HD T info_gauss(T c, T mu, T ls, bool has_logstd) {
  if (!has_logstd) {
    const T d = c - mu;
    return T(0.5) * d * d;
  }
  const T z = (c - mu) * exp_neg(ls);
  return ls + T(0.5) * z * z;
}

// (d/dmu, d/dls) of info_gauss; d/dc = -d/dmu. Without logstd d/dls is 0.
template <typename T>
GANFAST_HD void info_gauss_grad(T c, T mu, T ls, bool has_logstd, T& dmu, T& dls) {
  if (!has_logstd) {
    dmu = mu - c;
    dls = T(0);
    return;
  }
  const T inv_sigma = exp_neg(ls);
  const T z = (c - mu) * inv_sigma;
  dmu = -z * inv_sigma;
  dls = T(1) - z * z;
}

// ---------------------------------------------------------------------------------------------
// cycle_loss family: weight * mean |r - o| per (reconstructed, original) pair, summed over pairs
// ---------------------------------------------------------------------------------------------

// |r - o|: the term summed (NaN propagates).
template <typename T>
GANFAST_HD T l1_term(T r, T o) {
  const T d = r - o;
  return d < T(0) ? -d : d;
}

// d|r - o| / dr: sign(r - o) with torch's l1_loss conventions: 0 at equality (the subgradient) and
// 0 where r - o is NaN (torch's sgn of NaN in its backward). Selects only: GCC vectorises it.
template <typename T>
GANFAST_HD T l1_sign(T r, T o) {
  const T d = r - o;
  T s = d > T(0) ? T(1) : T(0);
  return d < T(0) ? T(-1) : s;
}

// ---------------------------------------------------------------------------------------------
// spectral_norm family: the power method's normalisation and sigma
// ---------------------------------------------------------------------------------------------

// F.normalize's denominator: max(||x||, eps) from the sum of squares.
template <typename T>
GANFAST_HD T sn_norm_denominator(T sumsq, T eps) {
  const T n = std::sqrt(sumsq);
  return n > eps ? n : eps;
}

// sigma = u^T W v after the step v = t / max(||t||, eps), t = W^T u: (W^T u) . v = ||t||^2 / that
// denominator, so the last step's t gives sigma without reading W a third time.
template <typename T>
GANFAST_HD T sn_sigma_from_t(T t_sumsq, T denominator) {
  return t_sumsq / denominator;
}

// d(weight / sigma) / d weight applied to g, u and v constants: (g - c u_i v_j) / sigma, c = <g, out>.
template <typename T>
GANFAST_HD T sn_grad(T g, T c, T ui, T vj, T sigma) {
  return (g - c * ui * vj) / sigma;
}

// ---------------------------------------------------------------------------------------------
// orthogonal_regularization family: beta * sum_W ||W W^T * (1 - I)||_F^2
// ---------------------------------------------------------------------------------------------

// One Gram entry's term: its square, 0 on the diagonal (the mask 1 - I).
template <typename T>
GANFAST_HD T ortho_term(T g, bool diagonal) {
  return diagonal ? T(0) : g * g;
}

}  // namespace math
}  // namespace ganfast
