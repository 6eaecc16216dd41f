"""Gradient penalties with a fused double backward: WGAN-GP, one-sided, R1 and R2.

    import ganfast.penalty as P
    loss_d = L.discriminator_loss(D(x), D(x_fake), kind="wasserstein")
    loss_d = loss_d + P.gradient_penalty(D, x, x_fake, kind="wgan-gp", weight=10.0)
    loss_d.backward()

gradient_penalty takes the gradient of D at x_hat with create_graph=True (the double backward
that torch.compile refuses), then the fused penalty: per-sample norms and their mean in one
kernel forward, one kernel backward, and a second derivative of its own (gradgradcheck).

    wgan-gp    weight * E (||grad D(x_hat)|| - center)^2, x_hat between real and fake
    one-sided  weight * E max(0, ||grad D(x_hat)|| - center)^2
    r1         weight * E ||grad D(x_real)||^2    (StyleGAN2 uses weight gamma / 2)
    r2         weight * E ||grad D(x_fake)||^2

And BigGAN's orthogonal regularization of G's weights (no gradient penalty; see its docstring):

    orthogonal_regularization(weights, beta)    beta * sum_W ||W W^T * (1 - I)||_F^2, differentiable
    orthogonal_regularization_(G, beta)         its gradient added to each .grad in place
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from . import ops
from ._args import PENALTY_KINDS, parse_penalty_kind

__all__ = ["PENALTY_KINDS", "gradient_penalty", "interpolate", "orthogonal_regularization",
           "orthogonal_regularization_", "penalty_from_grad"]

_INTERPOLATING = ("wgan-gp", "one-sided")


def _check_tensor(t, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"ganfast.penalty: {name} must be a tensor; got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"ganfast.penalty: {name} must be a floating-point tensor; got {t.dtype}")
    if t.dim() == 0:
        raise ValueError(f"ganfast.penalty: {name} must have a batch dimension (shape (B, ...))")


def interpolate(real: Tensor, fake: Tensor, eps: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """x_hat = eps * real + (1 - eps) * fake with eps ~ U(0, 1) drawn per sample (or given, of
    shape (B,) or (B, 1, ..., 1)), in one kernel; differentiable w.r.t. real and fake. eps is drawn
    from `generator` on the generator's own device and moved to real's."""
    _check_tensor(real, "real")
    _check_tensor(fake, "fake")
    if real.shape != fake.shape:
        raise ValueError(f"ganfast.penalty.interpolate: real and fake must have the same shape; got "
                         f"{tuple(real.shape)} and {tuple(fake.shape)}")
    batch = real.shape[0]
    if eps is None:
        dtype = torch.float64 if real.dtype == torch.float64 else torch.float32
        # Drawn where the generator lives (torch refuses a CPU generator for CUDA tensors), then
        # moved: a seeded generator gives the same eps whatever device the samples are on.
        where = real.device if generator is None else generator.device
        eps = torch.rand(batch, dtype=dtype, device=where, generator=generator).to(real.device)
    elif isinstance(eps, Tensor) and eps.dim() > 1 and eps.numel() == batch and eps.shape[0] == batch:
        eps = eps.reshape(batch)
    return ops.interpolate(real, fake, eps)


def penalty_from_grad(grad: Tensor, kind: str = "wgan-gp", center: float = 1.0) -> Tensor:
    """The mean over samples of phi(||grad[b]||_2): (n - center)^2 for wgan-gp,
    max(0, n - center)^2 for one-sided, n^2 for r1 and r2 (center unused). grad: (B, ...), any
    layout (channels_last and non-contiguous gradients included)."""
    kind = parse_penalty_kind(kind)
    if kind in _INTERPOLATING and not center >= 0:
        raise ValueError(f"ganfast.penalty: center must be >= 0; got {center}")
    penalty, _ = ops.penalty_from_grad(grad, kind, float(center))
    return penalty


def gradient_penalty(discriminator: Callable[[Tensor], Tensor], real: Tensor, fake: Optional[Tensor] = None,
                     kind: str = "wgan-gp", weight: float = 10.0, center: float = 1.0,
                     eps: Optional[Tensor] = None, lean: bool = False) -> Tensor:
    """weight * penalty_from_grad(d D(x) / d x) at x = interpolate(real, fake) (wgan-gp,
    one-sided), real (r1) or fake (r2). D may be any callable returning (B,) or (B, 1) logits
    (a lambda closing over labels works); real and fake are detached, D's parameters receive the
    penalty's gradient when the result is backpropagated.

    lean=True records D's ganfast activations lean (ganfast.ops.lean_double_backward): the exact
    zeros eager sends back through D's forward graph are not computed, which removes a backward
    pass over D per penalty. The gradients of D's parameters are the same numbers, except that a
    parameter the penalty reaches only through those zeros (a bias, with piecewise-linear
    activations) gets no gradient from it (None, where eager gives zeros). The engine
    (ganfast.train, ganfast.steps) uses it; off by default so that eager's zeros stay."""
    kind = parse_penalty_kind(kind)
    _check_tensor(real, "real")
    if kind != "r1":
        if fake is None:
            raise ValueError(f"ganfast.penalty.gradient_penalty: kind '{kind}' needs fake samples")
        _check_tensor(fake, "fake")
        if fake.shape != real.shape and kind in _INTERPOLATING:
            raise ValueError(f"ganfast.penalty.gradient_penalty: real and fake must have the same shape; "
                             f"got {tuple(real.shape)} and {tuple(fake.shape)}")
    if kind in _INTERPOLATING:
        x = interpolate(real.detach(), fake.detach(), eps)
    else:
        x = (real if kind == "r1" else fake).detach()
    x.requires_grad_(True)
    with torch.enable_grad(), ops.lean_double_backward(lean):
        return _penalty_at(x, discriminator(x), kind, weight, center)


