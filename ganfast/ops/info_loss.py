"""The info_loss op family (InfoGAN's mutual-information loss): one entry point, dispatched to
the selected backend.

  C++ (cpu, cuda)  torch.ops.ganfast.info_loss / info_loss_backward: schemas in csrc/ganfast.cpp,
                   kernels in csrc/cpu/info_loss.cpp and csrc/cuda/info_loss.cu, autograd in
                   csrc/autograd/info_loss.cpp; their fake (meta) kernels are registered here.
  triton           torch.ops.ganfast_triton.info_loss / info_loss_backward: custom ops defined
                   here around the launchers in ganfast/triton/info_loss.py, with their fake
                   kernels and autograd.
  reference        ganfast/reference/info_loss.py, plain autograd.

First order only: differentiating info_loss_backward raises an error naming it (C++: autograd's
not-implemented fallback; Triton: _no_double_backward below).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _args, backend
from ..reference import info_loss as reference

_C = torch.ops.ganfast


# ---- fake (meta) kernels of the C++ ops --------------------------------------------------------
# The same checks as the kernels (shapes, dtypes, devices; not the data-dependent range of the
# codes), so a meta or fake call fails where the real one would.


def _grad_like(t, like):
    if t is None:
        return like.new_empty((0,))
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _fake_info_loss(cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight, cont_weight):
    o = _args.check_info_loss("ganfast::info_loss", cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd,
                              cat_weight, cont_weight)
    return o.like.new_empty(())


def _fake_info_loss_backward(grad_output, cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight,
                             cont_weight):
    op = "ganfast::info_loss_backward"
    o = _args.check_info_loss(op, cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight, cont_weight)
    _args.check_info_grad_output(op, grad_output, o)
    return tuple(_grad_like(t, o.like) for t in (cat_logits, cont_mean, cont_codes, cont_logstd))


_FAKES = {"info_loss": _fake_info_loss, "info_loss_backward": _fake_info_loss_backward}
for _name, _fake in _FAKES.items():
    torch.library.register_fake(f"ganfast::{_name}", _fake)


# ---- the Triton ops ----------------------------------------------------------------------------


def _triton():
    from ..triton import info_loss as triton_info_loss

    return triton_info_loss


@torch.library.custom_op("ganfast_triton::info_loss", mutates_args=())
def _t_info_loss(cat_logits: Optional[Tensor], cat_codes: Optional[Tensor], cont_mean: Optional[Tensor],
                 cont_codes: Optional[Tensor], cont_logstd: Optional[Tensor], cat_weight: float,
                 cont_weight: float) -> Tensor:
    return _triton().info_loss(cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight, cont_weight)


@torch.library.custom_op("ganfast_triton::info_loss_backward", mutates_args=())
def _t_info_loss_backward(grad_output: Tensor, cat_logits: Optional[Tensor], cat_codes: Optional[Tensor],
                          cont_mean: Optional[Tensor], cont_codes: Optional[Tensor], cont_logstd: Optional[Tensor],
                          cat_weight: float, cont_weight: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _triton().info_loss_backward(grad_output, cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd,
                                        cat_weight, cont_weight)


_t_info_loss.register_fake(_fake_info_loss)
_t_info_loss_backward.register_fake(_fake_info_loss_backward)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("ganfast_triton::info_loss_backward: double backward is not supported for info_loss "
                       "(its gradient is first-order only)")


_t_info_loss_backward.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


def _setup_info_loss(ctx, inputs, output):
    cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight, cont_weight = inputs
    ctx.save_for_backward(cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd)
    ctx.weights = (cat_weight, cont_weight)


def _backward_info_loss(ctx, grad):
    saved = ctx.saved_tensors
    gx, gmu, gcc, gls = _t_info_loss_backward(grad, *saved, *ctx.weights)
    needs = ctx.needs_input_grad
    return (gx if needs[0] else None, None, gmu if needs[2] else None, gcc if needs[3] else None,
            gls if needs[4] else None, None, None)


_t_info_loss.register_autograd(_backward_info_loss, setup_context=_setup_info_loss)


# ---- entry point -------------------------------------------------------------------------------

_cpp_info_loss = _C.info_loss.default


def info_loss(cat_logits: Optional[Tensor] = None, cat_codes: Optional[Tensor] = None,
              cont_mean: Optional[Tensor] = None, cont_codes: Optional[Tensor] = None,
              cont_logstd: Optional[Tensor] = None, cat_weight: float = 1.0, cont_weight: float = 1.0) -> Tensor:
    """InfoGAN's mutual-information loss in one fused op (see ganfast.losses.info_loss)."""
    like = cat_logits if cat_logits is not None else cont_mean
    if like is None:  # neither part: the checks say which argument is missing
        _args.check_info_loss("ganfast::info_loss", cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd,
                              cat_weight, cont_weight)
    impl = backend.resolve(like)
    if impl == backend.CPP:
        return _cpp_info_loss(cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight, cont_weight)
    if impl == backend.TRITON:
        return _t_info_loss(cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight, cont_weight)
    return reference.info_loss(cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, cat_weight, cont_weight)
