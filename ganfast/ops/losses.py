"""The losses op family: one entry point per op, dispatched to the selected backend.

  C++ (cpu, cuda)  torch.ops.ganfast.*: schemas in csrc/ganfast.cpp, kernels in csrc/cpu and
                   csrc/cuda, autograd in csrc/autograd.cpp; their fake (meta) kernels are
                   registered here so torch.compile and opcheck can trace them.
  triton           torch.ops.ganfast_triton.*: custom ops defined here around the launchers in
                   ganfast/triton/losses.py, with their fake kernels and autograd.
  reference        ganfast/reference/losses.py, plain autograd.

Each backward is an op of its own. The losses family does not promise double backward:
differentiating a backward op raises an error naming it (C++: autograd's not-implemented
fallback; Triton: _no_double_backward below).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _args, backend
from ..reference import losses as reference

_C = torch.ops.ganfast


# ---- fake (meta) kernels of the C++ ops --------------------------------------------------------
# They are also the ops' Meta kernels, which the dispatcher picks whenever any argument is a meta
# tensor: so they check devices as the real kernels do, else a CPU input with a meta target would
# return an uninitialised CPU tensor instead of an error.


def _check_devices(op, first_name, first, **others):
    for name, t in others.items():
        if t is not None:
            _args.check_same_device(first, t, f"ganfast::{op}", first_name, name)


def _fake_loss(input, target, weight, pos_weight, reduction, op="bce_with_logits"):
    _check_devices(op, "input", input, target=target, weight=weight, pos_weight=pos_weight)
    return input.new_empty(input.shape if reduction == "none" else ())


def _fake_loss_grad(grad_output, input, target, weight, pos_weight, reduction, op="bce_with_logits_backward"):
    _check_devices(op, "input", input, target=target, weight=weight, pos_weight=pos_weight,
                   grad_output=grad_output)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _fake_loss_nopw(input, target, weight, reduction):
    return _fake_loss(input, target, weight, None, reduction, op="binary_cross_entropy")


def _fake_loss_grad_nopw(grad_output, input, target, weight, reduction):
    return _fake_loss_grad(grad_output, input, target, weight, None, reduction, op="binary_cross_entropy_backward")


def _fake_loss_target_grad(grad_output, input, target, weight, pos_weight, reduction):
    return _fake_loss_grad(grad_output, input, target, weight, pos_weight, reduction,
                           op="bce_with_logits_target_backward")


def _fake_loss_target_grad_nopw(grad_output, input, target, weight, reduction):
    return _fake_loss_grad(grad_output, input, target, weight, None, reduction,
                           op="binary_cross_entropy_target_backward")


def _fake_d_loss(real_logits, fake_logits, kind, real_label, fake_label):
    _check_devices("gan_d_loss", "real_logits", real_logits, fake_logits=fake_logits)
    return real_logits.new_empty(())


def _fake_d_loss_backward(grad_output, real_logits, fake_logits, kind, real_label, fake_label):
    _check_devices("gan_d_loss_backward", "real_logits", real_logits, fake_logits=fake_logits,
                   grad_output=grad_output)
    return (torch.empty_like(real_logits, memory_format=torch.contiguous_format),
            torch.empty_like(fake_logits, memory_format=torch.contiguous_format))


def _fake_g_loss(fake_logits, kind):
    return fake_logits.new_empty(())


def _fake_g_loss_backward(grad_output, fake_logits, kind):
    _check_devices("gan_g_loss_backward", "fake_logits", fake_logits, grad_output=grad_output)
    return torch.empty_like(fake_logits, memory_format=torch.contiguous_format)


_FAKES = {
    "bce_with_logits": _fake_loss,
    "bce_with_logits_backward": _fake_loss_grad,
    "bce_with_logits_target_backward": _fake_loss_target_grad,
    "binary_cross_entropy": _fake_loss_nopw,
    "binary_cross_entropy_backward": _fake_loss_grad_nopw,
    "binary_cross_entropy_target_backward": _fake_loss_target_grad_nopw,
    "gan_d_loss": _fake_d_loss,
    "gan_d_loss_backward": _fake_d_loss_backward,
    "gan_g_loss": _fake_g_loss,
    "gan_g_loss_backward": _fake_g_loss_backward,
}
for _name, _fake in _FAKES.items():
    torch.library.register_fake(f"ganfast::{_name}", _fake)


# ---- the Triton ops --------------------------------------------------------------------------
# Defined with torch.library.custom_op around the launchers (which run the kernels directly),
# so each has an explicit fake kernel: torch.library.triton_op's automatic one touches tensor
# storage under the interpreter and fails opcheck.


def _triton():
    from ..triton import losses as triton_losses

    return triton_losses


def _no_double_backward(name: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"ganfast_triton::{name}: double backward is not supported for the losses "
                           "family (its gradient is first-order only)")

    def setup_context(ctx, inputs, output):
        pass

    return backward, setup_context


@torch.library.custom_op("ganfast_triton::bce_with_logits", mutates_args=())
def _t_bce_with_logits(input: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor],
                       reduction: str) -> Tensor:
    return _triton().bce_with_logits(input, target, weight, pos_weight, reduction)


@torch.library.custom_op("ganfast_triton::bce_with_logits_backward", mutates_args=())
def _t_bce_with_logits_backward(grad_output: Tensor, input: Tensor, target: Tensor, weight: Optional[Tensor],
                                pos_weight: Optional[Tensor], reduction: str) -> Tensor:
    return _triton().bce_with_logits_backward(grad_output, input, target, weight, pos_weight, reduction)


@torch.library.custom_op("ganfast_triton::bce_with_logits_target_backward", mutates_args=())
def _t_bce_with_logits_target_backward(grad_output: Tensor, input: Tensor, target: Tensor,
                                       weight: Optional[Tensor], pos_weight: Optional[Tensor],
                                       reduction: str) -> Tensor:
    return _triton().bce_with_logits_target_backward(grad_output, input, target, weight, pos_weight, reduction)


@torch.library.custom_op("ganfast_triton::binary_cross_entropy", mutates_args=())
def _t_binary_cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor], reduction: str) -> Tensor:
    return _triton().binary_cross_entropy(input, target, weight, reduction)


@torch.library.custom_op("ganfast_triton::binary_cross_entropy_backward", mutates_args=())
def _t_binary_cross_entropy_backward(grad_output: Tensor, input: Tensor, target: Tensor,
                                     weight: Optional[Tensor], reduction: str) -> Tensor:
    return _triton().binary_cross_entropy_backward(grad_output, input, target, weight, reduction)


@torch.library.custom_op("ganfast_triton::binary_cross_entropy_target_backward", mutates_args=())
def _t_binary_cross_entropy_target_backward(grad_output: Tensor, input: Tensor, target: Tensor,
                                            weight: Optional[Tensor], reduction: str) -> Tensor:
    return _triton().binary_cross_entropy_target_backward(grad_output, input, target, weight, reduction)


@torch.library.custom_op("ganfast_triton::gan_d_loss", mutates_args=())
def _t_gan_d_loss(real_logits: Tensor, fake_logits: Tensor, kind: str, real_label: float,
                  fake_label: float) -> Tensor:
    return _triton().gan_d_loss(real_logits, fake_logits, kind, real_label, fake_label)


@torch.library.custom_op("ganfast_triton::gan_d_loss_backward", mutates_args=())
def _t_gan_d_loss_backward(grad_output: Tensor, real_logits: Tensor, fake_logits: Tensor, kind: str,
                           real_label: float, fake_label: float) -> tuple[Tensor, Tensor]:
    return _triton().gan_d_loss_backward(grad_output, real_logits, fake_logits, kind, real_label, fake_label)


@torch.library.custom_op("ganfast_triton::gan_g_loss", mutates_args=())
def _t_gan_g_loss(fake_logits: Tensor, kind: str) -> Tensor:
    return _triton().gan_g_loss(fake_logits, kind)


@torch.library.custom_op("ganfast_triton::gan_g_loss_backward", mutates_args=())
def _t_gan_g_loss_backward(grad_output: Tensor, fake_logits: Tensor, kind: str) -> Tensor:
    return _triton().gan_g_loss_backward(grad_output, fake_logits, kind)


_TRITON_OPS = {
    "bce_with_logits": _t_bce_with_logits,
    "bce_with_logits_backward": _t_bce_with_logits_backward,
    "bce_with_logits_target_backward": _t_bce_with_logits_target_backward,
    "binary_cross_entropy": _t_binary_cross_entropy,
    "binary_cross_entropy_backward": _t_binary_cross_entropy_backward,
    "binary_cross_entropy_target_backward": _t_binary_cross_entropy_target_backward,
    "gan_d_loss": _t_gan_d_loss,
    "gan_d_loss_backward": _t_gan_d_loss_backward,
    "gan_g_loss": _t_gan_g_loss,
    "gan_g_loss_backward": _t_gan_g_loss_backward,
}
for _name, _op in _TRITON_OPS.items():
    _op.register_fake(_FAKES[_name])
    if _name.endswith("_backward"):
        _backward, _setup = _no_double_backward(_name)
        _op.register_autograd(_backward, setup_context=_setup)


# Autograd of the Triton forward ops: the same formulas as csrc/autograd.cpp.

def _refuse_grad(ctx, index: int, op: str, arg: str) -> None:
    if ctx.needs_input_grad[index]:
        raise RuntimeError(f"{op}: the gradient with respect to {arg} is not supported "
                           "(torch.nn.functional does not provide it either)")


def _setup_loss(ctx, inputs, output):
    input, target, weight, pos_weight, reduction = inputs
    ctx.save_for_backward(input, target, weight, pos_weight)
    ctx.reduction = reduction


def _backward_bce_with_logits(ctx, grad):
    input, target, weight, pos_weight = ctx.saved_tensors
    _refuse_grad(ctx, 2, "ganfast_triton::bce_with_logits", "weight")
    _refuse_grad(ctx, 3, "ganfast_triton::bce_with_logits", "pos_weight")
    grad_input = grad_target = None
    if ctx.needs_input_grad[0]:
        grad_input = _t_bce_with_logits_backward(grad, input, target, weight, pos_weight, ctx.reduction)
    if ctx.needs_input_grad[1]:
        grad_target = _t_bce_with_logits_target_backward(grad, input, target, weight, pos_weight, ctx.reduction)
    return grad_input, grad_target, None, None, None


def _setup_bce(ctx, inputs, output):
    input, target, weight, reduction = inputs
    ctx.save_for_backward(input, target, weight)
    ctx.reduction = reduction


def _backward_binary_cross_entropy(ctx, grad):
    input, target, weight = ctx.saved_tensors
    _refuse_grad(ctx, 2, "ganfast_triton::binary_cross_entropy", "weight")
    grad_input = grad_target = None
    if ctx.needs_input_grad[0]:
        grad_input = _t_binary_cross_entropy_backward(grad, input, target, weight, ctx.reduction)
    if ctx.needs_input_grad[1]:
        grad_target = _t_binary_cross_entropy_target_backward(grad, input, target, weight, ctx.reduction)
    return grad_input, grad_target, None, None


def _setup_d_loss(ctx, inputs, output):
    real, fake, kind, real_label, fake_label = inputs
    ctx.save_for_backward(real, fake)
    ctx.args = (kind, real_label, fake_label)


def _backward_d_loss(ctx, grad):
    real, fake = ctx.saved_tensors
    grad_real, grad_fake = _t_gan_d_loss_backward(grad, real, fake, *ctx.args)
    return grad_real, grad_fake, None, None, None


def _setup_g_loss(ctx, inputs, output):
    fake, kind = inputs
    ctx.save_for_backward(fake)
    ctx.kind = kind


def _backward_g_loss(ctx, grad):
    (fake,) = ctx.saved_tensors
    return _t_gan_g_loss_backward(grad, fake, ctx.kind), None


_t_bce_with_logits.register_autograd(_backward_bce_with_logits, setup_context=_setup_loss)
_t_binary_cross_entropy.register_autograd(_backward_binary_cross_entropy, setup_context=_setup_bce)
_t_gan_d_loss.register_autograd(_backward_d_loss, setup_context=_setup_d_loss)
_t_gan_g_loss.register_autograd(_backward_g_loss, setup_context=_setup_g_loss)


# ---- entry points --------------------------------------------------------------------------
# Called on every training step: resolve the backend, call one op. Arguments are validated by
# the implementation itself (C++: ganfast_common.h, Python: ganfast/_args.py).

_cpp_bce_with_logits = _C.bce_with_logits.default
_cpp_binary_cross_entropy = _C.binary_cross_entropy.default
_cpp_gan_d_loss = _C.gan_d_loss.default
_cpp_gan_g_loss = _C.gan_g_loss.default


def bce_with_logits(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                    pos_weight: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    """torch.nn.functional.binary_cross_entropy_with_logits as one fused op."""
    impl = backend.resolve(input)
    if impl == backend.CPP:
        return _cpp_bce_with_logits(input, target, weight, pos_weight, reduction)
    if impl == backend.TRITON:
        return _t_bce_with_logits(input, target, weight, pos_weight, reduction)
    return reference.bce_with_logits(input, target, weight, pos_weight, reduction)


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                         reduction: str = "mean") -> Tensor:
    """torch.nn.functional.binary_cross_entropy (on probabilities) as one fused op."""
    impl = backend.resolve(input)
    if impl == backend.CPP:
        return _cpp_binary_cross_entropy(input, target, weight, reduction)
    if impl == backend.TRITON:
        return _t_binary_cross_entropy(input, target, weight, reduction)
    return reference.binary_cross_entropy(input, target, weight, reduction)


def gan_d_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "nonsaturating",
               real_label: float = 1.0, fake_label: float = 0.0) -> Tensor:
    """The discriminator's loss on its logits, real and fake halves in one kernel."""
    impl = backend.resolve(real_logits)
    if impl == backend.CPP:
        return _cpp_gan_d_loss(real_logits, fake_logits, kind, real_label, fake_label)
    if impl == backend.TRITON:
        return _t_gan_d_loss(real_logits, fake_logits, kind, real_label, fake_label)
    return reference.gan_d_loss(real_logits, fake_logits, kind, real_label, fake_label)


def gan_g_loss(fake_logits: Tensor, kind: str = "nonsaturating") -> Tensor:
    """The generator's loss on the discriminator's logits of its samples."""
    impl = backend.resolve(fake_logits)
    if impl == backend.CPP:
        return _cpp_gan_g_loss(fake_logits, kind)
    if impl == backend.TRITON:
        return _t_gan_g_loss(fake_logits, kind)
    return reference.gan_g_loss(fake_logits, kind)
