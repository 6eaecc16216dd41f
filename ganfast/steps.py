"""The discriminator's whole loss in as few passes through D as its layers allow.

    import ganfast.steps as S
    out = S.discriminator_step_loss(D, real, fake.detach(), "wasserstein", gp_weight=10.0)
    out.total.backward()          # out.adversarial, out.penalty, out.real_logits, out.fake_logits

This is the discriminator step of ganfast's training engine, usable from any training loop. It
computes exactly what the textbook composition does,

    loss = discriminator_loss(D(real), D(fake), loss)
         + gradient_penalty(D, real, fake, "wgan-gp", gp_weight)     # gp_weight > 0
         + gradient_penalty(D, real, None, "r1", r1_weight)          # r1_weight > 0

(the same values and gradients, tested in float64), with three changes to how it gets there:

- joint pass: real and fake go through D as one batch, torch.cat([real, fake]), when D has no
  layer that couples the samples of a batch (batch_coupled(D) is False: no BatchNorm in training
  mode -- the WGAN-GP paper's own advice for critics). One forward and one backward through D
  instead of two, and no gradient accumulation between them. With a batch-coupled D the two
  passes stay separate: BatchNorm's statistics over real and fake together are another model.
- R1 (r1_weight > 0): with the joint pass, R1 has a pass of its own over the real samples,
  recorded lean, so that nothing flows back through its forward and the loss's backward stays
  one pass (StyleGAN2-ADA's lazy "Dreg" phase, folded into the same step); with separate passes
  the forward of D on the real samples serves both the loss and R1 (its "Dboth" phase).
- lean double backward (lean=True, ganfast.ops.lean_double_backward): the penalty's graph does
  not send the exact zeros of its activations' second derivative back through D.
The WGAN-GP interpolates always have their own pass: their double backward must not run over the
real and fake rows.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from . import losses, ops
from . import penalty as _penalty
from .nn.fuse import BatchNorm2dParams

__all__ = ["DiscriminatorStepLoss", "batch_coupled", "discriminator_step_loss"]

class DiscriminatorStepLoss(NamedTuple):
    total: Tensor                   # adversarial + penalty: what D descends
    adversarial: Tensor             # discriminator_loss(real_logits, fake_logits, loss)
    penalty: Optional[Tensor]       # the weighted penalties' sum, None without any
    real_logits: Tensor             # D(real) (a view into the joint pass's output where joint)
    fake_logits: Tensor             # D(fake)


def batch_coupled(discriminator) -> bool:
    """Whether D's output for one sample may depend on the other samples of its batch, so that
    real and fake must go through D separately: a BatchNorm (torch's, ganfast's fused ones)
    that uses batch statistics (training mode, or no running statistics), or any module with a
    true attribute `couples_batch` (set it on custom layers such as a minibatch-stddev layer).
    A callable that is not an nn.Module cannot be inspected and counts as coupled."""
    if not isinstance(discriminator, nn.Module):
        return True
    for m in discriminator.modules():
        if getattr(m, "couples_batch", False):
            return True
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, BatchNorm2dParams)):
            if m.training or getattr(m, "running_mean", None) is None:
                return True
    return False


def _logits_check(name: str, out, batch: int) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(f"ganfast.steps: the discriminator must return a tensor; got {type(out).__name__}")
    if out.dim() == 0 or out.shape[0] != batch:
        raise ValueError(f"ganfast.steps: the discriminator's output on {name} must have the batch size "
                         f"{batch} as its first dimension; got shape {tuple(out.shape)}")
    return out


def discriminator_step_loss(discriminator, real: Tensor, fake: Tensor, loss: str = "nonsaturating", *,
                            gp_weight: float = 0.0, r1_weight: float = 0.0, gp_center: float = 1.0,
                            eps: Optional[Tensor] = None, real_label: float = 1.0, fake_label: float = 0.0,
                            joint: Union[bool, str] = "auto", lean: bool = True) -> DiscriminatorStepLoss:
    """D's loss for one step: the adversarial loss (a ganfast.losses kind), plus the WGAN-GP
    penalty gp_weight * E(||grad D(x_hat)|| - gp_center)^2 when gp_weight > 0 (x_hat between
    real and fake, eps per sample as ganfast.penalty.interpolate), plus the R1 penalty
    r1_weight * E||grad D(real)||^2 when r1_weight > 0 (StyleGAN2's gamma/2, times the interval
    for lazy R1). real and fake are treated as data (detached).

    joint: "auto" (one pass over real and fake unless batch_coupled(D)), True (one pass; an error
    if D is batch-coupled), False (two passes, the real one shared with R1).
    lean: record the penalties' graphs lean (see ganfast.ops.lean_double_backward)."""
    for name, t in (("real", real), ("fake", fake)):
        if not isinstance(t, Tensor):
            raise TypeError(f"ganfast.steps.discriminator_step_loss: {name} must be a tensor; got {type(t).__name__}")
        if t.dim() == 0:
            raise ValueError(f"ganfast.steps.discriminator_step_loss: {name} must have a batch dimension")
    if joint not in ("auto", True, False):
        raise ValueError(f"ganfast.steps.discriminator_step_loss: joint must be 'auto', True or False; got {joint!r}")
    for name, w in (("gp_weight", gp_weight), ("r1_weight", r1_weight)):
        if not w >= 0:
            raise ValueError(f"ganfast.steps.discriminator_step_loss: {name} must be >= 0; got {w}")
    # before any pass through D (a BatchNorm's counters): the loss kind, and labels only where it takes them
    losses._check_labels(loss, real_label, fake_label)
    coupled = batch_coupled(discriminator)
    if joint is True and coupled:
        raise ValueError("ganfast.steps.discriminator_step_loss: joint=True, but the discriminator couples the "
                         "samples of a batch (BatchNorm in training mode, or a module with couples_batch=True): "
                         "real and fake must go through it separately (joint='auto' or False)")
    if real.shape[1:] != fake.shape[1:] and joint is True:
        raise ValueError(f"ganfast.steps.discriminator_step_loss: joint=True needs real and fake of the same "
                         f"sample shape; got {tuple(real.shape)} and {tuple(fake.shape)}")
    real, fake = real.detach(), fake.detach()
    use_joint = (joint is True or (joint == "auto" and not coupled)) and real.shape[1:] == fake.shape[1:]

    pen = None
    if use_joint:
        logits = discriminator(torch.cat([real, fake]))
        _logits_check("real and fake together", logits, real.shape[0] + fake.shape[0])
        real_logits, fake_logits = logits.split([real.shape[0], fake.shape[0]])
        if r1_weight > 0:
            # R1 in a pass of its own, recorded lean: nothing flows back through its forward
            pen = _penalty.gradient_penalty(discriminator, real, None, kind="r1", weight=r1_weight, lean=lean)
    elif r1_weight > 0:
        # separate passes: the real one serves the loss and R1 alike
        x = real.requires_grad_(True)
        with ops.lean_double_backward(lean):
            real_logits = _logits_check("real", discriminator(x), real.shape[0])
            pen = _penalty._penalty_at(x, real_logits, "r1", r1_weight, 0.0)
        fake_logits = _logits_check("fake", discriminator(fake), fake.shape[0])
    else:
        real_logits = _logits_check("real", discriminator(real), real.shape[0])
        fake_logits = _logits_check("fake", discriminator(fake), fake.shape[0])

    adversarial = losses.discriminator_loss(real_logits, fake_logits, loss, real_label=real_label,
                                            fake_label=fake_label)
    if gp_weight > 0:
        gp = _penalty.gradient_penalty(discriminator, real, fake, kind="wgan-gp", weight=gp_weight,
                                       center=gp_center, eps=eps, lean=lean)
        pen = gp if pen is None else pen + gp
    total = adversarial if pen is None else adversarial + pen
    return DiscriminatorStepLoss(total, adversarial, pen, real_logits, fake_logits)
