"""Fused convolution blocks: the generator's ConvTranspose2d -> BatchNorm2d -> activation and the
discriminator's Conv2d -> (BatchNorm2d) -> LeakyReLU, with exactly the semantics of the
nn.Sequential of torch.nn modules they replace.

ConvTransposeBlock and Conv2dBlock own real nn.ConvTranspose2d / nn.Conv2d / nn.BatchNorm2d
submodules (`conv`, `bn`), so parameters, buffers, their initialisation and their state_dict
entries are torch's own; only the forward is fused. ganfast.nn.fuse builds the same forward
around the modules of an existing model (FusedConvTranspose2d, FusedConv2d, BatchNorm2dParams).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import backend, ops
from ..ops import conv_block as conv_block_ops
from .sync_batchnorm import batch_norm_process_group

_IntPair = Union[int, Tuple[int, int]]

NORMS = ("batch", None)
BLOCK_ACTS = ("relu", "lrelu", "tanh", None)
DEFAULT_ALPHA = 0.2  # LeakyReLU slope of the DCGAN discriminator (and of ganfast.ops.bias_act)


def _pair(v, name: str) -> Tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, int) for i in t):
        raise ValueError(f"ganfast: {name} must be an int or a pair of ints; got {v!r}")
    return t


def _check_unsupported(cls: str, output_padding=0, dilation=1, groups=1, padding_mode="zeros") -> None:
    if _pair(output_padding, "output_padding") != (0, 0):
        raise ValueError(f"ganfast.nn.{cls}: output_padding={output_padding!r} is not supported (only 0); "
                         "use torch.nn.ConvTranspose2d for it")
    if _pair(dilation, "dilation") != (1, 1):
        raise ValueError(f"ganfast.nn.{cls}: dilation={dilation!r} is not supported (only 1)")
    if groups != 1:
        raise ValueError(f"ganfast.nn.{cls}: groups={groups!r} is not supported (only 1)")
    if padding_mode != "zeros":
        raise ValueError(f"ganfast.nn.{cls}: padding_mode={padding_mode!r} is not supported (only 'zeros')")


def _check_norm_act(cls: str, norm, act, acts=BLOCK_ACTS) -> None:
    if norm not in NORMS:
        raise ValueError(f"ganfast.nn.{cls}: norm must be 'batch' or None; got {norm!r}")
    if act not in acts:
        raise ValueError(f"ganfast.nn.{cls}: act must be one of {', '.join(map(repr, acts))}; got {act!r}")


def _check_input(cls: str, x: Tensor, in_channels: int) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"ganfast.nn.{cls}: input must be a Tensor; got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"ganfast.nn.{cls}: input must be 4-D (N, C, H, W); got a {x.dim()}-D tensor of "
                         f"shape {tuple(x.shape)}")
    if x.size(1) != in_channels:
        raise ValueError(f"ganfast.nn.{cls}: input has {x.size(1)} channels (dim 1 of shape "
                         f"{tuple(x.shape)}); expected in_channels={in_channels}")


def batch_norm_momentum(bn) -> Tuple[bool, float]:
    """(use batch statistics, exponential average factor) of a BatchNorm2d-like module `bn` for one
    forward, counting the batch in num_batches_tracked: torch's _BatchNorm.forward, line for line
    (momentum None = cumulative moving average)."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        # float() reads the counter on the host, as torch does (only for momentum=None)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    return use_batch_stats, factor


def _running(bn, use_batch_stats: bool):
    if not bn.training or bn.track_running_stats:
        return bn.running_mean, bn.running_var
    return None, None


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def keep_weight_channels_last(weight: Tensor, x: Tensor) -> None:
    """Store a convolution's weight Parameter in channels_last where the convolution runs that way
    (the CPU C++ path, ganfast.ops.conv_block.CPU_CHANNELS_LAST): it spares a layout copy of the
    weight per forward and one of its gradient per backward, ~10-15% of a layer's time at the DCGAN
    shapes here. Same Parameter object, same values; only its strides change (state_dict loads,
    optimizers and checkpoints are unaffected)."""
    # Not while torch.compile traces: a parameter's strides are part of the compiled graph's guards.
    # Not under torch.distributed: DistributedDataParallel lays out its gradient buckets by the
    # parameters' strides when it is built, and a weight re-laid out after that has its gradient
    # reduced into the wrong elements, silently (seen with ganfast train --nproc 2 on the CPU).
    if (x.is_cpu and not _distributed() and conv_block_ops.CPU_CHANNELS_LAST and type(weight) is nn.Parameter
            and weight.dim() == 4 and not weight.is_contiguous(memory_format=torch.channels_last)
            and not torch.compiler.is_compiling() and backend.resolve(x) == backend.CPP):
        with torch.no_grad():
            weight.data = weight.data.contiguous(memory_format=torch.channels_last)


