"""ganfast.nn.fuse: fused blocks in an existing model, without changing its parameters.

Inside every nn.Sequential of a model, each run

    ConvTranspose2d -> BatchNorm2d -> ReLU / LeakyReLU / Tanh      (generator)
    ConvTranspose2d -> ReLU / LeakyReLU / Tanh
    Conv2d -> LeakyReLU / ReLU / Tanh                               (discriminator)
    Conv2d -> BatchNorm2d -> LeakyReLU / ReLU / Tanh

is replaced in place, index by index, so that state_dict keys do not change:
  - the convolution's index holds a FusedConvTranspose2d / FusedConv2d that owns the very same
    `weight` and `bias` Parameter objects and runs the whole run;
  - the BatchNorm2d's index holds a BatchNorm2dParams with the very same weight, bias,
    running_mean, running_var and num_batches_tracked objects; its forward is the identity
    (the fused module reads them, and BatchNorm2dParams's training flag, from there);
  - the activation's index becomes nn.Identity.
On the CPU C++ backend a fused transposed convolution stores its weight Parameter in
channels_last on first use (same object and values, other strides; see
blocks.keep_weight_channels_last).
A fused BatchNorm in training mode has no double backward (a clear error): fuse a discriminator
that has BatchNorm only if no gradient penalty differentiates through it in training mode (a D
without BatchNorm, the WGAN-GP setting, keeps derivatives of every order through bias_act).
Variants not computed exactly by the fused path are left as they are: ConvTranspose2d with
groups, dilation or output_padding; any padding_mode but 'zeros'; BatchNorm2d with
track_running_stats=False; anything that is not the exact type listed (subclasses included).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from . import blocks
from .bias_act import LeakyReLU as GanfastLeakyReLU
from .sync_batchnorm import _check_group, convert_sync_batchnorm


def _activation(m: nn.Module):
    """(act name, alpha) of a supported activation module, else None."""
    t = type(m)
    if t is nn.ReLU:
        return "relu", 0.0
    if t is nn.Tanh:
        return "tanh", 0.0
    if t in (nn.LeakyReLU, GanfastLeakyReLU):
        return "lrelu", float(m.negative_slope)
    return None


def _bn_supported(m: nn.Module) -> bool:
    return type(m) is nn.BatchNorm2d and m.track_running_stats and m.running_mean is not None


def _conv_transpose_supported(m: nn.Module) -> bool:
    return (type(m) is nn.ConvTranspose2d and m.groups == 1 and tuple(m.dilation) == (1, 1)
            and tuple(m.output_padding) == (0, 0) and m.padding_mode == "zeros")


def _conv2d_supported(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d and m.padding_mode == "zeros"


class BatchNorm2dParams(nn.Module):
    """The parameters and buffers of a fused BatchNorm2d, under the same names (so state_dict keys
    stay), read by the fused convolution module before it. Its forward is the identity."""

    _version = 2  # nn.BatchNorm2d's state_dict version (num_batches_tracked present)
    _ganfast_batchnorm = True  # run by the fused module (ganfast.nn.convert_sync_batchnorm marks it)

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum
        self.affine, self.track_running_stats = bn.affine, bn.track_running_stats
        # The very same objects: an optimizer built before fuse() keeps updating them.
        self.weight, self.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(bn, name))
        self.train(bn.training)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                "fused into the convolution before it")


class _Fused(nn.Module):
    def __init__(self, conv: nn.Module, bn: Optional[BatchNorm2dParams], act: str, alpha: float) -> None:
        super().__init__()
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode"):
            setattr(self, name, getattr(conv, name))
        self.weight, self.bias = conv.weight, conv.bias
        # Not a registered submodule: the BatchNorm's parameters stay under its own index.
        self._bn = (bn,)
        self.act, self.alpha = act, alpha
        self.train(conv.training)

    @property
    def bn(self) -> Optional[BatchNorm2dParams]:
        return self._bn[0]

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        s += f", padding={self.padding}, bias={self.bias is not None}"
        s += f", batch_norm={self.bn is not None}, act={self.act!r}"
        return s + (f", alpha={self.alpha}" if self.act == "lrelu" else "")


class FusedConvTranspose2d(_Fused):
    """ConvTranspose2d (its Parameters) -> [BatchNorm2d] -> activation, fused (see fuse())."""

    def forward(self, x: Tensor) -> Tensor:
        blocks._check_input(type(self).__name__, x, self.in_channels)
        return blocks.conv_transpose_forward(x, self.weight, self.bias, self._bn[0], self.stride, self.padding,
                                             self.act, self.alpha)


class FusedConv2d(_Fused):
    """Conv2d (its Parameters) -> [BatchNorm2d] -> activation, fused (see fuse())."""

    def forward(self, x: Tensor) -> Tensor:
        blocks._check_input(type(self).__name__, x, self.in_channels)
        return blocks.conv2d_forward(x, self.weight, self.bias, self._bn[0], self.stride, self.padding,
                                     self.dilation, self.groups, self.act, self.alpha)


def _fuse_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules.keys())
    mods = list(seq._modules.values())
    i = 0
    while i < len(mods):
        conv = mods[i]
        if _conv_transpose_supported(conv):
            fused_cls = FusedConvTranspose2d
        elif _conv2d_supported(conv):
            fused_cls = FusedConv2d
        else:
            i += 1
            continue
        j = i + 1
        bn = None
        if j < len(mods) and _bn_supported(mods[j]) and mods[j].num_features == conv.out_channels:
            bn, j = mods[j], j + 1
        act = _activation(mods[j]) if j < len(mods) else None
        if act is None:
            i += 1
            continue
        holder = BatchNorm2dParams(bn) if bn is not None else None
        seq._modules[names[i]] = fused_cls(conv, holder, *act)
        if bn is not None:
            seq._modules[names[i + 1]] = holder
        seq._modules[names[j]] = nn.Identity()
        i = j + 1


def fuse(module: nn.Module, sync_batchnorm: bool = False, process_group=None) -> nn.Module:
    """Replace, in place, the ConvTranspose2d/Conv2d -> [BatchNorm2d] -> activation runs inside
    every nn.Sequential of `module` (itself included) by fused modules sharing the very same
    Parameters and buffers; state_dict keys are unchanged, so a state_dict saved before fusing
    loads after, and the reverse. Returns `module`.

        G = fuse(Generator())   # e.g. PyTorch's DCGAN example, its layers in G.main

    sync_batchnorm=True: then ganfast.nn.convert_sync_batchnorm(module, process_group): every
    BatchNorm (fused or not) computes its training statistics over the process group's global batch
    (None: the default group), as torch.nn.SyncBatchNorm; a no-op without torch.distributed or with
    one process.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"ganfast.nn.fuse: module must be a torch.nn.Module; got {type(module).__name__}")
    if not isinstance(sync_batchnorm, bool):
        raise TypeError(f"ganfast.nn.fuse: sync_batchnorm must be a bool; got {type(sync_batchnorm).__name__}")
    if process_group is not None and not sync_batchnorm:
        raise ValueError("ganfast.nn.fuse: process_group is given but sync_batchnorm is False; pass "
                         "sync_batchnorm=True to synchronise the BatchNorms over it")
    _check_group(process_group, "ganfast.nn.fuse")
    # Collect first: fusing changes the module tree being walked.
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        _fuse_sequential(seq)
    return convert_sync_batchnorm(module, process_group) if sync_batchnorm else module
