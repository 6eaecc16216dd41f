"""ganfast's custom ops, dispatched to the selected backend (see ganfast.backend).

Each op family is one module: ganfast.ops.losses. Public layers (ganfast.losses, ...) call
these entry points, never a kernel directly.
"""
from .losses import bce_with_logits, binary_cross_entropy, gan_d_loss, gan_g_loss

__all__ = ["bce_with_logits", "binary_cross_entropy", "gan_d_loss", "gan_g_loss"]
