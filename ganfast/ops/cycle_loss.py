"""The cycle_loss op family: CycleGAN's cycle-consistency / identity L1 loss over a list of
(reconstructed, original) pairs, one entry point dispatched to the selected backend.

  C++ (cpu, cuda)  torch.ops.ganfast.cycle_loss / cycle_loss_backward: schemas in csrc/ganfast.cpp,
                   kernels in csrc/cpu/cycle_loss.cpp and csrc/cuda/cycle_loss.cu, autograd in
                   csrc/autograd/cycle_loss.cpp; their fake (meta) kernels are registered here.
  triton           torch.ops.ganfast_triton.cycle_loss / cycle_loss_backward: custom ops defined
                   here around the launchers of ganfast/triton/cycle_loss.py, with fake kernels and
                   autograd.
  reference        ganfast/reference/cycle_loss.py, plain autograd (every order).

First order only: differentiating cycle_loss_backward raises an error naming it (C++: autograd's
not-implemented fallback; Triton: _refuse_double_backward below).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from .. import _args, backend
from ..reference import cycle_loss as reference

_C = torch.ops.ganfast


# ---- fake (meta) kernels of the C++ ops --------------------------------------------------------
# The same checks as the kernels (no data is read), and the gradients' layouts of make_cycle_pair:
# reconstructed's own where it is dense (contiguous, channels_last), else contiguous.


def _walk_layout(r: Tensor) -> Tensor:
    if _args.is_non_overlapping_and_dense(r):
        return torch.empty_like(r)
    return torch.empty_like(r, memory_format=torch.contiguous_format)


def _fake_cycle_loss(reconstructed, original, weight):
    _args.check_cycle_loss("ganfast::cycle_loss", reconstructed, original, weight)
    return reconstructed[0].new_empty(())


def _fake_cycle_loss_backward(grad_output, reconstructed, original, weight, grad_reconstructed, grad_original):
    op = "ganfast::cycle_loss_backward"
    _args.check_cycle_loss(op, reconstructed, original, weight)
    _args.check_cycle_loss_grad_output(op, grad_output, reconstructed[0])
    grad_r = [_walk_layout(r) for r in reconstructed] if grad_reconstructed else []
    grad_o = [_walk_layout(r) for r in reconstructed] if grad_original else []
    return grad_r, grad_o


_FAKES = {"cycle_loss": _fake_cycle_loss, "cycle_loss_backward": _fake_cycle_loss_backward}
for _name, _fake in _FAKES.items():
    torch.library.register_fake(f"ganfast::{_name}", _fake)


# ---- the Triton ops --------------------------------------------------------------------------


def _triton():
    from ..triton import cycle_loss as triton_cycle_loss

    return triton_cycle_loss


@torch.library.custom_op("ganfast_triton::cycle_loss", mutates_args=())
def _t_cycle_loss(reconstructed: List[Tensor], original: List[Tensor], weight: float) -> Tensor:
    return _triton().cycle_loss(reconstructed, original, weight)


@torch.library.custom_op("ganfast_triton::cycle_loss_backward", mutates_args=())
def _t_cycle_loss_backward(grad_output: Tensor, reconstructed: List[Tensor], original: List[Tensor], weight: float,
                           grad_reconstructed: bool, grad_original: bool) -> Tuple[List[Tensor], List[Tensor]]:
    return _triton().cycle_loss_backward(grad_output, reconstructed, original, weight, grad_reconstructed,
                                         grad_original)


_t_cycle_loss.register_fake(_fake_cycle_loss)
_t_cycle_loss_backward.register_fake(_fake_cycle_loss_backward)


def _refuse_double_backward(ctx, *grads):
    raise RuntimeError("ganfast_triton::cycle_loss_backward: double backward is not supported for cycle_loss "
                       "(its gradient is first-order only)")


def _setup_nothing(ctx, inputs, output):
    pass


_t_cycle_loss_backward.register_autograd(_refuse_double_backward, setup_context=_setup_nothing)


def _setup_cycle_loss(ctx, inputs, output):
    reconstructed, original, weight = inputs
    ctx.count = len(reconstructed)
    ctx.weight = weight
    ctx.save_for_backward(*reconstructed, *original)


def _backward_cycle_loss(ctx, grad):
    saved = ctx.saved_tensors
    r, o = list(saved[:ctx.count]), list(saved[ctx.count:])
    want_r, want_o = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    if not (want_r or want_o):
        return None, None, None
    grad_r, grad_o = _t_cycle_loss_backward(grad, r, o, ctx.weight, want_r, want_o)
    return (list(grad_r) if want_r else None), (list(grad_o) if want_o else None), None


_t_cycle_loss.register_autograd(_backward_cycle_loss, setup_context=_setup_cycle_loss)


# ---- entry point ---------------------------------------------------------------------------

_cpp_cycle_loss = _C.cycle_loss.default


def cycle_loss(reconstructed: Sequence[Tensor], original: Sequence[Tensor], weight: float = 1.0) -> Tensor:
    """weight * sum_i mean|reconstructed[i] - original[i]| (lists of pairs, one launch forward and
    one backward for all of them)."""
    reconstructed, original = list(reconstructed), list(original)
    if not reconstructed:  # no tensor to resolve the backend from: the shared check says why
        _args.check_cycle_loss("ganfast::cycle_loss", reconstructed, original, weight)
    impl = backend.resolve(reconstructed[0])
    if impl == backend.CPP:
        return _cpp_cycle_loss(reconstructed, original, weight)
    if impl == backend.TRITON:
        return _t_cycle_loss(reconstructed, original, weight)
    return reference.cycle_loss(reconstructed, original, weight)
