"""Pure-PyTorch transposed-convolution block: ConvTranspose2d -> BatchNorm2d -> activation.

The oracle of the fused implementations and the `reference` backend: torch's own
F.conv_transpose2d, F.batch_norm and activations, differentiable to every order. Running
statistics are updated in place by F.batch_norm exactly as nn.BatchNorm2d does.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def activation(y: Tensor, act: str, alpha: float) -> Tensor:
    if act == "linear":
        return y
    if act == "relu":
        return F.relu(y)
    if act == "lrelu":
        return F.leaky_relu(y, alpha)
    if act == "tanh":
        return torch.tanh(y)
    raise ValueError(f"ganfast: act must be one of 'relu', 'lrelu', 'tanh', 'linear'; got {act!r}")


def conv_transpose_block(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                         bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
                         running_mean: Optional[Tensor], running_var: Optional[Tensor], *,
                         norm: bool, training: bool, momentum: float, eps: float,
                         stride: Tuple[int, int], padding: Tuple[int, int], act: str,
                         alpha: float) -> Tensor:
    y = F.conv_transpose2d(x, conv_weight, conv_bias, stride, padding)
    if norm:
        y = F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)
    return activation(y, act, alpha)
