"""Argument checks of the Python-side implementations (reference, Triton launchers).

The Python twin of csrc/ganfast_common.h: the same rules, the same messages, the same exception
types (torch maps TORCH_CHECK_VALUE to ValueError, TORCH_CHECK_TYPE to TypeError and
TORCH_CHECK to RuntimeError), so every backend rejects the same inputs the same way.
"""
from __future__ import annotations

import torch

REDUCTIONS = ("none", "mean", "sum")
GAN_KINDS = ("minimax", "nonsaturating", "hinge", "wasserstein", "least_squares")


def _choices(names) -> str:
    return ", ".join(f"'{n}'" for n in names)


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"ganfast: reduction must be one of {_choices(REDUCTIONS)}; got '{reduction}'")
    return reduction


def check_kind(kind: str) -> str:
    if kind not in GAN_KINDS:
        raise ValueError(f"ganfast: kind must be one of {_choices(GAN_KINDS)}; got '{kind}'")
    return kind


def check_floating(t: torch.Tensor, op: str, arg: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"ganfast::{op}: {arg} must be a tensor; got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"ganfast::{op}: {arg} must be a floating-point tensor; got {t.dtype}")


def check_same_device(a: torch.Tensor, b: torch.Tensor, op: str, arg_a: str, arg_b: str) -> None:
    if a.device != b.device:
        raise RuntimeError(f"ganfast::{op}: {arg_a} and {arg_b} must be on the same device; "
                           f"got {a.device} and {b.device}")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, op: str, arg_a: str, arg_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"ganfast::{op}: {arg_b} size ({list(b.shape)}) must be the same as "
                         f"{arg_a} size ({list(a.shape)})")


def check_broadcast(w: torch.Tensor | None, like: torch.Tensor, op: str, arg: str) -> None:
    if w is None:
        return
    check_same_device(like, w, op, "input", arg)
    check_floating(w, op, arg)
    shape, wshape = list(like.shape), list(w.shape)
    ok = len(wshape) <= len(shape) and all(
        ws in (1, s) for ws, s in zip(reversed(wshape), reversed(shape)))
    if not ok:
        raise ValueError(f"ganfast::{op}: {arg} of shape {wshape} cannot be broadcast to input "
                         f"of shape {shape}")


def check_loss_operands(op, input, target, weight, pos_weight, reduction) -> None:
    check_floating(input, op, "input")
    check_floating(target, op, "target")
    check_same_device(input, target, op, "input", "target")
    check_same_shape(input, target, op, "input", "target")
    check_reduction(reduction)
    check_broadcast(weight, input, op, "weight")
    check_broadcast(pos_weight, input, op, "pos_weight")


def check_gan_logits(op: str, real: torch.Tensor, fake: torch.Tensor) -> None:
    check_floating(real, op, "real_logits")
    check_floating(fake, op, "fake_logits")
    check_same_device(real, fake, op, "real_logits", "fake_logits")
    if real.dtype != fake.dtype:
        raise TypeError(f"ganfast::{op}: real_logits and fake_logits must have the same dtype; "
                        f"got {real.dtype} and {fake.dtype}")


def broadcast_map(w: torch.Tensor | None, like: torch.Tensor, dtype: torch.dtype):
    """(data, inner, period) with data contiguous, read at flat index i of `like` as
    data[(i // inner) % period]; (None, 1, 1) when w is None. Mirrors make_broadcast in
    csrc/ganfast_common.h: a broadcast whose non-1 dims are not one contiguous run is
    materialised."""
    if w is None:
        return None, 1, 1
    shape = list(like.shape)
    nd = len(shape)
    wshape = [1] * (nd - w.dim()) + list(w.shape)
    dims = [d for d in range(nd) if wshape[d] != 1]
    if not dims:
        return w.to(dtype).contiguous(), 1, 1
    lo, hi = dims[0], dims[-1]
    if any(wshape[d] == 1 and shape[d] != 1 for d in range(lo, hi + 1)):
        return w.expand(shape).to(dtype).contiguous(), 1, like.numel()
    inner = 1
    for d in range(hi + 1, nd):
        inner *= shape[d]
    period = 1
    for d in range(lo, hi + 1):
        period *= shape[d]
    return w.to(dtype).contiguous(), inner, period
