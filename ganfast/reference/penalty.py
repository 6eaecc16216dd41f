"""Pure-PyTorch penalty ops: the oracle of the kernels and the `reference` backend.

Same names and argument order as the ops of csrc/ganfast.cpp; the same math as csrc/gan_math.h,
written with torch functions differentiable to every order (torch's own double backward is the
reference the fused double backward is tested against).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import _args
from .losses import _compute_dtype


def _per_sample(eps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return eps.reshape((-1,) + (1,) * (like.dim() - 1))


def interpolate(real, fake, eps):
    _args.check_interpolate("ganfast::interpolate", real, fake, eps)
    dtype = _compute_dtype(real)
    e = _per_sample(eps.to(dtype), real)
    return (e * real.to(dtype) + (1 - e) * fake.to(dtype)).to(real.dtype)


def penalty_from_grad(grad, kind="wgan-gp", center=1.0):
    """(penalty, norms): mean over samples of phi(||grad[b]||_2), and the per-sample norms."""
    _args.check_penalty_grad("ganfast::penalty_from_grad", grad)
    kind = _args.parse_penalty_kind(kind)
    dtype = _compute_dtype(grad)
    g = grad.to(dtype).reshape(grad.shape[0], math.prod(grad.shape[1:]))  # (-1 is ambiguous when B = 0)
    if kind in ("r1", "r2"):
        norms_sq = (g * g).sum(dim=1)
        phi = norms_sq
        norms = norms_sq.detach().sqrt()
    else:
        # ||g|| with every derivative 0 where g = 0, as the kernels' (torch's vector_norm gives a
        # first derivative 0 there but a NaN second derivative)
        norms_sq = (g * g).sum(dim=1)
        nonzero = norms_sq > 0
        norms = torch.where(nonzero, torch.where(nonzero, norms_sq, 1.0).sqrt(), 0.0)
        d = norms - center
        phi = d * d if kind == "wgan-gp" else F.relu(d) ** 2
        norms = norms.detach()
    return phi.mean().to(grad.dtype), norms
