"""The instance_norm_act op family: InstanceNorm (per-sample, per-channel statistics, no running
statistics) + affine + activation in one fused forward and one fused backward; first derivatives
only (double backward is a clear error).

Instance norm over x (N, C, *) is batch norm over the per-(n, c) axis, so the kernels are
batch_norm_act's, serving both (csrc/cpu/batch_norm_act.cpp, csrc/cuda/batch_norm_act.cu,
ganfast/triton/batch_norm_act.py).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .. import backend
from ..reference import instance_norm_act as reference
from .batch_norm_act import DEFAULT_ALPHA


# ---- entry point ---------------------------------------------------------------------------------


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
    backend.resolve(x)  # an unavailable backend is an error here as for every op
    # The kernels come in the following commits; until then every backend runs the reference.
    return reference.instance_norm_act(x, weight, bias, eps, act, alpha)
