"""Normalisation + activation modules on ganfast's fused ops."""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from .. import ops
from .._args import parse_act


class InstanceNormAct2d(nn.Module):
    """act(InstanceNorm2d(x)) in one fused kernel each way: CycleGAN's InstanceNorm + ReLU (its
    generator) or + LeakyReLU 0.2 (its discriminator).

    The parameters are torch.nn.InstanceNorm2d's (track_running_stats=False): `weight` (ones) and
    `bias` (zeros) when affine, none otherwise, so state_dicts load either way. act / alpha as
    ganfast.ops.instance_norm_act (alpha None: 0.2 for lrelu, 1.0 for elu). Input (N, C, H, W) or
    unbatched (C, H, W), as nn.InstanceNorm2d; first derivatives only.
    """

    def __init__(self, num_features: int, affine: bool = False, act: str = "relu", alpha: Optional[float] = None,
                 eps: float = 1e-5) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"InstanceNormAct2d: num_features must be a positive int; got {num_features!r}")
        if not float(eps) > 0:
            raise ValueError(f"InstanceNormAct2d: eps must be positive; got {eps!r}")
        self.num_features = num_features
        self.affine = bool(affine)
        self.act = parse_act(act)
        self.alpha = None if alpha is None else float(alpha)
        self.eps = float(eps)
        if self.affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(f"InstanceNormAct2d: expected 3D (C, H, W) or 4D (N, C, H, W) input; got {x.dim()}D input "
                             f"of shape {list(x.shape)}")
        unbatched = x.dim() == 3
        c = x.size(0 if unbatched else 1)
        if c != self.num_features:
            if self.affine:
                raise ValueError(f"InstanceNormAct2d: expected input with {self.num_features} channels "
                                 f"(num_features); got {c} (input shape {list(x.shape)})")
            warnings.warn(f"InstanceNormAct2d: input has {c} channels, num_features is {self.num_features} "
                          "(no affine parameters: normalised anyway, as nn.InstanceNorm2d does)", stacklevel=2)
        if unbatched:
            x = x.unsqueeze(0)
        y = ops.instance_norm_act(x, self.weight, self.bias, self.eps, self.act, self.alpha)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}, affine={self.affine}, act={self.act!r}"
        return s + (f", alpha={self.alpha}" if self.alpha is not None else "")
