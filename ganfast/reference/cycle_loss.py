"""Pure-PyTorch cycle_loss: the oracle the kernels are tested against, and the fallback backend.

Same name and argument order as the op (csrc/ganfast.cpp), same checks (ganfast/_args.py):
weight * sum_i mean|reconstructed[i] - original[i]|, differentiable to every order (torch.abs's
derivative is sign, 0 at equality, as F.l1_loss's). Half-precision inputs are computed in float32
and returned in their own dtype, as the kernels do.
"""
from __future__ import annotations

import torch

from .. import _args


def cycle_loss(reconstructed, original, weight=1.0):
    _args.check_cycle_loss("ganfast::cycle_loss", reconstructed, original, weight)
    dtype = torch.float64 if reconstructed[0].dtype == torch.float64 else torch.float32
    total = None
    for r, o in zip(reconstructed, original):
        term = (r.to(dtype) - o.to(dtype)).abs().mean()  # the mean of nothing is NaN, as F.l1_loss's
        total = term if total is None else total + term
    return (total * weight).to(reconstructed[0].dtype)
