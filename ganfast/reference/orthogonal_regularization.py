"""Pure-PyTorch orthogonal_regularization: the oracle the kernels are tested against, and the
fallback backend.

Same name and argument order as the op (csrc/ganfast.cpp), same checks (ganfast/_args.py):
beta * sum_W ||W W^T * (1 - I)||_F^2 with W = w.reshape(w.shape[0], -1), written the way BigGAN
states it (one Gram per weight, the mask 1 - I), differentiable to every order. Half-precision
weights are computed in float32 and the result returned in their dtype, as the kernels do.
"""
from __future__ import annotations

import math

import torch

from .. import _args


def orthogonal_regularization(weights, beta=1e-4):
    weights = list(weights)
    _args.check_orthogonal_regularization("ganfast::orthogonal_regularization", weights, beta)
    acc = _args.ortho_acc_dtype(weights[0].dtype)
    total = None
    for w in weights:
        W = w.reshape(w.shape[0], math.prod(w.shape[1:])).to(acc)  # (-1 is ambiguous for 0 rows)
        G = W @ W.t()
        off = G * (1 - torch.eye(W.shape[0], dtype=acc, device=W.device))
        term = off.square().sum()
        total = term if total is None else total + term
    return (total * beta).to(weights[0].dtype)
