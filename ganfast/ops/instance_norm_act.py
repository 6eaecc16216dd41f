"""The instance_norm_act op family: InstanceNorm (per-sample, per-channel statistics, no running
statistics) + affine + activation in one fused forward and one fused backward; first derivatives
only (double backward is a clear error).

Instance norm over x (N, C, *) is batch norm over the per-(n, c) axis, so the kernels are
batch_norm_act's, serving both (csrc/cpu/batch_norm_act.cpp, csrc/cuda/batch_norm_act.cu,
ganfast/triton/batch_norm_act.py; the Triton launchers in ganfast/triton/instance_norm_act.py).
Same layout as ganfast/ops/batch_norm_act.py: fake kernels of the C++ ops (autograd:
csrc/autograd/batch_norm_act.cpp), the ganfast_triton:: custom ops with the same autograd, and the
entry point. Nothing is mutated, so the Triton ops carry their autograd formulas themselves.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _args, backend
from ..reference import instance_norm_act as reference
from .batch_norm_act import DEFAULT_ALPHA

_C = torch.ops.ganfast


def _fake_instance_norm_act(input, weight, bias, eps, act, alpha):
    _args.check_instance_norm_act("ganfast::instance_norm_act", input, weight, bias, eps)
    _args.parse_act(act)
    compute = _args.batch_norm_compute_dtype(input.dtype)
    nc = input.size(0) * input.size(1)
    out = torch.empty(input.shape, dtype=input.dtype, device=input.device)  # contiguous, as the kernels'
    return out, input.new_empty((nc,), dtype=compute), input.new_empty((nc,), dtype=compute)


def _fake_instance_norm_act_backward(grad_output, input, weight, bias, save_mean, save_invstd, act, alpha):
    _args.check_instance_norm_act_backward("ganfast::instance_norm_act_backward", grad_output, input, weight, bias,
                                           save_mean, save_invstd)
    _args.parse_act(act)
    dtype = weight.dtype if weight is not None else input.dtype
    c = input.size(1)
    return (torch.empty(input.shape, dtype=input.dtype, device=input.device), input.new_empty((c,), dtype=dtype),
            input.new_empty((c,), dtype=dtype))


torch.library.register_fake("ganfast::instance_norm_act", _fake_instance_norm_act)
torch.library.register_fake("ganfast::instance_norm_act_backward", _fake_instance_norm_act_backward)


# ---- the Triton ops ------------------------------------------------------------------------------


def _triton():
    from ..triton import instance_norm_act as triton_instance_norm_act

    return triton_instance_norm_act


@torch.library.custom_op("ganfast_triton::instance_norm_act", mutates_args=())
def _t_instance_norm_act(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, act: str,
                         alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    return _triton().instance_norm_act(input, weight, bias, eps, act, alpha)


@torch.library.custom_op("ganfast_triton::instance_norm_act_backward", mutates_args=())
def _t_instance_norm_act_backward(grad_output: Tensor, input: Tensor, weight: Optional[Tensor],
                                  bias: Optional[Tensor], save_mean: Tensor, save_invstd: Tensor, act: str,
                                  alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    return _triton().instance_norm_act_backward(grad_output, input, weight, bias, save_mean, save_invstd, act, alpha)


_t_instance_norm_act.register_fake(_fake_instance_norm_act)
_t_instance_norm_act_backward.register_fake(_fake_instance_norm_act_backward)


# Autograd of the Triton ops: the formulas of csrc/autograd/batch_norm_act.cpp's InstanceNormActBackward.

def _setup_instance_norm_act(ctx, inputs, output):
    input, weight, bias, eps, act, alpha = inputs
    _, save_mean, save_invstd = output
    ctx.save_for_backward(input, weight, bias, save_mean, save_invstd)
    ctx.params = (act, alpha)


def _backward_instance_norm_act(ctx, grad_out, _grad_mean, _grad_invstd):
    input, weight, bias, save_mean, save_invstd = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None, None, None
    dx, dw, db = _t_instance_norm_act_backward(grad_out, input, weight, bias, save_mean, save_invstd, *ctx.params)
    return (dx if ctx.needs_input_grad[0] else None, dw if weight is not None and ctx.needs_input_grad[1] else None,
            db if bias is not None and ctx.needs_input_grad[2] else None, None, None, None)


def _backward_instance_norm_act_backward(ctx, *grads):
    # The C++ op's autogradNotImplementedFallback says the same.
    raise RuntimeError("derivative for ganfast_triton::instance_norm_act_backward is not implemented: "
                       "instance_norm_act has first derivatives only (no double backward)")


_t_instance_norm_act.register_autograd(_backward_instance_norm_act, setup_context=_setup_instance_norm_act)
_t_instance_norm_act_backward.register_autograd(_backward_instance_norm_act_backward)


# ---- entry point ---------------------------------------------------------------------------------

_cpp_instance_norm_act = _C.instance_norm_act.default


def instance_norm_act(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                      eps: float = 1e-5, act: str = "relu", alpha: Optional[float] = None) -> Tensor:
    """act(F.instance_norm(x, weight=weight, bias=bias, eps=eps)) fused.

    x: (N, C, *) with at least one spatial dim and more than one spatial element, any float dtype
    (half precision computed in float32); a non-contiguous (channels_last) x is made contiguous
    first, and the result is contiguous. weight, bias: (C,) or None (1 and 0). act: 'linear',
    'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', 'selu', 'softplus', 'swish' (gain 1); alpha: lrelu's
    negative slope (default 0.2) or elu's alpha (default 1.0). Differentiable once w.r.t. x, weight
    and bias; double backward raises.
    """
    alpha = DEFAULT_ALPHA.get(act, 0.0) if alpha is None else float(alpha)
    eps = float(eps)
    impl = backend.resolve(x)
    if impl == backend.CPP:
        return _cpp_instance_norm_act(x, weight, bias, eps, act, alpha)[0]
    if impl == backend.TRITON:
        return _t_instance_norm_act(x, weight, bias, eps, act, alpha)[0]
    return reference.instance_norm_act(x, weight, bias, eps, act, alpha)