def _penalty_at(x: Tensor, out, kind: str, weight: float, center: float) -> Tensor:
    """weight * penalty_from_grad(d out / d x) for out = discriminator(x) (already computed, so
    that a caller can share the forward with a loss: ganfast.steps' R1)."""
    with torch.enable_grad():
        if not isinstance(out, Tensor):
            raise TypeError(f"ganfast.penalty.gradient_penalty: the discriminator must return a tensor; got "
                            f"{type(out).__name__}")
        batch = x.shape[0]
        if out.dim() == 0 or out.shape[0] != batch or out.numel() != batch:
            raise ValueError(f"ganfast.penalty.gradient_penalty: the discriminator's output must have shape "
                             f"(B,) or (B, 1) with B = {batch}; got {tuple(out.shape)}")
        if not out.requires_grad:
            raise ValueError("ganfast.penalty.gradient_penalty: the discriminator's output does not depend on "
                             "its input (it does not require grad)")
        (grad,) = torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out), create_graph=True,
                                      allow_unused=True)
    if grad is None:
        raise ValueError("ganfast.penalty.gradient_penalty: the discriminator's output does not depend on its "
                         "input (autograd gives no gradient with respect to it)")
    return penalty_from_grad(grad, kind, center) * weight


# ---- orthogonal regularization (BigGAN, Brock et al. 2019, eq. 3) ---------------------------------

def _ortho_tensors(module_or_params, where: str):
    params = module_or_params.parameters() if isinstance(module_or_params, torch.nn.Module) else module_or_params
    if isinstance(params, Tensor):
        params = [params]
    out = []
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"ganfast.penalty.{where}: every weight must be a tensor; got {type(p).__name__} at "
                            f"index {i}")
        out.append(p)
    return out


