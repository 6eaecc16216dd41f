"""The transposed-convolution generator block: ConvTranspose2d -> (BatchNorm2d) -> activation.

conv_transpose_block dispatches by block_impl(x), which is ganfast.backend.resolve(x) except for
"auto" on CUDA tensors where this install has no CUDA kernels: resolve says TRITON, the block runs
the ATEN path (cuDNN's convolution, with TF32 tensor cores where torch allows them) and only its
BatchNorm + activation on Triton (ganfast.ops.batch_norm_act resolves to Triton itself). The Triton
implicit GEMM multiplies float32 in IEEE (no tensor cores), expected 5-10x slower than cuDNN in
TF32, so it runs only when chosen by name (backend "triton").
  ATEN       ATen's transposed convolution (oneDNN on CPU, cuDNN on CUDA), then
             ganfast.ops.batch_norm_act (batch statistics + normalise + affine + activation in
             one fused C++ kernel, its backward fused too). In eval the BatchNorm is folded into
             the convolution's weight and bias and the activation applied in place: one
             convolution, no BatchNorm pass. On CPU the convolution runs in channels_last (see
             CPU_CHANNELS_LAST): oneDNN's NHWC kernels are faster at the DCGAN shapes, and the
             output stays channels_last, so the next block needs no conversion; where nothing
             needs a gradient the activation runs as the convolution's oneDNN post-op.
             (the CPP implementation of the other families, and "auto" on CUDA without them).
  TRITON     ganfast.ops.triton_conv_block.conv_transpose_block (implicit GEMM, fused epilogues)
  REFERENCE  ganfast.reference.conv_block
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backend
from ..reference import conv_block as reference

BLOCK_ACTS = ("relu", "lrelu", "tanh", "linear")

# Run the CPU convolution in channels_last (input and weight converted once; a channels_last input
# costs nothing). Measured by benchmarks/bench_block.py; set False to keep torch's layouts.
CPU_CHANNELS_LAST = True
# Where no gradient is needed (sampling), run the CPU convolution with its activation fused as a
# oneDNN post-op (see _cpu_inference). Set False to use F.conv_transpose2d + the activation.
CPU_FUSED_INFERENCE = True


# The block's implementations: ATen's convolution + ganfast.ops.batch_norm_act, the Triton block, the
# reference (the names backend.resolve gives, and the routing of block_impl below).
ATEN, TRITON, REFERENCE = backend.CPP, backend.TRITON, backend.REFERENCE


def block_impl(x: Tensor) -> str:
    """ATEN, TRITON or REFERENCE: the implementation of the block that runs on x."""
    impl = backend.resolve(x)
    if impl == backend.TRITON and backend.get_backend() == "auto":
        # auto on CUDA without the CUDA kernels: cuDNN beats the IEEE-float32 implicit GEMM
        return ATEN
    return impl


def check_block_args(op: str, x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                     stride: Tuple[int, int], padding: Tuple[int, int], act: str) -> None:
    """The checks every implementation shares (ValueError naming the argument)."""
    if x.dim() != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W); got a {x.dim()}-D tensor of shape "
                         f"{tuple(x.shape)}")
    if conv_weight.dim() != 4:
        raise ValueError(f"{op}: conv_weight must be 4-D (in_channels, out_channels, kH, kW) as "
                         f"nn.ConvTranspose2d's weight; got shape {tuple(conv_weight.shape)}")
    if x.size(1) != conv_weight.size(0):
        raise ValueError(f"{op}: input has {x.size(1)} channels (dim 1 of shape {tuple(x.shape)}); "
                         f"expected in_channels={conv_weight.size(0)}")
    if conv_bias is not None and conv_bias.shape != (conv_weight.size(1),):
        raise ValueError(f"{op}: conv_bias must have shape ({conv_weight.size(1)},); got "
                         f"{tuple(conv_bias.shape)}")
    if act not in BLOCK_ACTS:
        raise ValueError(f"{op}: act must be one of {', '.join(map(repr, BLOCK_ACTS))}; got {act!r}")


def _batch_norm_act():
    # Imported on first use: ganfast/ops/batch_norm_act.py registers the fake kernels of the C++ op.
    from .batch_norm_act import batch_norm_act

    return batch_norm_act


def _act_(y: Tensor, act: str, alpha: float) -> Tensor:
    """The activation, in place on the convolution's fresh output (its backward needs only y)."""
    if act == "relu":
        return y.relu_()
    if act == "tanh":
        return y.tanh_()
    if act == "lrelu":
        # leaky_relu_'s backward reads y: valid for slope >= 0 only (torch refuses the rest in place).
        return F.leaky_relu_(y, alpha) if alpha >= 0 else F.leaky_relu(y, alpha)
    return y


