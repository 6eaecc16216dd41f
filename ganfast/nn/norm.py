"""Normalisation + activation modules on ganfast's fused ops."""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from .. import ops
from .._args import parse_act
from .blocks import batch_norm_momentum
from .sync_batchnorm import batch_norm_process_group


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


class ConditionalBatchNorm2d(nn.Module):
    """Class-conditional BatchNorm + activation (BigGAN's ccbn, SAGAN's conditional BN), fused:
    act(x_hat * (1 + gain(cond))[n, c] + bias(cond)[n, c]), x_hat the batch-normalised input (batch
    statistics in training, the running statistics in eval), in one kernel each way
    (ganfast.ops.batch_norm_act with (N, C) weight and bias).

    `gain` and `bias` are plain nn.Linear(cond_dim, num_features, bias=False) attributes (a model may
    wrap them with spectral norm); cond (N, cond_dim) is, e.g., a class embedding concatenated with a
    chunk of z. Buffers running_mean / running_var / num_batches_tracked and momentum as
    nn.BatchNorm2d's (momentum None: cumulative average). act / alpha as ganfast.ops.batch_norm_act
    (alpha None: 0.2 for lrelu, 1.0 for elu; act None = "linear"). First derivatives only.
    ganfast.nn.convert_sync_batchnorm synchronises its statistics over a process group.
    """

    _ganfast_batchnorm = True  # a BatchNorm ganfast runs (ganfast.nn.convert_sync_batchnorm marks it)

    def __init__(self, num_features: int, cond_dim: int, act: Optional[str] = "relu", eps: float = 1e-5,
                 momentum: Optional[float] = 0.1, alpha: Optional[float] = None) -> None:
        super().__init__()
        for name, v in (("num_features", num_features), ("cond_dim", cond_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"ConditionalBatchNorm2d: {name} must be a positive int; got {v!r}")
        if not float(eps) > 0:
            raise ValueError(f"ConditionalBatchNorm2d: eps must be positive; got {eps!r}")
        self.num_features = num_features
        self.cond_dim = cond_dim
        self.act = parse_act("linear" if act is None else act)
        self.alpha = None if alpha is None else float(alpha)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.track_running_stats = True  # read by blocks.batch_norm_momentum, as nn.BatchNorm2d's
        self.gain = nn.Linear(cond_dim, num_features, bias=False)
        self.bias = nn.Linear(cond_dim, num_features, bias=False)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.size(1) != self.num_features:
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"ConditionalBatchNorm2d: x must be 4-D (N, C, H, W) with C = num_features = "
                             f"{self.num_features}; got {shape}")
        if not isinstance(cond, Tensor) or cond.dim() != 2 or cond.size(0) != x.size(0) \
                or cond.size(1) != self.cond_dim:
            shape = list(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
            raise ValueError(f"ConditionalBatchNorm2d: cond must have shape (N, cond_dim) = ({x.size(0)}, "
                             f"{self.cond_dim}) (N = x.size(0)); got {shape}")
        use_batch_stats, factor = batch_norm_momentum(self)
        gain = 1.0 + self.gain(cond)
        bias = self.bias(cond)
        return ops.batch_norm_act(x, gain, bias, self.running_mean, self.running_var, use_batch_stats, factor,
                                  self.eps, self.act, self.alpha, process_group=batch_norm_process_group(self))

    def extra_repr(self) -> str:
        s = f"{self.num_features}, cond_dim={self.cond_dim}, act={self.act!r}, eps={self.eps}, momentum={self.momentum}"
        return s + (f", alpha={self.alpha}" if self.alpha is not None else "")
