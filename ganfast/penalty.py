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
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from . import ops
from ._args import PENALTY_KINDS, parse_penalty_kind

__all__ = ["PENALTY_KINDS", "gradient_penalty", "interpolate", "penalty_from_grad"]

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
