"""The penalty op family: interpolate and penalty_from_grad, dispatched to the selected backend.

Same layout as ganfast/ops/losses.py: fake kernels of the C++ ops (autograd: csrc/autograd/
penalty.cpp), the ganfast_triton:: custom ops around ganfast/triton/penalty.py with the same
autograd formulas, and one entry point per op.

Derivatives: interpolate to every order (its backward is linear, with interpolate as its own
derivative); penalty_from_grad to second order (gradgradcheck), the third raising an error.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _args, backend
from ..reference import penalty as reference

_C = torch.ops.ganfast


def _like_per_sample(t: Tensor, other: Optional[Tensor] = None) -> Tensor:
    """The layout the kernels give a per-sample op's output: t's own where its samples are
    blocks of memory (NCHW, channels_last), else contiguous."""
    if _args.samples_are_blocks(t) and (other is None or other.stride() == t.stride()):
        return torch.empty_like(t)
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ---- fake (meta) kernels: the C++ ops and the Triton ops alike ------------------------------------


def _fake_interpolate(real, fake, eps):
    _args.check_interpolate("ganfast::interpolate", real, fake, eps)
    return _like_per_sample(real, fake)


def _fake_interpolate_backward(grad_output, eps):
    return _like_per_sample(grad_output), _like_per_sample(grad_output)


def _fake_penalty_from_grad(grad, kind, center):
    _args.check_penalty_grad("ganfast::penalty_from_grad", grad)
    return grad.new_empty(()), grad.new_empty((grad.shape[0],), dtype=_compute_dtype(grad))


def _fake_penalty_from_grad_backward(grad_output, grad, norms, kind, center):
    return _like_per_sample(grad)


def _fake_penalty_from_grad_double_backward(grad_grad, grad_output, grad, norms, kind, center):
    return grad.new_empty(()), _like_per_sample(grad)


_FAKES = {
    "interpolate": _fake_interpolate,
    "interpolate_backward": _fake_interpolate_backward,
    "penalty_from_grad": _fake_penalty_from_grad,
    "penalty_from_grad_backward": _fake_penalty_from_grad_backward,
    "penalty_from_grad_double_backward": _fake_penalty_from_grad_double_backward,
}
for _name, _fake in _FAKES.items():
    torch.library.register_fake(f"ganfast::{_name}", _fake)


# ---- the Triton ops ------------------------------------------------------------------------------


def _triton():
    from ..triton import penalty as triton_penalty

    return triton_penalty


@torch.library.custom_op("ganfast_triton::interpolate", mutates_args=())
def _t_interpolate(real: Tensor, fake: Tensor, eps: Tensor) -> Tensor:
    return _triton().interpolate(real, fake, eps)


@torch.library.custom_op("ganfast_triton::interpolate_backward", mutates_args=())
def _t_interpolate_backward(grad_output: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    return _triton().interpolate_backward(grad_output, eps)


@torch.library.custom_op("ganfast_triton::penalty_from_grad", mutates_args=())
def _t_penalty_from_grad(grad: Tensor, kind: str, center: float) -> tuple[Tensor, Tensor]:
    return _triton().penalty_from_grad(grad, kind, center)


@torch.library.custom_op("ganfast_triton::penalty_from_grad_backward", mutates_args=())
def _t_penalty_from_grad_backward(grad_output: Tensor, grad: Tensor, norms: Tensor, kind: str,
                                  center: float) -> Tensor:
    return _triton().penalty_from_grad_backward(grad_output, grad, norms, kind, center)


@torch.library.custom_op("ganfast_triton::penalty_from_grad_double_backward", mutates_args=())
def _t_penalty_from_grad_double_backward(grad_grad: Tensor, grad_output: Tensor, grad: Tensor, norms: Tensor,
                                         kind: str, center: float) -> tuple[Tensor, Tensor]:
    return _triton().penalty_from_grad_double_backward(grad_grad, grad_output, grad, norms, kind, center)


_t_interpolate.register_fake(_fake_interpolate)
_t_interpolate_backward.register_fake(_fake_interpolate_backward)
_t_penalty_from_grad.register_fake(_fake_penalty_from_grad)
_t_penalty_from_grad_backward.register_fake(_fake_penalty_from_grad_backward)
_t_penalty_from_grad_double_backward.register_fake(_fake_penalty_from_grad_double_backward)


# Autograd of the Triton ops: the formulas of csrc/autograd/penalty.cpp.

def _refuse_eps_grad(ctx, index):
    if ctx.needs_input_grad[index]:
        raise RuntimeError("ganfast_triton::interpolate: the gradient with respect to eps is not supported; "
                           "pass eps.detach()")


def _setup_interpolate(ctx, inputs, output):
    ctx.save_for_backward(inputs[2])


def _backward_interpolate(ctx, grad):
    _refuse_eps_grad(ctx, 2)
    (eps,) = ctx.saved_tensors
    grad_real, grad_fake = _t_interpolate_backward(grad, eps)
    return grad_real, grad_fake, None


def _setup_interpolate_backward(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _backward_interpolate_backward(ctx, grad_real, grad_fake):
    _refuse_eps_grad(ctx, 1)
    (eps,) = ctx.saved_tensors
    if grad_real is None and grad_fake is None:
        return None, None
    grad_real = torch.zeros_like(grad_fake) if grad_real is None else grad_real
    grad_fake = torch.zeros_like(grad_real) if grad_fake is None else grad_fake
    return _t_interpolate(grad_real, grad_fake, eps), None


def _setup_penalty(ctx, inputs, output):
    grad, kind, center = inputs
    ctx.save_for_backward(grad, output[1])
    ctx.kind, ctx.center = kind, center
    ctx.mark_non_differentiable(output[1])


def _backward_penalty(ctx, grad_penalty, grad_norms):
    grad, norms = ctx.saved_tensors
    return _t_penalty_from_grad_backward(grad_penalty, grad, norms, ctx.kind, ctx.center), None, None


def _setup_penalty_backward(ctx, inputs, output):
    grad_output, grad, norms, kind, center = inputs
    ctx.save_for_backward(grad_output, grad, norms)
    ctx.kind, ctx.center = kind, center


def _backward_penalty_backward(ctx, grad_grad):
    grad_output, grad, norms = ctx.saved_tensors
    if ctx.needs_input_grad[2]:
        raise RuntimeError("ganfast_triton::penalty_from_grad_backward: norms is a cache of ||grad|| and is "
                           "not differentiated; pass norms.detach()")
    d_grad_output, d_grad = _t_penalty_from_grad_double_backward(grad_grad, grad_output, grad, norms.detach(),
                                                                 ctx.kind, ctx.center)
    return d_grad_output, d_grad, None, None, None


def _backward_third_order(ctx, *grads):
    raise RuntimeError("ganfast_triton::penalty_from_grad_double_backward: third-order derivatives of the "
                       "penalty are not implemented")


_t_interpolate.register_autograd(_backward_interpolate, setup_context=_setup_interpolate)
_t_interpolate_backward.register_autograd(_backward_interpolate_backward, setup_context=_setup_interpolate_backward)
_t_penalty_from_grad.register_autograd(_backward_penalty, setup_context=_setup_penalty)
_t_penalty_from_grad_backward.register_autograd(_backward_penalty_backward, setup_context=_setup_penalty_backward)
_t_penalty_from_grad_double_backward.register_autograd(_backward_third_order,
                                                       setup_context=lambda ctx, inputs, output: None)


# ---- entry points --------------------------------------------------------------------------------

_cpp_interpolate = _C.interpolate.default
_cpp_penalty_from_grad = _C.penalty_from_grad.default


def interpolate(real: Tensor, fake: Tensor, eps: Tensor) -> Tensor:
    """x_hat[b] = eps[b] * real[b] + (1 - eps[b]) * fake[b], one kernel."""
    impl = backend.resolve(real)
    if impl == backend.CPP:
        return _cpp_interpolate(real, fake, eps)
    if impl == backend.TRITON:
        return _t_interpolate(real, fake, eps)
    return reference.interpolate(real, fake, eps)


def penalty_from_grad(grad: Tensor, kind: str = "wgan-gp", center: float = 1.0) -> tuple[Tensor, Tensor]:
    """(penalty, per-sample norms) of the gradient grad (B, ...), norms and mean in one kernel."""
    impl = backend.resolve(grad)
    if impl == backend.CPP:
        return _cpp_penalty_from_grad(grad, kind, center)
    if impl == backend.TRITON:
        return _t_penalty_from_grad(grad, kind, center)
    return reference.penalty_from_grad(grad, kind, center)
