"""The instance_norm_act op family: InstanceNorm (per-sample, per-channel statistics, no running
statistics) + affine + activation in one fused forward and one fused backward; first derivatives
only (double backward is a clear error).

Instance norm over x (N, C, *) is batch norm over the per-(n, c) axis, so the kernels are
batch_norm_act's, serving both (csrc/cpu/batch_norm_act.cpp).
Same layout as ganfast/ops/batch_norm_act.py: fake kernels of the C++ ops (autograd:
csrc/autograd/batch_norm_act.cpp) and the entry point.
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
    # (the Triton kernels come in the next commit; until then triton runs the reference)
    return reference.instance_norm_act(x, weight, bias, eps, act, alpha)
