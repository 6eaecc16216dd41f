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


def _derivative_from_y(y, act, alpha, gain, clamp):
    """dy/dx from y alone (gan_math.h's bias_act_derivative_from_y, order 1): the activations whose
    derivative y determines (_args.act_derivatives_from_y)."""
    f = y / gain
    one = torch.ones_like(f)
    d = {
        "linear": lambda: one,
        "relu": lambda: (f > 0).to(f.dtype),
        "lrelu": lambda: torch.where(f > 0, one, alpha * one),
        "tanh": lambda: 1 - f * f,
        "sigmoid": lambda: f * (1 - f),
        "elu": lambda: torch.where(f > 0, one, f + alpha),
        "selu": lambda: torch.where(f > 0, 1.0507009873554804934193349852946 * one,
                                    f + 1.0507009873554804934193349852946 * 1.6732632423543772848170429916717),
    }[act]() * gain
    if clamp >= 0:
        d = torch.where((y >= clamp) | (y <= -clamp), torch.zeros_like(d), d)
    return d


def bias_act_backward_with_bias(grad_output, x, b, y, dim=1, act="lrelu", alpha=0.2, gain=1.0, clamp=-1.0):
    """(grad_input, grad_bias): bias_act's first derivative times grad_output (through torch's
    autograd at x + b where x is given, else from y), and its sum over every dim but dim, in b's
    dtype. The oracle of ganfast::bias_act_backward_with_bias."""
    op = "ganfast::bias_act_backward_with_bias"
    act = _args.parse_act(act)
    dim = _args.check_bias_act_backward_with_bias(op, grad_output, x, b, y, dim, act, alpha)
    dtype = _compute_dtype(y)
    g = grad_output.to(dtype)
    if x is not None:
        with torch.enable_grad():
            xv = x.detach().to(dtype).requires_grad_(True)
            out = bias_act(xv, b.detach(), dim, act, alpha, gain, clamp)
            (dx,) = torch.autograd.grad(out, xv, g)
    else:
        dx = g * _derivative_from_y(y.to(dtype), act, alpha, gain, clamp)
    dx = dx.to(y.dtype)
    dims = [d for d in range(dx.dim()) if d != dim]
    db = dx.to(dtype).sum(dims) if dims else dx.to(dtype)
    return dx, db.to(b.dtype)