def fold_batch_norm(conv_weight: Tensor, conv_bias: Optional[Tensor], bn_weight: Optional[Tensor],
                    bn_bias: Optional[Tensor], running_mean: Tensor, running_var: Tensor,
                    eps: float) -> Tuple[Tensor, Tensor]:
    """The eval-mode BatchNorm folded into a transposed convolution's weight (Cin, Cout, kh, kw)
    and bias: w' = w * s[co], b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps).
    Computed in float32 at least and rounded once to the weight's dtype; differentiable."""
    dtype = torch.promote_types(conv_weight.dtype, torch.float32)
    scale = torch.rsqrt(running_var.to(dtype) + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.to(dtype)
    shift = -running_mean.to(dtype)
    if conv_bias is not None:
        shift = shift + conv_bias.to(dtype)
    shift = shift * scale
    if bn_bias is not None:
        shift = shift + bn_bias.to(dtype)
    w = (conv_weight.to(dtype) * scale.view(1, -1, 1, 1)).to(conv_weight.dtype)
    return w, shift.to(conv_weight.dtype)


def _mkldnn_pointwise():
    try:
        return torch.ops.mkldnn._convolution_transpose_pointwise.default
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return None


_MKLDNN_CONVT = _mkldnn_pointwise()
_MKLDNN_DTYPES = (torch.float32, torch.bfloat16)


def _cpu_inference(x: Tensor, w: Tensor, b: Optional[Tensor], stride, padding, act: str,
                   alpha: float) -> Optional[Tensor]:
    """The convolution with the activation as a oneDNN post-op (the kernel torch.compile's CPU
    backend uses), where nothing needs a gradient: one pass, no separate activation pass, ~10%
    faster than F.conv_transpose2d + relu_ at the DCGAN shapes here (benchmarks/bench_block.py,
    sample section). None where it does not apply."""
    if (_MKLDNN_CONVT is None or not CPU_FUSED_INFERENCE or x.dtype not in _MKLDNN_DTYPES or x.numel() == 0
            or w.dtype != x.dtype or (b is not None and b.dtype != x.dtype)
            or not torch._C._get_mkldnn_enabled() or torch.compiler.is_compiling()):
        # (under torch.compile its fake kernel disagrees with the real one on strides; inductor
        # fuses the activation itself)
        return None
    attr, scalars = {"relu": ("relu", []), "tanh": ("tanh", []), "lrelu": ("leaky_relu", [alpha]),
                     "linear": ("none", [])}[act]
    return _MKLDNN_CONVT(x, w, b, list(padding), [0, 0], list(stride), [1, 1], 1, attr, scalars, "")


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _aten(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, norm, training,
          momentum, eps, stride, padding, act, alpha):
    if x.is_cpu and CPU_CHANNELS_LAST:
        x = x.contiguous(memory_format=torch.channels_last)
        conv_weight = conv_weight.contiguous(memory_format=torch.channels_last)
    if norm and not training:
        if running_mean is None or running_var is None:
            raise ValueError("ganfast.ops.conv_transpose_block: eval mode (training=False) needs "
                             "running_mean and running_var")
        w, b = fold_batch_norm(conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, eps)
        if x.is_cpu and not _needs_grad(x, conv_weight, conv_bias, bn_weight, bn_bias):
            y = _cpu_inference(x, w, b, stride, padding, act, alpha)
            if y is not None:
                return y
        return _act_(F.conv_transpose2d(x, w, b, stride, padding), act, alpha)
    if not norm and x.is_cpu and not _needs_grad(x, conv_weight, conv_bias):
        y = _cpu_inference(x, conv_weight, conv_bias, stride, padding, act, alpha)
        if y is not None:
            return y
    y = F.conv_transpose2d(x, conv_weight, conv_bias, stride, padding)
    if not norm:
        return _act_(y, act, alpha)
    return _batch_norm_act()(y, bn_weight, bn_bias, running_mean, running_var, True, momentum, eps,
                             act, alpha)


def conv_transpose_block(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                         bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
                         running_mean: Optional[Tensor], running_var: Optional[Tensor], *,
                         norm: bool, training: bool, momentum: float, eps: float,
                         stride: Tuple[int, int], padding: Tuple[int, int], act: str,
                         alpha: float, process_group=None) -> Tensor:
    """act(BN(conv_transpose2d(x, conv_weight, conv_bias, stride, padding))).

    conv_weight (Cin, Cout, kh, kw) as nn.ConvTranspose2d's (groups 1, no dilation or
    output_padding). norm=False: no BatchNorm (bn_* and running_* ignored). norm=True, training:
    batch statistics, running_mean / running_var (when given) updated in place with `momentum`
    (unbiased variance), as F.batch_norm; eval: running statistics. act: 'relu', 'lrelu' (slope
    alpha), 'tanh' or 'linear'. Differentiable w.r.t. x, conv_weight, conv_bias, bn_weight,
    bn_bias; double backward through the fused BatchNorm raises an error.
    process_group: None, or a torch.distributed.ProcessGroup whose global batch gives the BatchNorm's
    statistics in training (ganfast.ops.batch_norm_act's process_group): then the convolution runs
    alone and the synchronised batch_norm_act after it (the fused statistics epilogue of the Triton
    block sees one rank's batch only).
    """
    op = "ganfast.ops.conv_transpose_block"
    check_block_args(op, x, conv_weight, conv_bias, stride, padding, act)
    from .batch_norm_act import sync_process_group

    group = sync_process_group(process_group, norm and training, op)
    if group is not None:
        y = conv_transpose_block(x, conv_weight, conv_bias, None, None, None, None, norm=False, training=False,
                                 momentum=0.0, eps=0.0, stride=stride, padding=padding, act="linear", alpha=0.0)
        return _batch_norm_act()(y, bn_weight, bn_bias, running_mean, running_var, True, momentum, eps, act, alpha,
                                 process_group=group)
    impl = block_impl(x)
    args = (x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var)
    if impl == ATEN:
        return _aten(*args, norm, training, momentum, eps, stride, padding, act, alpha)
    kwargs = dict(norm=norm, training=training, momentum=momentum, eps=eps, stride=stride,
                  padding=padding, act=act, alpha=alpha)
    if impl == TRITON:
        from .triton_conv_block import conv_transpose_block as triton_block

        return triton_block(*args, **kwargs)
    return reference.conv_transpose_block(*args, **kwargs)
