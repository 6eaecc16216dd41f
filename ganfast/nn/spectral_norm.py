"""ganfast.nn.spectral_norm: a drop-in for torch.nn.utils.parametrizations.spectral_norm whose
forward is one fused op (ganfast.ops.spectral_norm: power method, sigma and weight / sigma) and
whose backward is one op, instead of eager's ~10 small ops per weight per forward.

Same signature, same parametrization (torch.nn.utils.parametrize), same buffers `_u` and `_v`, so
the same state_dict keys (`parametrizations.weight.original`, `parametrizations.weight.0._u`,
`parametrizations.weight.0._v`): a state_dict saved with either implementation loads into the other.
Registration draws u and v from the global RNG exactly as torch does (normal_ of size h, then of size
w, normalised, then 15 power steps, in torch's own eager code), so with the same seed both start from
the same u and v (up to the rounding of the one power step register_parametrization's check call runs). Values and gradients are torch's up to float rounding: in training, sigma is taken
as ||W^T u||^2 / max(||W^T u||, eps), which equals torch's u . (W v) for v = normalize(W^T u) without
reading W a third time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .. import ops

__all__ = ["spectral_norm", "SpectralNorm"]


class SpectralNorm(nn.Module):
    """The parametrization: weight -> weight / sigma(weight) (ganfast.ops.spectral_norm); buffers
    `_u` (h,) and `_v` (w,) as torch's _SpectralNorm. A 1-D weight is F.normalize'd, as in torch."""

    def __init__(self, weight: Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12) -> None:
        super().__init__()
        ndim = weight.ndim
        if dim >= ndim or dim < -ndim:
            raise IndexError(f"Dimension out of range (expected to be in range of [-{ndim}, {ndim - 1}] but got {dim})")
        if n_power_iterations <= 0:
            raise ValueError("Expected n_power_iterations to be positive, but got "
                             f"n_power_iterations={n_power_iterations}")
        if not eps > 0:
            raise ValueError(f"spectral_norm: eps must be positive; got {eps}")
        if weight.numel() == 0:
            raise ValueError(f"spectral_norm: the weight has no elements (shape {tuple(weight.shape)}): its spectral "
                             "norm is undefined")
        self.dim = dim if dim >= 0 else dim + ndim
        self.eps = eps
        if ndim > 1:
            self.n_power_iterations = n_power_iterations
            weight_mat = self._reshape_weight_to_matrix(weight)
            h, w = weight_mat.size()
            # torch's draws, in torch's order: the same seed gives the same u and v
            u = weight_mat.new_empty(h).normal_(0, 1)
            v = weight_mat.new_empty(w).normal_(0, 1)
            self.register_buffer("_u", F.normalize(u, dim=0, eps=self.eps))
            self.register_buffer("_v", F.normalize(v, dim=0, eps=self.eps))
            self._power_method(weight_mat, 15)

    def _reshape_weight_to_matrix(self, weight: Tensor) -> Tensor:
        return weight.movedim(self.dim, 0).flatten(1)

    @torch.no_grad()
    def _power_method(self, weight_mat: Tensor, n_power_iterations: int) -> None:
        # Registration only (once per weight): torch's eager steps, so the start is bit-identical.
        for _ in range(n_power_iterations):
            self._u = F.normalize(torch.mv(weight_mat, self._v), dim=0, eps=self.eps, out=self._u)
            self._v = F.normalize(torch.mv(weight_mat.H, self._u), dim=0, eps=self.eps, out=self._v)

    def forward(self, weight: Tensor) -> Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        return ops.spectral_norm(weight, self._u, self._v, self.dim, self.n_power_iterations, self.eps, self.training)

    def right_inverse(self, value: Tensor) -> Tensor:
        return value

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}, n_power_iterations={getattr(self, 'n_power_iterations', None)}"


def spectral_norm(module: nn.Module, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12,
                  dim: int | None = None) -> nn.Module:
    """Spectral normalization of `module.<name>`, as torch.nn.utils.parametrizations.spectral_norm
    (same arguments, defaults, buffers and state_dict keys), with the fused ganfast op.

    dim: the output dimension (default 1 for ConvTranspose1/2/3d, else 0). Returns the module.
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"Module '{module}' has no parameter or buffer with name '{name}'")
    if dim is None:
        dim = 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
    parametrize.register_parametrization(module, name, SpectralNorm(weight, n_power_iterations, dim, eps))
    return module
