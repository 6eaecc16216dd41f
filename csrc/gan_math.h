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

}  // namespace math
}  // namespace ganfast
