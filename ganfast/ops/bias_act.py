"""The bias_act op family: bias + activation + gain + clamp in one kernel, differentiable to
every order (piecewise-linear activations) or to the third (smooth ones).

Same layout as ganfast/ops/losses.py: fake kernels of the C++ ops (autograd: csrc/autograd/
bias_act.cpp), the ganfast_triton:: custom ops around ganfast/triton/bias_act.py with the same
autograd formulas, and the entry point.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import _args, backend
from ..reference import bias_act as reference
from . import lean

_C = torch.ops.ganfast

# Defaults where the caller passes None (as StyleGAN's bias_act: activations whose slope is 1 on
# the positive side get gain sqrt(2), which keeps the activations' variance at initialisation).
DEFAULT_ALPHA = {"lrelu": 0.2, "elu": 1.0}
DEFAULT_GAIN = {"relu": math.sqrt(2), "lrelu": math.sqrt(2), "swish": math.sqrt(2)}


def _output_like(x: Tensor, dim: int) -> Tensor:
    """The layout the kernels give bias_act's output: channels_last kept for a 4-D x with dim 1,
    contiguous x kept, anything else contiguous."""
    if x.is_contiguous():
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.dim() == 4 and dim == 1 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty_like(x, memory_format=torch.channels_last)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _fake_bias_act(x, b, dim, act, alpha, gain, clamp):
    d = _args.check_bias_act("ganfast::bias_act", x, b, dim)
    _args.parse_act(act)
    return _output_like(x, d)


def _fake_bias_act_backward(grad_output, x, b, y, dim, act, alpha, gain, clamp, order):
    return torch.empty_like(y)


def _fake_bias_act_backward_with_bias(grad_output, x, b, y, dim, act, alpha, gain, clamp):
    _args.check_bias_act_backward_with_bias("ganfast::bias_act_backward_with_bias", grad_output, x, b, y, dim,
                                            _args.parse_act(act), alpha)
    return torch.empty_like(y), b.new_empty(b.shape)


torch.library.register_fake("ganfast::bias_act", _fake_bias_act)
torch.library.register_fake("ganfast::bias_act_backward", _fake_bias_act_backward)
torch.library.register_fake("ganfast::bias_act_backward_with_bias", _fake_bias_act_backward_with_bias)


# ---- the Triton ops ------------------------------------------------------------------------------


def _triton():
    from ..triton import bias_act as triton_bias_act

    return triton_bias_act


@torch.library.custom_op("ganfast_triton::bias_act", mutates_args=())
def _t_bias_act(x: Tensor, b: Optional[Tensor], dim: int, act: str, alpha: float, gain: float,
                clamp: float) -> Tensor:
    return _triton().bias_act(x, b, dim, act, alpha, gain, clamp)


@torch.library.custom_op("ganfast_triton::bias_act_backward", mutates_args=())
def _t_bias_act_backward(grad_output: Tensor, x: Optional[Tensor], b: Optional[Tensor], y: Tensor, dim: int,
                         act: str, alpha: float, gain: float, clamp: float, order: int) -> Tensor:
    return _triton().bias_act_backward(grad_output, x, b, y, dim, act, alpha, gain, clamp, order)


@torch.library.custom_op("ganfast_triton::bias_act_backward_with_bias", mutates_args=())
def _t_bias_act_backward_with_bias(grad_output: Tensor, x: Optional[Tensor], b: Optional[Tensor], y: Tensor,
                                   dim: int, act: str, alpha: float, gain: float,
                                   clamp: float) -> tuple[Tensor, Tensor]:
    return _triton().bias_act_backward_with_bias(grad_output, x, b, y, dim, act, alpha, gain, clamp)


_t_bias_act.register_fake(_fake_bias_act)
_t_bias_act_backward.register_fake(_fake_bias_act_backward)
_t_bias_act_backward_with_bias.register_fake(_fake_bias_act_backward_with_bias)


def keeps_x(act: str, alpha: float) -> bool:
    """Whether the backward needs x (else y alone: piecewise linear and y determines the slope)."""
    return not (act in ("linear", "relu", "lrelu") and _args.act_derivatives_from_y(act, alpha))


def bias_gradient(dx: Tensor, dim: int) -> Tensor:
    dims = [d for d in range(dx.dim()) if d != dim]
    return dx.sum(dims) if dims else dx


# Autograd of the Triton ops: the formulas of csrc/autograd/bias_act.cpp.

def _setup_bias_act(ctx, inputs, output):
    x, b, dim, act, alpha, gain, clamp = inputs
    ctx.params = (_args.check_bias_act("ganfast::bias_act", x, b, dim), act, alpha, gain, clamp)
    ctx.has_bias = b is not None
    ctx.lean = lean.is_lean_double_backward()
    # A lean double backward sends no gradient to y: let it arrive as None rather than as a
    # tensor of zeros that autograd would fill for a Python node, then backpropagate.
    ctx.set_materialize_grads(False)
    if keeps_x(act, alpha):
        ctx.save_for_backward(x, b, output)
    else:
        ctx.save_for_backward(None, None, output)


def _backward_bias_act(ctx, grad):
    if grad is None:
        return None, None, None, None, None, None, None
    x, b, y = ctx.saved_tensors
    dim = ctx.params[0]
    if ctx.has_bias and ctx.needs_input_grad[1] and not torch.is_grad_enabled():
        # No graph of this backward (no create_graph): dx and the bias gradient in one pass. b is
        # not kept where y alone gives the derivative: a stand-in of its shape (read for its
        # shape only; y's dtype, which autograd casts to b's, as the sum of dx would be).
        bias = b if b is not None else y.new_empty(y.size(dim))
        dx, db = _t_bias_act_backward_with_bias(grad, x, bias, y, *ctx.params)
        return dx, db, None, None, None, None, None
    with lean.lean_double_backward(ctx.lean):  # the forward's choice, on whichever thread runs this
        dx = _t_bias_act_backward(grad, x, b, y, *ctx.params, 1)
    db = bias_gradient(dx, dim) if ctx.has_bias and ctx.needs_input_grad[1] else None
    return dx, db, None, None, None, None, None


def _setup_bias_act_backward(ctx, inputs, output):
    grad_output, x, b, y, dim, act, alpha, gain, clamp, order = inputs
    ctx.save_for_backward(grad_output, x, b, y.detach())
    ctx.params = (dim, act, alpha, gain, clamp)
    ctx.order = order
    ctx.lean = lean.is_lean_double_backward()


def _backward_bias_act_backward(ctx, u):
    grad_output, x, b, y = ctx.saved_tensors
    d_grad = _t_bias_act_backward(u, x, b, y, *ctx.params, ctx.order) if ctx.needs_input_grad[0] else None
    dx = db = None
    # Without x the activation is piecewise linear: every derivative past the first is 0.
    if x is not None and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        d = _t_bias_act_backward(u * grad_output, x, b, y, *ctx.params, ctx.order + 1)
        dx = d if ctx.needs_input_grad[1] else None
        db = bias_gradient(d, _args.check_bias_act("ganfast::bias_act", x, b, ctx.params[0])) \
            if ctx.needs_input_grad[2] else None
    # Without x, the dependence on x runs through y with derivative exactly 0 (piecewise linear):
    # made explicit, as eager PyTorch does, so x.grad becomes zeros rather than staying None --
    # unless lean (ganfast/ops/lean.py), where that zero is not sent.
    dy = torch.zeros_like(y) if x is None and ctx.needs_input_grad[3] and not ctx.lean else None
    return d_grad, dx, db, dy, None, None, None, None, None, None


_t_bias_act.register_autograd(_backward_bias_act, setup_context=_setup_bias_act)
_t_bias_act_backward.register_autograd(_backward_bias_act_backward, setup_context=_setup_bias_act_backward)


# ---- entry point ---------------------------------------------------------------------------------

_cpp_bias_act = _C.bias_act.default


def bias_act(x: Tensor, b: Optional[Tensor] = None, dim: int = 1, act: str = "lrelu",
             alpha: Optional[float] = None, gain: Optional[float] = None,
             clamp: Optional[float] = None) -> Tensor:
    """y = clamp(gain * act(x + b), -clamp, clamp) in one kernel, b broadcast along `dim`.

    alpha: lrelu's negative slope (default 0.2) or elu's alpha (default 1.0); gain: default
    sqrt(2) for relu, lrelu and swish, 1 otherwise (StyleGAN's convention; pass gain=1.0 for
    torch's plain activations); clamp: None for no clamp, else |y| <= clamp.
    """
    alpha = DEFAULT_ALPHA.get(act, 0.0) if alpha is None else float(alpha)
    gain = DEFAULT_GAIN.get(act, 1.0) if gain is None else float(gain)
    if clamp is None:
        clamp = -1.0
    elif clamp < 0:
        raise ValueError(f"ganfast.ops.bias_act: clamp must be >= 0 or None; got {clamp}")
    impl = backend.resolve(x)
    if impl == backend.CPP:
        return _cpp_bias_act(x, b, dim, act, alpha, gain, float(clamp))
    if impl == backend.TRITON:
        return _t_bias_act(x, b, dim, act, alpha, gain, float(clamp))
    return reference.bias_act(x, b, dim, act, alpha, gain, float(clamp))
