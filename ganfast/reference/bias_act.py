"""Pure-PyTorch bias_act: the oracle of the kernels and the `reference` backend.

y = clamp(gain * act(x + b), -clamp, clamp), with torch's own activations (their derivatives of
every order are torch's, the reference the fused backward is tested against).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _args
from .losses import _compute_dtype

ACTIVATIONS = {
    "linear": lambda v, alpha: v,
    "relu": lambda v, alpha: F.relu(v),
    "lrelu": lambda v, alpha: F.leaky_relu(v, alpha),
    "tanh": lambda v, alpha: torch.tanh(v),
    "sigmoid": lambda v, alpha: torch.sigmoid(v),
    "elu": lambda v, alpha: F.elu(v, alpha),
    "selu": lambda v, alpha: F.selu(v),
    "softplus": lambda v, alpha: -F.logsigmoid(-v),  # exact: F.softplus switches to v above 20
    "swish": lambda v, alpha: v * torch.sigmoid(v),
}


def bias_act(x, b=None, dim=1, act="lrelu", alpha=0.2, gain=1.0, clamp=-1.0):
    dim = _args.check_bias_act("ganfast::bias_act", x, b, dim)
    act = _args.parse_act(act)
    dtype = _compute_dtype(x)
    v = x.to(dtype)
    if b is not None:
        v = v + b.to(dtype).reshape([-1 if d == dim else 1 for d in range(x.dim())])
    y = ACTIVATIONS[act](v, alpha) * gain
    if clamp >= 0:
        y = y.clamp(-clamp, clamp)
    return y.to(x.dtype)
