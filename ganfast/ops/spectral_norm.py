"""The spectral_norm op family: torch.nn.utils.parametrizations.spectral_norm's forward (power
method with u, v updated in place in training, sigma, weight / sigma) as one op, and its backward
as one op; first derivatives only (double backward is a clear error). ganfast.nn.spectral_norm is
the public layer.

  C++ (cpu, cuda)  torch.ops.ganfast.spectral_norm / spectral_norm_backward: schemas in
                   csrc/ganfast.cpp, kernels in csrc/cpu/spectral_norm.cpp and
                   csrc/cuda/spectral_norm.cu, autograd in csrc/autograd/spectral_norm.cpp (a C++
                   Node: the op mutates u and v); their fake kernels are registered here.
  triton           torch.ops.ganfast_triton.spectral_norm (mutating u, v) / spectral_norm_backward
                   around ganfast/triton/spectral_norm.py. torch.library refuses an autograd
                   formula on a mutating custom op, so the forward runs inside an
                   autograd.Function, as batch_norm_act's.
  reference        ganfast/reference/spectral_norm.py, plain autograd.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _args, backend
from ..reference import spectral_norm as reference

_C = torch.ops.ganfast


def _fake_spectral_norm(weight, u, v, dim, n_power_iterations, eps, training):
    s = _args.check_spectral_norm("ganfast::spectral_norm", weight, u, v, dim, n_power_iterations, eps)
    _args.check_kernel_dtype(weight.dtype, "ganfast_spectral_norm")
    compute = _args.spectral_norm_compute_dtype(weight.dtype)
    return (weight.new_empty(weight.shape), weight.new_empty((1 + s.h + s.w,), dtype=compute))


def _fake_spectral_norm_backward(grad_output, weight, cache, dim):
    _args.check_spectral_norm_backward("ganfast::spectral_norm_backward", grad_output, weight, cache, dim)
    return weight.new_empty(weight.shape)


torch.library.register_fake("ganfast::spectral_norm", _fake_spectral_norm)
torch.library.register_fake("ganfast::spectral_norm_backward", _fake_spectral_norm_backward)


# ---- the Triton ops ------------------------------------------------------------------------------


def _triton():
    from ..triton import spectral_norm as triton_spectral_norm

    return triton_spectral_norm


@torch.library.custom_op("ganfast_triton::spectral_norm", mutates_args=("u", "v"))
def _t_spectral_norm(weight: Tensor, u: Tensor, v: Tensor, dim: int, n_power_iterations: int, eps: float,
                     training: bool) -> tuple[Tensor, Tensor]:
    return _triton().spectral_norm(weight, u, v, dim, n_power_iterations, eps, training)


@torch.library.custom_op("ganfast_triton::spectral_norm_backward", mutates_args=())
def _t_spectral_norm_backward(grad_output: Tensor, weight: Tensor, cache: Tensor, dim: int) -> Tensor:
    return _triton().spectral_norm_backward(grad_output, weight, cache, dim)


_t_spectral_norm.register_fake(_fake_spectral_norm)
_t_spectral_norm_backward.register_fake(_fake_spectral_norm_backward)


class _TritonSpectralNorm(torch.autograd.Function):
    """The formula of csrc/autograd/spectral_norm.cpp around the mutating Triton op (grad mode is off
    in forward, so the op records nothing itself)."""

    @staticmethod
    def forward(ctx, weight, u, v, dim, n_power_iterations, eps, training):
        out, cache = _t_spectral_norm(weight, u, v, dim, n_power_iterations, eps, training)
        ctx.save_for_backward(weight, cache)
        ctx.dim = dim
        ctx.mark_non_differentiable(cache)
        return out, cache

    @staticmethod
    def backward(ctx, grad_out, _grad_cache):
        weight, cache = ctx.saved_tensors
        none = (None,) * 6
        if grad_out is None or not ctx.needs_input_grad[0]:
            return (None,) + none
        return (_t_spectral_norm_backward(grad_out, weight, cache, ctx.dim),) + none


def _no_double_backward(ctx, *grads):
    # The C++ op's autogradNotImplementedFallback says the same.
    raise RuntimeError("derivative for ganfast_triton::spectral_norm_backward is not implemented: spectral_norm has "
                       "first derivatives only (no double backward)")


_t_spectral_norm_backward.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


# ---- entry point ---------------------------------------------------------------------------------

_cpp_spectral_norm = _C.spectral_norm.default


def spectral_norm_with_cache(weight: Tensor, u: Tensor, v: Tensor, dim: int = 0, n_power_iterations: int = 1,
                             eps: float = 1e-12, training: bool = True) -> tuple[Tensor, Tensor]:
    """(weight / sigma, cache = [sigma, u, v]); see spectral_norm."""
    if u.requires_grad or v.requires_grad:  # the C++ autograd kernel says the same
        raise RuntimeError("ganfast::spectral_norm: u and v are the power method's state (buffers, updated in "
                           "place) and must not require grad")
    dim, n_power_iterations, eps, training = int(dim), int(n_power_iterations), float(eps), bool(training)
    impl = backend.resolve(weight)
    if impl == backend.CPP:
        return _cpp_spectral_norm(weight, u, v, dim, n_power_iterations, eps, training)
    if impl == backend.TRITON:
        return _TritonSpectralNorm.apply(weight, u, v, dim, n_power_iterations, eps, training)
    return reference.spectral_norm(weight, u, v, dim, n_power_iterations, eps, training)


def spectral_norm(weight: Tensor, u: Tensor, v: Tensor, dim: int = 0, n_power_iterations: int = 1,
                  eps: float = 1e-12, training: bool = True) -> Tensor:
    """weight / sigma(weight), sigma by the power method, as torch.nn.utils.parametrizations.spectral_norm.

    weight: >= 2 dims, read as the matrix (weight.size(dim), rest). u (h,), v (w,): the power
    method's state, weight's dtype, contiguous; in training n_power_iterations steps update them in
    place (no grad); in eval they are only read. Differentiable once w.r.t. weight, u and v held
    constant (as torch's clones); double backward raises.
    """
    return spectral_norm_with_cache(weight, u, v, dim, n_power_iterations, eps, training)[0]
