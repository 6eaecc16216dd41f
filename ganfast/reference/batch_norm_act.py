"""Pure-PyTorch batch_norm_act: the oracle of the kernels and the `reference` backend.

out = act(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)), with
weight / bias (C,) or, conditional BatchNorm, (N, C): then act(F.batch_norm(x, ..., None, None, ...)
* weight[n, c] + bias[n, c]); with
torch's own BatchNorm (its running-statistics update included) and the activations of
ganfast.reference.bias_act: differentiable to every order. Computed in the kernels' compute dtype
(float32 for half-precision input, as they do; torch's CPU BatchNorm also refuses a half input with
float32 running statistics and half weights), the result rounded to x's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _args
from .bias_act import ACTIVATIONS


def _to(t, dtype):
    return None if t is None else t.to(dtype)


def _per_sample(t, x, dtype):
    """A (C,) or (N, C) affine operand broadcast against x (N, C, *)."""
    shape = (t.size(0), t.size(1)) if t.dim() == 2 else (1, t.size(0))
    return t.to(dtype).reshape(shape + (1,) * (x.dim() - 2))


def batch_norm_act(x, weight=None, bias=None, running_mean=None, running_var=None, training=True, momentum=0.1,
                   eps=1e-5, act="relu", alpha=0.0):
    _args.check_batch_norm_act("ganfast::batch_norm_act", x, weight, bias, running_mean, running_var, training, eps)
    act = _args.parse_act(act)
    dtype = _args.batch_norm_compute_dtype(x.dtype)
    # Running statistics of another dtype: updated through a compute-dtype copy, written back.
    rm, rv = running_mean, running_var
    copied = rm is not None and rm.dtype != dtype
    if copied:
        rm, rv = rm.to(dtype), rv.to(dtype)
    if _args.batch_norm_per_sample(weight, bias):
        # conditional BatchNorm: normalise without affine, then one weight / bias per sample and channel
        z = F.batch_norm(x.to(dtype), rm, rv, None, None, training, momentum, eps)
        z = z * _per_sample(weight, x, dtype) if weight is not None else z
        z = z + _per_sample(bias, x, dtype) if bias is not None else z
    else:
        z = F.batch_norm(x.to(dtype), rm, rv, _to(weight, dtype), _to(bias, dtype), training, momentum, eps)
    if copied and training:
        with torch.no_grad():
            running_mean.copy_(rm)
            running_var.copy_(rv)
    return ACTIVATIONS[act](z, alpha).to(x.dtype)