def conv_transpose_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], bn, stride, padding,
                           act: Optional[str], alpha: float) -> Tensor:
    """ConvTranspose2d(weight, bias) -> bn (a BatchNorm2d-like module or None) -> act, fused."""
    act = act or "linear"
    keep_weight_channels_last(weight, x)
    if bn is None:
        return conv_block_ops.conv_transpose_block(
            x, weight, bias, None, None, None, None, norm=False, training=False, momentum=0.0, eps=0.0,
            stride=stride, padding=padding, act=act, alpha=alpha)
    use_batch_stats, factor = batch_norm_momentum(bn)
    running_mean, running_var = _running(bn, use_batch_stats)
    return conv_block_ops.conv_transpose_block(
        x, weight, bias, bn.weight, bn.bias, running_mean, running_var, norm=True,
        training=use_batch_stats, momentum=factor, eps=bn.eps, stride=stride, padding=padding, act=act,
        alpha=alpha, process_group=batch_norm_process_group(bn))


def _fold_conv2d(weight, bias, bn):
    """Eval BatchNorm folded into a Conv2d's weight (Cout, Cin, kh, kw) or a Linear's (Cout, Cin)
    and the bias (float32 math)."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    scale = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(dtype)
    shift = -bn.running_mean.to(dtype)
    if bias is not None:
        shift = shift + bias.to(dtype)
    shift = shift * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(dtype)
    scale = scale.view(-1, *([1] * (weight.dim() - 1)))
    return (weight.to(dtype) * scale).to(weight.dtype), shift.to(weight.dtype)


def conv2d_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], bn, stride, padding, dilation,
                   groups, act: Optional[str], alpha: float) -> Tensor:
    """Conv2d(weight, bias) -> bn (BatchNorm2d-like or None) -> act. Without batch statistics the
    bias (and an eval BatchNorm, folded into weight and bias) goes into ganfast.ops.bias_act with
    the activation: derivatives of every order, so a gradient penalty through D is exact."""
    act = act or "linear"
    use_batch_stats, factor = batch_norm_momentum(bn) if bn is not None else (False, 0.0)
    if bn is not None and not use_batch_stats:
        weight, bias = _fold_conv2d(weight, bias, bn)
    if bn is None or not use_batch_stats:
        y = F.conv2d(x, weight, None, stride, padding, dilation, groups)
        if bias is None and act == "linear":
            return y
        return ops.bias_act(y, bias, 1, act, alpha, 1.0, None)
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    running_mean, running_var = _running(bn, use_batch_stats)
    return conv_block_ops._batch_norm_act()(y, bn.weight, bn.bias, running_mean, running_var, True,
                                             factor, bn.eps, act, alpha, process_group=batch_norm_process_group(bn))


class ConvTransposeBlock(nn.Module):
    """nn.Sequential(nn.ConvTranspose2d, nn.BatchNorm2d, activation) in fused kernels.

    norm: 'batch' or None; act: 'relu', 'lrelu' (slope `alpha`, default 0.2), 'tanh' or None.
    Parameters and buffers are those of the submodules `conv` (nn.ConvTranspose2d) and `bn`
    (nn.BatchNorm2d, absent when norm=None), initialised by torch: a state_dict of the Sequential
    maps key by key ('0.' -> 'conv.', '1.' -> 'bn.'). Training uses batch statistics and updates
    running_mean / running_var (unbiased) / num_batches_tracked (momentum None = cumulative
    average); eval uses the running statistics (folded into the convolution on the C++ backends).
    """

    _ganfast_batchnorm_children = ("bn",)  # run by ganfast.ops (ganfast.nn.convert_sync_batchnorm marks it)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _IntPair = 4, stride: _IntPair = 2,
                 padding: _IntPair = 1, bias: bool = False, norm: Optional[str] = "batch",
                 act: Optional[str] = "relu", momentum: Optional[float] = 0.1, eps: float = 1e-5, *,
                 alpha: Optional[float] = None, output_padding: _IntPair = 0, dilation: _IntPair = 1,
                 groups: int = 1, padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__()
        _check_unsupported(type(self).__name__, output_padding, dilation, groups, padding_mode)
        _check_norm_act(type(self).__name__, norm, act)
        self.norm, self.act = norm, act
        self.alpha = float(DEFAULT_ALPHA if alpha is None else alpha)
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias,
                                       device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(out_channels, eps, momentum, device=device, dtype=dtype) \
            if norm == "batch" else None

    def forward(self, x: Tensor) -> Tensor:
        conv = self.conv
        _check_input(type(self).__name__, x, conv.in_channels)
        return conv_transpose_forward(x, conv.weight, conv.bias, self.bn, conv.stride, conv.padding,
                                      self.act, self.alpha)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, act={self.act!r}" + (f", alpha={self.alpha}" if self.act == "lrelu" else "")


class Conv2dBlock(nn.Module):
    """nn.Sequential(nn.Conv2d, [nn.BatchNorm2d], activation) for discriminators, fused.

    norm=None: the convolution without its bias, then ganfast.ops.bias_act(bias, act, alpha,
    gain=1) (derivatives of every order: gradient penalties stay exact). norm='batch': the
    convolution then ganfast.ops.batch_norm_act in training (no double backward); in eval the
    BatchNorm is folded into the convolution and bias_act applies the activation.
    act: 'lrelu' (slope `alpha`, default 0.2), 'relu', 'tanh' or None.
    """

    _ganfast_batchnorm_children = ("bn",)  # run by ganfast.ops (ganfast.nn.convert_sync_batchnorm marks it)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _IntPair = 4, stride: _IntPair = 2,
                 padding: _IntPair = 1, bias: bool = True, norm: Optional[str] = None,
                 act: Optional[str] = "lrelu", momentum: Optional[float] = 0.1, eps: float = 1e-5, *,
                 alpha: Optional[float] = None, dilation: _IntPair = 1, groups: int = 1,
                 padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__()
        _check_unsupported(type(self).__name__, 0, 1, 1, padding_mode)
        _check_norm_act(type(self).__name__, norm, act)
        self.norm, self.act = norm, act
        self.alpha = float(DEFAULT_ALPHA if alpha is None else alpha)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                              bias=bias, device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(out_channels, eps, momentum, device=device, dtype=dtype) \
            if norm == "batch" else None

    def forward(self, x: Tensor) -> Tensor:
        conv = self.conv
        _check_input(type(self).__name__, x, conv.in_channels)
        return conv2d_forward(x, conv.weight, conv.bias, self.bn, conv.stride, conv.padding, conv.dilation,
                              conv.groups, self.act, self.alpha)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, act={self.act!r}" + (f", alpha={self.alpha}" if self.act == "lrelu" else "")


def linear_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], bn, act: Optional[str], alpha: float) -> Tensor:
    """Linear(weight, bias) -> bn (BatchNorm1d-like or None) -> act, as conv2d_forward: the bias (and
    an eval BatchNorm, folded) in ganfast.ops.bias_act, or ganfast.ops.batch_norm_act in training."""
    act = act or "linear"
    use_batch_stats, factor = batch_norm_momentum(bn) if bn is not None else (False, 0.0)
    if bn is not None and not use_batch_stats:
        weight, bias = _fold_conv2d(weight, bias, bn)
    if bn is None or not use_batch_stats:
        y = F.linear(x, weight)
        if bias is None and act == "linear":
            return y
        return ops.bias_act(y, bias, 1, act, alpha, 1.0, None)
    y = F.linear(x, weight, bias)
    running_mean, running_var = _running(bn, use_batch_stats)
    return conv_block_ops._batch_norm_act()(y, bn.weight, bn.bias, running_mean, running_var, True,
                                             factor, bn.eps, act, alpha, process_group=batch_norm_process_group(bn))


class LinearBlock(nn.Module):
    """nn.Sequential(nn.Linear, [nn.BatchNorm1d], activation), fused as Conv2dBlock: the fully
    connected layers of the InfoGAN models. Parameters in `linear` (nn.Linear) and `bn`
    (nn.BatchNorm1d, norm='batch'); input (B, in_features)."""

    _ganfast_batchnorm_children = ("bn",)  # run by ganfast.ops (ganfast.nn.convert_sync_batchnorm marks it)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, norm: Optional[str] = None,
                 act: Optional[str] = "relu", momentum: Optional[float] = 0.1, eps: float = 1e-5, *,
                 alpha: Optional[float] = None, device=None, dtype=None) -> None:
        super().__init__()
        _check_norm_act(type(self).__name__, norm, act)
        self.norm, self.act = norm, act
        self.alpha = float(DEFAULT_ALPHA if alpha is None else alpha)
        self.linear = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.bn = nn.BatchNorm1d(out_features, eps, momentum, device=device, dtype=dtype) \
            if norm == "batch" else None

    def forward(self, x: Tensor) -> Tensor:
        lin = self.linear
        if x.dim() != 2 or x.size(1) != lin.in_features:
            raise ValueError(f"ganfast.nn.LinearBlock: input must have shape (B, {lin.in_features}); "
                             f"got {tuple(x.shape)}")
        return linear_forward(x, lin.weight, lin.bias, self.bn, self.act, self.alpha)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, act={self.act!r}" + (f", alpha={self.alpha}" if self.act == "lrelu" else "")