def orthogonal_regularization(weights, beta: float = 1e-4) -> Tensor:
    """BigGAN's orthogonal regularization: beta * sum_W ||W W^T * (1 - I)||_F^2.

    `weights`: an iterable of tensors (or a module: its parameters). Those with fewer than 2 dims
    (biases, gains, SAGAN's gamma) are skipped, as BigGAN does; each other w is read as the matrix
    W = w.reshape(w.shape[0], -1) (a conv's filters as rows). All weights of one floating dtype and
    device; beta finite and >= 0. Returns a 0-dim tensor in the weights' dtype, differentiable
    (first order: double backward is an error). With no weight of 2 or more dims the result is a 0
    (not requiring grad) in the dtype and on the device of the first tensor given, or
    torch.get_default_dtype() on the CPU when none was given.

    One launch reduces every weight's masked Gram (the Grams themselves are GEMMs: BLAS / cuBLAS;
    a tall W, m >= 2k rows, uses the k x k Gram W^T W and ||W W^T (1 - I)||^2 = ||W^T W||^2 -
    sum_i ||w_i||^4). The gradient is exact: 4 * beta * (W W^T * (1 - I)) W per weight.

    The factor, against BigGAN-PyTorch: its utils.ortho(model, strength) adds
    strength * 2 * (W W^T * (1 - I)) W to the gradient, the gradient of (strength / 2) * ||.||^2. So
    BigGAN-PyTorch's strength s is beta = s / 2 here (a strength of 1e-4 is beta 5e-5);
    the paper's beta (1e-4) is this beta.
    """
    ws = _ortho_tensors(weights, "orthogonal_regularization")
    mats = [w for w in ws if w.dim() >= 2]
    if not mats:
        _check_beta(beta, "orthogonal_regularization")
        like = ws[0] if ws else None
        return torch.zeros((), dtype=like.dtype if like is not None else torch.get_default_dtype(),
                           device=like.device if like is not None else "cpu")
    return ops.orthogonal_regularization(mats, beta)


def _check_beta(beta, where: str) -> None:
    import math

    b = float(beta)
    if not (math.isfinite(b) and b >= 0):
        raise ValueError(f"ganfast.penalty.{where}: beta must be finite and non-negative; got {b:g}")


@torch.no_grad()
def orthogonal_regularization_(module_or_params, beta: float = 1e-4) -> None:
    """Adds the gradient of orthogonal_regularization(params, beta) to each parameter's .grad in
    place, without building a graph (a .grad that is None is created): BigGAN-PyTorch's way of
    applying it, after G's loss backward and before the optimizer step:

        loss_g.backward()
        ganfast.penalty.orthogonal_regularization_(G_params, beta=1e-4)
        opt_g.step()

    `module_or_params`: a module (all its parameters) or an iterable of parameters; those with fewer
    than 2 dims and those that do not require grad are skipped (exclude others, BigGAN's shared class
    embedding for one, by passing the parameters you want). What it adds is exactly the gradient of
    orthogonal_regularization(params, beta), 4 * beta * (W W^T * (1 - I)) W, reshaped to each
    parameter: BigGAN-PyTorch's utils.ortho(G, s) corresponds to beta = s / 2 (see
    orthogonal_regularization). Two launches plus one GEMM per weight, no host synchronisation.
    """
    ps = [p for p in _ortho_tensors(module_or_params, "orthogonal_regularization_")
          if p.dim() >= 2 and p.requires_grad]
    if not ps:
        _check_beta(beta, "orthogonal_regularization_")
        return
    grads = _ortho_grads(ps, beta)
    fresh = [(p, g) for p, g in zip(ps, grads) if p.grad is None]
    held = [(p, g) for p, g in zip(ps, grads) if p.grad is not None]
    for p, g in fresh:
        p.grad = g
    if held:
        torch._foreach_add_([p.grad for p, _ in held], [g for _, g in held])


def _ortho_grads(params, beta):
    from .ops.orthogonal_regularization import orthogonal_regularization_grads

    return orthogonal_regularization_grads(params, beta)
