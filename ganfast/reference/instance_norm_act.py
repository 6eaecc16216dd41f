"""Pure-PyTorch instance_norm_act: the oracle of the kernels and the `reference` backend.

out = act(F.instance_norm(x, weight=weight, bias=bias, eps=eps)): per-sample, per-channel
statistics (no running statistics), torch's own InstanceNorm and the activations of
ganfast.reference.bias_act: differentiable to every order. Computed in the kernels' compute dtype
(float32 for half-precision input, as they do), the result rounded to x's dtype.
"""
from __future__ import annotations

import torch.nn.functional as F

from .. import _args
from .bias_act import ACTIVATIONS


def _to(t, dtype):
    return None if t is None else t.to(dtype)


def instance_norm_act(x, weight=None, bias=None, eps=1e-5, act="relu", alpha=0.0):
    _args.check_instance_norm_act("ganfast::instance_norm_act", x, weight, bias, eps)
    act = _args.parse_act(act)
    dtype = _args.batch_norm_compute_dtype(x.dtype)
    w, b = _to(weight, dtype), _to(bias, dtype)
    if x.numel() == 0:
        # torch's instance_norm with affine parameters fails on N = 0 (IndexError in its reshape to
        # (1, N * C, *)); an empty x normalises to an empty result, the parameters' gradients zero
        shape = [1, x.size(1)] + [1] * (x.dim() - 2)
        z = x.to(dtype)
        z = z if w is None else z * w.view(shape)
        z = z if b is None else z + b.view(shape)
    else:
        z = F.instance_norm(x.to(dtype), None, None, w, b, True, 0.0, eps)
    return ACTIVATIONS[act](z, alpha).to(x.dtype)
