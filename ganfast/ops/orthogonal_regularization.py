"""The orthogonal_regularization op family: BigGAN's beta * sum_W ||W W^T * (1 - I)||_F^2 over a list
of weights, one entry point dispatched to the selected backend.

  C++ (cpu, cuda)  torch.ops.ganfast.orthogonal_regularization / _backward: schemas in csrc/ganfast.cpp,
                   kernels in csrc/cpu/orthogonal_regularization.cpp and
                   csrc/cuda/orthogonal_regularization.cu, autograd in
                   csrc/autograd/orthogonal_regularization.cpp; their fake (meta) kernels are here.
  triton           torch.ops.ganfast_triton.orthogonal_regularization / _backward: custom ops defined
                   here around the launchers of ganfast/triton/orthogonal_regularization.py, with fake
                   kernels and autograd.
  reference        ganfast/reference/orthogonal_regularization.py, plain autograd (every order).

The forward op returns (loss, cache): the cache holds every weight's masked Gram (or a tall weight's
W^T W and squared row norms), so the backward redoes no GEMM but the one per weight it needs.
First order only: differentiating the backward raises an error naming it.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from .. import _args, backend
from ..reference import orthogonal_regularization as reference

_C = torch.ops.ganfast


# ---- fake (meta) kernels of the C++ ops --------------------------------------------------------

def _fake_forward(weights, beta):
    _args.check_orthogonal_regularization("ganfast::orthogonal_regularization", weights, beta)
    _, total = _args.ortho_layout(weights)
    acc = _args.ortho_acc_dtype(weights[0].dtype)
    return weights[0].new_empty(()), weights[0].new_empty((total,), dtype=acc)


def _fake_backward(grad_output, weights, cache, beta):
    op = "ganfast::orthogonal_regularization_backward"
    _args.check_orthogonal_regularization(op, weights, beta)
    _, total = _args.ortho_layout(weights)
    _args.check_orthogonal_regularization_backward(op, grad_output, weights, cache, total)
    return [torch.empty(w.shape, dtype=w.dtype, device=w.device) for w in weights]


torch.library.register_fake("ganfast::orthogonal_regularization", _fake_forward)
torch.library.register_fake("ganfast::orthogonal_regularization_backward", _fake_backward)


# ---- the Triton ops --------------------------------------------------------------------------

def _triton():
    from ..triton import orthogonal_regularization as triton_ortho

    return triton_ortho


@torch.library.custom_op("ganfast_triton::orthogonal_regularization", mutates_args=())
def _t_forward(weights: List[Tensor], beta: float) -> Tuple[Tensor, Tensor]:
    return _triton().orthogonal_regularization(weights, beta)


@torch.library.custom_op("ganfast_triton::orthogonal_regularization_backward", mutates_args=())
def _t_backward(grad_output: Tensor, weights: List[Tensor], cache: Tensor, beta: float) -> List[Tensor]:
    return _triton().orthogonal_regularization_backward(grad_output, weights, cache, beta)


_t_forward.register_fake(_fake_forward)
_t_backward.register_fake(_fake_backward)


def _refuse_double_backward(ctx, *grads):
    raise RuntimeError("ganfast_triton::orthogonal_regularization_backward: double backward is not supported for "
                       "orthogonal_regularization (its gradient is first-order only)")


def _setup_nothing(ctx, inputs, output):
    pass


_t_backward.register_autograd(_refuse_double_backward, setup_context=_setup_nothing)


def _setup_forward(ctx, inputs, output):
    weights, beta = inputs
    ctx.beta = beta
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1], *weights)


def _backward_forward(ctx, grad, _grad_cache):
    cache, *weights = ctx.saved_tensors
    if not ctx.needs_input_grad[0] or grad is None:
        return None, None
    return list(_t_backward(grad, list(weights), cache, ctx.beta)), None


_t_forward.register_autograd(_backward_forward, setup_context=_setup_forward)


# ---- entry points ------------------------------------------------------------------------------

_cpp_forward = _C.orthogonal_regularization.default
_cpp_backward = _C.orthogonal_regularization_backward.default


def orthogonal_regularization(weights: Sequence[Tensor], beta: float = 1e-4) -> Tensor:
    """beta * sum_W ||W W^T * (1 - I)||_F^2 over weights (each >= 2-D, read as (shape[0], -1)): every
    Gram by one GEMM, then one launch for all of them forward, one scale and one GEMM per weight
    backward. A 0-dim tensor in the weights' dtype."""
    weights = list(weights)
    if not weights:  # no tensor to resolve the backend from: the shared check says why
        _args.check_orthogonal_regularization("ganfast::orthogonal_regularization", weights, beta)
    impl = backend.resolve(weights[0])
    if impl == backend.CPP:
        return _cpp_forward(weights, beta)[0]
    if impl == backend.TRITON:
        return _t_forward(weights, beta)[0]
    return reference.orthogonal_regularization(weights, beta)


def orthogonal_regularization_grads(weights: Sequence[Tensor], beta: float = 1e-4) -> List[Tensor]:
    """The gradients of orthogonal_regularization(weights, beta) w.r.t. each weight, computed without
    building a graph (what ganfast.penalty.orthogonal_regularization_ adds to .grad)."""
    weights = list(weights)
    if not weights:
        _args.check_orthogonal_regularization("ganfast::orthogonal_regularization", weights, beta)
    impl = backend.resolve(weights[0])
    with torch.no_grad():
        if impl in (backend.CPP, backend.TRITON):
            fwd, bwd = (_cpp_forward, _cpp_backward) if impl == backend.CPP else (_t_forward, _t_backward)
            detached = [w.detach() for w in weights]
            _, cache = fwd(detached, beta)
            one = torch.ones((), dtype=weights[0].dtype, device=weights[0].device)
            return list(bwd(one, detached, cache, beta))
    with torch.enable_grad():
        leaves = [w.detach().requires_grad_(True) for w in weights]
        return list(torch.autograd.grad(reference.orthogonal_regularization(leaves, beta), leaves))
