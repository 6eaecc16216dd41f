"""Pure-PyTorch spectral_norm: torch.nn.utils.parametrizations.spectral_norm's forward, written out
(same name and argument order as the op in csrc/ganfast.cpp, same checks: ganfast/_args.py's
check_spectral_norm). The oracle the kernels are tested against and the `reference` backend.

weight is read as torch's matrix (dim moved first, the rest flattened). training: n_power_iterations
steps of u = normalize(W v), v = normalize(W^T u) without grad, written into u and v in place; then,
as torch, sigma = u . (W v) with u, v cloned (constants), out = weight / sigma. Returns (out, cache),
cache = [sigma, u, v] in float32 (float64 for float64): what the op returns. Differentiable to every
order w.r.t. weight.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _args


def spectral_norm(weight, u, v, dim, n_power_iterations, eps, training):
    s = _args.check_spectral_norm("ganfast::spectral_norm", weight, u, v, dim, n_power_iterations, eps)
    W = weight.movedim(s.dim, 0).reshape(s.h, s.w)
    if training:
        with torch.no_grad():
            for _ in range(n_power_iterations):
                u.copy_(F.normalize(torch.mv(W, v), dim=0, eps=eps))
                v.copy_(F.normalize(torch.mv(W.t(), u), dim=0, eps=eps))
    uc, vc = u.clone(), v.clone()
    sigma = torch.dot(uc, torch.mv(W, vc))
    compute = _args.spectral_norm_compute_dtype(weight.dtype)
    cache = torch.cat([sigma.detach().reshape(1), uc, vc]).to(compute)
    return weight / sigma, cache
