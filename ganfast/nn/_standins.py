"""Pure-torch stand-ins for the issue-12 layers built on other branches (`specnorm`, `cbn`, `ortho`).

The SAGAN / BigGAN models and the training engine import these three names ONLY from here, so the
integrator swaps in the fused versions by editing this one file. Each has the signature and the
semantics of the real one (docs: /work/exp/api.md, issue 12):

- spectral_norm: torch.nn.utils.parametrizations.spectral_norm itself.
- ConditionalBatchNorm2d(num_features, cond_dim, act="relu", eps=1e-5, momentum=0.1, alpha=None):
  act(batch_norm(x) * (1 + gain(cond)) + bias(cond)), gain / bias bias-free nn.Linear(cond_dim, C).
- orthogonal_regularization_(module_or_params, beta): adds 4 * beta * (W W^T * (1 - I)) W, the
  gradient of beta * ||W W^T * (1 - I)||_F^2, to the .grad of every >= 2-D parameter (W reshaped
  to (shape[0], -1)). BigGAN-PyTorch's `ortho(model, strength)` is beta = strength / 2.
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from .._args import parse_act

__all__ = ["ConditionalBatchNorm2d", "orthogonal_regularization_", "spectral_norm"]

_DEFAULT_ALPHA = {"lrelu": 0.2, "elu": 1.0}


def _activation(y: Tensor, act: str, alpha: float) -> Tensor:
    if act == "linear":
        return y
    if act == "relu":
        return F.relu(y)
    if act == "lrelu":
        return F.leaky_relu(y, alpha)
    if act == "tanh":
        return torch.tanh(y)
    if act == "sigmoid":
        return torch.sigmoid(y)
    if act == "elu":
        return F.elu(y, alpha)
    if act == "selu":
        return F.selu(y)
    if act == "softplus":
        return F.softplus(y)
    return F.silu(y)  # swish


class ConditionalBatchNorm2d(nn.Module):
    """Class-conditional BatchNorm + activation: act(BN(x) * (1 + gain(cond)) + bias(cond)).

    BN has no affine parameters of its own (BigGAN's ccbn): the per-sample scale and shift come
    from `cond` (N, cond_dim) through the bias-free linear maps `gain` and `bias`. Running
    statistics as nn.BatchNorm2d (buffers running_mean, running_var, num_batches_tracked).
    """

    def __init__(self, num_features: int, cond_dim: int, act: str = "relu", eps: float = 1e-5,
                 momentum: float = 0.1, alpha: Optional[float] = None) -> None:
        super().__init__()
        for name, v in (("num_features", num_features), ("cond_dim", cond_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ConditionalBatchNorm2d: {name} must be a positive int; got {v!r}")
        self.num_features, self.cond_dim = num_features, cond_dim
        self.act = parse_act(act)
        self.alpha = _DEFAULT_ALPHA.get(self.act, 0.0) if alpha is None else float(alpha)
        self.eps, self.momentum = float(eps), float(momentum)
        self.gain = nn.Linear(cond_dim, num_features, bias=False)
        self.bias = nn.Linear(cond_dim, num_features, bias=False)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        h = F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training, self.momentum, self.eps)
        h = h * (1 + self.gain(cond))[..., None, None] + self.bias(cond)[..., None, None]
        return _activation(h, self.act, self.alpha)

    def extra_repr(self) -> str:
        return f"{self.num_features}, cond_dim={self.cond_dim}, act={self.act!r}, eps={self.eps}, momentum={self.momentum}"


@torch.no_grad()
def orthogonal_regularization_(module_or_params: Union[nn.Module, Iterable[Tensor]], beta: float) -> None:
    """Add BigGAN's orthogonal-regularisation gradient 4 * beta * (W W^T * (1 - I)) W to the .grad
    of every parameter with >= 2 dimensions (created if None), W = p.reshape(p.shape[0], -1)."""
    params = module_or_params.parameters() if isinstance(module_or_params, nn.Module) else module_or_params
    for p in params:
        if p.dim() < 2:
            continue
        w = p.reshape(p.shape[0], -1)
        gram = w @ w.t()
        gram.diagonal().zero_()
        g = (4.0 * beta) * (gram @ w)
        if p.grad is None:
            p.grad = g.view_as(p).clone()
        else:
            p.grad.add_(g.view_as(p))
