"""Pure-PyTorch losses: the oracle the kernels are tested against, and the fallback backend.

Same names and argument order as the ops (csrc/ganfast.cpp); same math as csrc/gan_math.h,
written with torch functions whose derivatives are exact to every order. Half-precision inputs
are computed in float32 and returned in their own dtype, as the kernels do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _args


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _softplus(x: torch.Tensor) -> torch.Tensor:
    # log(1 + e^x) = -log sigmoid(-x): stable, and its derivatives are exact (F.softplus
    # switches to the identity above a threshold).
    return -F.logsigmoid(-x)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _operand(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | float:
    # The checks above (prepare_loss_operands) reject what cannot broadcast; torch broadcasts.
    return 1.0 if t is None else t.to(dtype)


def bce_with_logits(input, target, weight=None, pos_weight=None, reduction="mean"):
    _args.prepare_loss_operands("ganfast::bce_with_logits", input, target, weight, pos_weight, reduction)
    dtype = _compute_dtype(input)
    x, t = input.to(dtype), target.to(dtype)
    w, pw = _operand(weight, dtype), _operand(pos_weight, dtype)
    loss = w * ((1 - t) * x + (1 + (pw - 1) * t) * _softplus(-x))
    return _reduce(loss, reduction).to(input.dtype)


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    _args.prepare_loss_operands("ganfast::binary_cross_entropy", input, target, weight, None, reduction)
    dtype = _compute_dtype(input)
    p, t = input.to(dtype), target.to(dtype)
    if not bool(((p >= 0) & (p <= 1)).all()):  # the reference may sync: it is the oracle
        raise RuntimeError("ganfast::binary_cross_entropy: all elements of input should be between 0 and 1")
    if not bool(((t >= 0) & (t <= 1)).all()):  # torch checks the target too
        raise RuntimeError("ganfast::binary_cross_entropy: all elements of target should be between 0 and 1")
    # torch's own op: each log clamped at -100, and the gradient (p - t) / max(p (1 - p), 1e-12),
    # which is not the derivative of the clamped formula where p is 0 or 1 (autograd of the
    # formula gives NaN there); torch differentiates it twice.
    w = None if weight is None else weight.to(dtype)
    return F.binary_cross_entropy(p, t, w, reduction=reduction).to(input.dtype)


def _d_real(kind: str, x: torch.Tensor, label: float) -> torch.Tensor:
    if kind in ("minimax", "nonsaturating"):
        return (1 - label) * x + _softplus(-x)
    if kind == "hinge":
        return F.relu(1 - x)
    if kind == "wasserstein":
        return -x
    return 0.5 * (x - label) ** 2


def _d_fake(kind: str, x: torch.Tensor, label: float) -> torch.Tensor:
    if kind in ("minimax", "nonsaturating"):
        return (1 - label) * x + _softplus(-x)
    if kind == "hinge":
        return F.relu(1 + x)
    if kind == "wasserstein":
        return x
    return 0.5 * (x - label) ** 2


def _g(kind: str, x: torch.Tensor) -> torch.Tensor:
    if kind == "minimax":
        return -_softplus(x)
    if kind == "nonsaturating":
        return _softplus(-x)
    if kind in ("hinge", "wasserstein"):
        return -x
    return 0.5 * (x - 1) ** 2


def gan_d_loss(real_logits, fake_logits, kind="nonsaturating", real_label=1.0, fake_label=0.0):
    _args.check_gan_logits("ganfast::gan_d_loss", real_logits, fake_logits)
    kind = _args.parse_gan_kind(kind)
    dtype = _compute_dtype(real_logits)
    loss = (_d_real(kind, real_logits.to(dtype), real_label).mean()
            + _d_fake(kind, fake_logits.to(dtype), fake_label).mean())
    return loss.to(real_logits.dtype)


def gan_g_loss(fake_logits, kind="nonsaturating"):
    _args.check_g_logits("ganfast::gan_g_loss", fake_logits)
    kind = _args.parse_gan_kind(kind)
    dtype = _compute_dtype(fake_logits)
    return _g(kind, fake_logits.to(dtype)).mean().to(fake_logits.dtype)
