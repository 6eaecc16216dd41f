// ganfast.cpp: every operator's schema, defined once. The kernels register themselves per
// dispatch key (csrc/cpu/*.cpp: CPU, csrc/cuda/*.cu: CUDA), the autograd formulas in
// csrc/autograd.cpp, the fake (meta) implementations in ganfast/ops.
//
// Conventions shared by every op family:
//   * string enums ("mean", "nonsaturating") rather than integer codes, so no table of
//     numbers is duplicated between C++, Triton and Python;
//   * each op `x` has `x_backward` (gradient w.r.t. its first input) as an op of its own,
//     so autograd can differentiate it again where a family promises double backward.
#include <torch/library.h>


TORCH_LIBRARY(ganfast, m) {
  // ---- losses family (csrc/cpu/losses.cpp, csrc/cuda/losses.cu, ganfast/triton/losses.py) ----
  // torch.nn.functional.binary_cross_entropy_with_logits; weight and pos_weight broadcast to
  // input; reduction is "none", "mean" or "sum".
  m.def("bce_with_logits(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
        "str reduction) -> Tensor");
  m.def("bce_with_logits_backward(Tensor grad_output, Tensor input, Tensor target, "
        "Tensor? weight, Tensor? pos_weight, str reduction) -> Tensor");
  m.def("bce_with_logits_target_backward(Tensor grad_output, Tensor input, Tensor target, "
        "Tensor? weight, Tensor? pos_weight, str reduction) -> Tensor");
  // torch.nn.functional.binary_cross_entropy on probabilities in [0, 1].
  m.def("binary_cross_entropy(Tensor input, Tensor target, Tensor? weight, str reduction) -> Tensor");
  m.def("binary_cross_entropy_backward(Tensor grad_output, Tensor input, Tensor target, "
        "Tensor? weight, str reduction) -> Tensor");
  m.def("binary_cross_entropy_target_backward(Tensor grad_output, Tensor input, Tensor target, "
        "Tensor? weight, str reduction) -> Tensor");
  // The discriminator's GAN loss: mean over real of its real term + mean over fake of its
  // fake term, both halves in one kernel (kinds in csrc/gan_math.h). Returns a 0-dim tensor.
  m.def("gan_d_loss(Tensor real_logits, Tensor fake_logits, str kind, float real_label, "
        "float fake_label) -> Tensor");
  m.def("gan_d_loss_backward(Tensor grad_output, Tensor real_logits, Tensor fake_logits, "
        "str kind, float real_label, float fake_label) -> (Tensor, Tensor)");
  // The generator's GAN loss: mean over fake of its term. Returns a 0-dim tensor.
  m.def("gan_g_loss(Tensor fake_logits, str kind) -> Tensor");
  m.def("gan_g_loss_backward(Tensor grad_output, Tensor fake_logits, str kind) -> Tensor");

  // ---- info_loss family (csrc/cpu/info_loss.cpp, csrc/cuda/info_loss.cu, ganfast/triton/info_loss.py)
  // InfoGAN's mutual-information loss, a 0-dim tensor:
  //   cat_weight * mean_b [logsumexp_k x_bk - x_b,c_b]                       (cat_logits (B, K), cat_codes (B,) int64)
  // + cont_weight * mean_b sum_j [ls_bj + 0.5 ((c_bj - mu_bj) exp(-ls_bj))^2]  (cont tensors (B, J); ls = 0 if absent)
  // Each part optional (not both absent); the 0.5 log 2 pi constant dropped. Checks in ganfast_common.h.
  m.def("info_loss(Tensor? cat_logits, Tensor? cat_codes, Tensor? cont_mean, Tensor? cont_codes, "
        "Tensor? cont_logstd, float cat_weight, float cont_weight) -> Tensor");
  // The gradients w.r.t. cat_logits, cont_mean, cont_codes (= -grad_cont_mean) and cont_logstd, in
  // one pass; an absent operand's gradient is an empty (0,) tensor. First order only.
  m.def("info_loss_backward(Tensor grad_output, Tensor? cat_logits, Tensor? cat_codes, Tensor? cont_mean, "
        "Tensor? cont_codes, Tensor? cont_logstd, float cat_weight, float cont_weight) "
        "-> (Tensor grad_cat_logits, Tensor grad_cont_mean, Tensor grad_cont_codes, Tensor grad_cont_logstd)");

  // ---- penalty family (csrc/cpu/penalty.cpp, csrc/cuda/penalty.cu, ganfast/triton/penalty.py) ----
  // x_hat[b] = eps[b] * real[b] + (1 - eps[b]) * fake[b]; real and fake of one shape (B, ...),
  // eps of shape (B,). Linear in (real, fake), so its backward's derivative is itself again.
  m.def("interpolate(Tensor real, Tensor fake, Tensor eps) -> Tensor");
  m.def("interpolate_backward(Tensor grad_output, Tensor eps) -> (Tensor, Tensor)");
  // The penalty on a gradient g of shape (B, ...): mean over b of phi(||g[b]||_2) (kinds in
  // csrc/gan_math.h). Returns (penalty, norms): the 0-dim penalty in g's dtype, and the B norms
  // (float32, float64 for float64 g), which the backward ops take as a cache (never
  // differentiated: their derivatives account for norms = ||g||).
  m.def("penalty_from_grad(Tensor grad, str kind, float center) -> (Tensor, Tensor)");
  m.def("penalty_from_grad_backward(Tensor grad_output, Tensor grad, Tensor norms, str kind, "
        "float center) -> Tensor");
  // The derivative of penalty_from_grad_backward: given its upstream gradient grad_grad (shaped
  // like grad), the gradients w.r.t. grad_output (0-dim) and w.r.t. grad.
  m.def("penalty_from_grad_double_backward(Tensor grad_grad, Tensor grad_output, Tensor grad, "
        "Tensor norms, str kind, float center) -> (Tensor, Tensor)");

  // ---- bias_act family (csrc/cpu/bias_act.cpp, csrc/cuda/bias_act.cu, ganfast/triton/bias_act.py)
  // y = clamp(gain * act(x + b), -clamp, clamp), b of shape (x.size(dim),) broadcast along
  // `dim`; clamp < 0 means no clamp. Activations in csrc/gan_math.h.
  m.def("bias_act(Tensor x, Tensor? b, int dim, str act, float alpha, float gain, float clamp) -> Tensor");
  // grad_output * d^order y / dx^order, elementwise (order >= 1), evaluated from x + b where x is
  // given, else from y (activations whose derivatives y determines; see act_derivatives_from_y). The
  // derivative of order k w.r.t. grad_output is order k itself; w.r.t. x it is order k + 1.
  m.def("bias_act_backward(Tensor grad_output, Tensor? x, Tensor? b, Tensor y, int dim, str act, "
        "float alpha, float gain, float clamp, int order) -> Tensor");
  // bias_act_backward(..., order 1) and the bias gradient in one pass: grad_input as that op gives it
  // (same layout), grad_bias = grad_input summed over every dim but `dim`, shape and dtype of b
  // (required), accumulated in float32 (float64 for float64), from the per-channel partial sums of
  // the pass that writes grad_input; deterministic. Not differentiable (create_graph takes
  // bias_act_backward and a sum, csrc/autograd/bias_act.cpp).
  m.def("bias_act_backward_with_bias(Tensor grad_output, Tensor? x, Tensor? b, Tensor y, int dim, str act, "
        "float alpha, float gain, float clamp) -> (Tensor grad_input, Tensor grad_bias)");

  // ---- batch_norm_act family (csrc/cpu/batch_norm_act.cpp, csrc/cuda/batch_norm_act.cu,
  // ganfast/triton/batch_norm_act.py)
  // out = act(weight[c] * (x - mean[c]) * invstd[c] + bias[c]) over input (N, C, *), c = index
  // along dim 1; weight None = 1, bias None = 0; act and alpha as bias_act's (gain 1, no clamp).
  // training: mean and biased variance over every dim but 1, and running_mean / running_var (when
  // given) updated in place: r = (1 - momentum) r + momentum stat, the variance unbiased. Eval:
  // the running statistics, nothing mutated. Returns (out, save_mean, save_invstd): the mean and
  // 1 / sqrt(var + eps) used, shape (C,), float32 (float64 for float64 input): the backward's cache.
  // Conditional BatchNorm (issue 12): weight and bias may each also be (N, C), one per sample:
  // out = act(weight[n, c] * (x - mean[c]) * invstd[c] + bias[n, c]) (statistics as above, per
  // channel); out is then NCHW contiguous whatever input's layout.
  m.def("batch_norm_act(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, bool training, float momentum, float eps, str act, float alpha) "
        "-> (Tensor out, Tensor save_mean, Tensor save_invstd)");
  // The gradients w.r.t. input, weight and bias (the last two (C,), in weight's dtype, input's
  // without weight; always defined). Not differentiable itself: double backward is an error.
  // A per-sample (N, C) weight or bias gets an (N, C) gradient (summed over the spatial dims only);
  // the input gradient is then invstd (w g - mean(w g) - x_hat mean(w g x_hat)), g = dy act'(z).
  m.def("batch_norm_act_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
        "Tensor save_mean, Tensor save_invstd, bool training, str act, float alpha) "
        "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");

  // ---- instance_norm_act family (its kernels are batch_norm_act's, serving both: csrc/cpu/batch_norm_act.cpp,
  // csrc/cuda/batch_norm_act.cu, ganfast/triton/batch_norm_act.py)
  // out = act(weight[c] * (x - mean[n, c]) * invstd[n, c] + bias[c]) over input (N, C, *) (at least 3 dims,
  // S = prod(sizes[2:]) > 1 values per instance; S = 0 gives an empty result), the mean and biased
  // variance of each instance (n, c) over its S values: F.instance_norm with no running statistics.
  // Instance norm is batch norm over the per-(n, c) axis: the view (1, N * C, S) of contiguous input,
  // channel k = n * C + c, affine parameter k % C. weight None = 1, bias None = 0; act and alpha as
  // bias_act's (gain 1, no clamp); eps > 0. Returns (out, save_mean, save_invstd): out contiguous (a
  // non-contiguous input is made contiguous), the mean and 1 / sqrt(var + eps) of each instance, shape
  // (N * C,) (index n * C + c), float32 (float64 for float64 input): the backward's cache.
  m.def("instance_norm_act(Tensor input, Tensor? weight, Tensor? bias, float eps, str act, float alpha) "
        "-> (Tensor out, Tensor save_mean, Tensor save_invstd)");
  // The gradients w.r.t. input (contiguous), weight and bias (the last two (C,), summed over the
  // samples, in weight's dtype, input's without weight; always defined). Not differentiable itself:
  // double backward is an error.
  m.def("instance_norm_act_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
        "Tensor save_mean, Tensor save_invstd, str act, float alpha) "
        "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");

  // ---- cycle_loss family (csrc/cpu/cycle_loss.cpp, csrc/cuda/cycle_loss.cu, ganfast/triton/cycle_loss.py)
  // CycleGAN's cycle-consistency / identity L1 loss over a list of pairs:
  // weight * sum_i mean|reconstructed[i] - original[i]| (each mean over its own pair's elements),
  // all pairs in one launch. Pairs of one dtype and device, each pair of one shape; weight finite
  // and >= 0. Returns a 0-dim tensor in the inputs' dtype.
  m.def("cycle_loss(Tensor[] reconstructed, Tensor[] original, float weight) -> Tensor");
  // The gradients w.r.t. every reconstructed[i] (weight * grad_output / numel_i * sign(r - o), 0 at
  // r == o) and every original[i] (their negatives), all pairs in one launch, each in its input's
  // dtype and layout. grad_reconstructed / grad_original say which list to write; the other comes
  // back empty. First order only: not differentiable itself.
  m.def("cycle_loss_backward(Tensor grad_output, Tensor[] reconstructed, Tensor[] original, float weight, "
        "bool grad_reconstructed, bool grad_original) -> (Tensor[] grad_reconstructed, Tensor[] grad_original)");

  // ---- spectral_norm family (csrc/cpu/spectral_norm.cpp, csrc/cuda/spectral_norm.cu,
  // ganfast/triton/spectral_norm.py): torch.nn.utils.parametrizations.spectral_norm's forward, fused.
  // weight (>= 2 dims) read as the matrix W (h, w) of torch's _reshape_weight_to_matrix: dim first,
  // the others flattened in order, i.e. weight viewed as (A, h, B), A = prod(sizes[:dim]),
  // h = sizes[dim], B = prod(sizes[dim+1:]), column j = a * B + b. u (h,) and v (w,) contiguous, of
  // weight's dtype and device. training: n_power_iterations >= 1 steps of u = normalize(W v),
  // v = normalize(W^T u) (normalize(x) = x / max(||x||, eps)) written into u and v in place, and
  // sigma = u^T W v = ||W^T u||^2 / max(||W^T u||, eps) from the last step; eval: u, v read only,
  // sigma = u^T W v. Returns (out, cache): out = weight / sigma (contiguous, weight's shape) and
  // cache = [sigma, u, v] (1 + h + w,) in float32 (float64 for float64 weight): the u, v that sigma
  // is made of, the backward's constants (torch clones them for the same reason).
  m.def("spectral_norm(Tensor weight, Tensor(a!) u, Tensor(b!) v, int dim, int n_power_iterations, float eps, "
        "bool training) -> (Tensor out, Tensor cache)");
  // grad_weight = (G - <G, out> u v^T) / sigma with <G, out> = <G, weight> / sigma (u, v, sigma from
  // cache, constants as in torch). First order only: not differentiable itself.
  m.def("spectral_norm_backward(Tensor grad_output, Tensor weight, Tensor cache, int dim) -> Tensor");

  // ---- orthogonal_regularization family (csrc/cpu/orthogonal_regularization.cpp,
  // csrc/cuda/orthogonal_regularization.cu, ganfast/triton/orthogonal_regularization.py)
  // BigGAN's orthogonal regularization (Brock et al. 2019, eq. 3) over a list of weights, each of at
  // least 2 dims and read as W = w.reshape(w.size(0), -1) (m x k): beta * sum_W ||W W^T * (1 - I)||_F^2.
  // Returns (loss, cache): loss 0-dim in the weights' dtype; cache 1-D in float32 (float64 for float64
  // weights), per weight in list order either W W^T with its diagonal zeroed (m*m values) or, for a tall
  // W (m >= 2k: the k x k Gram is the cheaper GEMM), W^T W (k*k values) then the squared row norms d
  // (m values), using ||W W^T (1 - I)||^2 = ||W^T W||^2 - ||d||^2. The backward's cache, never
  // differentiated. Weights of one floating dtype and device; beta finite and >= 0.
  m.def("orthogonal_regularization(Tensor[] weights, float beta) -> (Tensor loss, Tensor cache)");
  // The gradient w.r.t. every weight, 4 * beta * grad_output * (W W^T * (1 - I)) W (tall: W (W^T W) -
  // d * W), each contiguous in its weight's shape and dtype. First order only: not differentiable itself.
  m.def("orthogonal_regularization_backward(Tensor grad_output, Tensor[] weights, Tensor cache, float beta) "
        "-> Tensor[]");
}

// `import ganfast._C` loads this library, whose static initialisers register the ops above and
// their kernels; the Python module itself is defined in python_module.cpp.
