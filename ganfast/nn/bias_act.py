"""Bias + activation modules on ganfast.ops.bias_act (one kernel, derivatives of every order)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import ops
from .._args import parse_act


class BiasAct(nn.Module):
    """y = clamp(gain * act(x + bias), -clamp, clamp) along `dim`, one fused kernel.

    num_channels: size of a learnable bias (initialised to 0) along `dim`; None for no bias.
    alpha/gain/clamp: as ganfast.ops.bias_act (None: the activation's defaults; no clamp).
    """

    def __init__(self, num_channels: Optional[int] = None, act: str = "lrelu", dim: int = 1,
                 alpha: Optional[float] = None, gain: Optional[float] = None,
                 clamp: Optional[float] = None) -> None:
        super().__init__()
        self.act = parse_act(act)
        self.dim, self.alpha, self.gain, self.clamp = dim, alpha, gain, clamp
        self.bias = nn.Parameter(torch.zeros(num_channels)) if num_channels is not None else None

    def forward(self, x: Tensor) -> Tensor:
        return ops.bias_act(x, self.bias, self.dim, self.act, self.alpha, self.gain, self.clamp)

    def extra_repr(self) -> str:
        parts = [f"act={self.act!r}", f"dim={self.dim}"]
        if self.bias is not None:
            parts.insert(0, f"num_channels={self.bias.numel()}")
        for name in ("alpha", "gain", "clamp"):
            if getattr(self, name) is not None:
                parts.append(f"{name}={getattr(self, name)}")
        return ", ".join(parts)


class LeakyReLU(nn.Module):
    """Drop-in for torch.nn.LeakyReLU, fused, with exact derivatives of every order (its double
    backward allocates nothing but the result, where eager's fills a zeros tensor).

    inplace is accepted for compatibility; the result is computed out of place (the same values,
    the input left as it was).
    """

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return ops.bias_act(input, None, 1, "lrelu", self.negative_slope, 1.0, None)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")
