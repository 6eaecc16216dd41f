"""ganfast's custom ops, dispatched to the selected backend (see ganfast.backend).

Each op family is one module: ganfast.ops.losses, ganfast.ops.penalty, ganfast.ops.bias_act. Public layers (ganfast.losses, ...) call
these entry points, never a kernel directly.
"""
from .bias_act import bias_act
from .losses import bce_with_logits, binary_cross_entropy, gan_d_loss, gan_g_loss
from .penalty import interpolate, penalty_from_grad

__all__ = ["bce_with_logits", "bias_act", "binary_cross_entropy", "gan_d_loss", "gan_g_loss", "interpolate",
           "penalty_from_grad"]
