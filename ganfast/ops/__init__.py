"""ganfast's custom ops, dispatched to the selected backend (see ganfast.backend).

Each op family is one module: ganfast.ops.losses, ganfast.ops.info_loss, ganfast.ops.cycle_loss,
ganfast.ops.orthogonal_regularization, ganfast.ops.penalty, ganfast.ops.bias_act,
ganfast.ops.batch_norm_act, ganfast.ops.instance_norm_act, ganfast.ops.spectral_norm, ganfast.ops.conv_block (whose Triton ops are in
ganfast.ops.triton_conv_block). Public layers (ganfast.losses, ganfast.nn, ...) call these entry
points, never a kernel directly.
"""
from .batch_norm_act import batch_norm_act
from .bias_act import bias_act
from .conv_block import conv_transpose_block
from .cycle_loss import cycle_loss
from .info_loss import info_loss
from .instance_norm_act import instance_norm_act
# Not an op: the switch of the lean double backward (ganfast/ops/lean.py), kept out of __all__,
# which lists the ops (ganfast check covers each of them).
from .lean import is_lean_double_backward, lean_double_backward  # noqa: F401
from .losses import bce_with_logits, binary_cross_entropy, gan_d_loss, gan_g_loss
from .orthogonal_regularization import orthogonal_regularization
from .penalty import interpolate, penalty_from_grad
from .spectral_norm import spectral_norm

__all__ = ["batch_norm_act", "bce_with_logits", "bias_act", "binary_cross_entropy", "conv_transpose_block",
           "cycle_loss", "gan_d_loss", "gan_g_loss", "info_loss", "instance_norm_act", "interpolate", "orthogonal_regularization",
           "penalty_from_grad", "spectral_norm"]
