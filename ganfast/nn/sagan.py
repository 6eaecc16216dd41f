"""SAGAN (Zhang et al., 2019) and BigGAN (Brock et al., 2019) generators and discriminators for
32x32 and 64x64 class-conditional images, with the residual blocks they share.

Layout as BigGAN-PyTorch's arch dicts (ch = width multiplier):

    G 32: linear -> 4x4 x 4ch, up-blocks 4ch -> 4ch -> 4ch -> 4ch (8, 16, 32)
    G 64: linear -> 4x4 x 16ch, up-blocks 16ch -> 16ch -> 8ch -> 4ch -> 2ch (8, 16, 32, 64)
    then BN + ReLU, 3x3 conv to `channels`, tanh.
    D 32: down-blocks channels -> 4ch (16) -> 4ch (8) -> 4ch (8, no pool) -> 4ch (8, no pool)
    D 64: down-blocks channels -> ch (32) -> 2ch (16) -> 4ch (8) -> 8ch (4) -> 16ch (4, no pool)
    then ReLU, sum over positions, projection head psi(h) + <embed(y), h>.

G's up-block: CBN-ReLU, nearest 2x upsample, 3x3 conv, CBN-ReLU, 3x3 conv, plus a 1x1 conv of the
upsampled input. D's down-block: ReLU, 3x3 conv, ReLU, 3x3 conv, 2x2 average pool, plus a 1x1 conv
and pool of the input where the shape changes (the first block has no leading ReLU and pools its
shortcut before the conv: SNGAN's "optimized block"). Self-attention (SelfAttention2d) follows the
blocks whose output resolution is in attn_res.

Spectral norm (eps=SN_EPS=1e-6, BigGAN-PyTorch's setting in its launch scripts; 1e-12 is torch's
default and only differs for an all-zero weight) on every convolution, linear layer and embedding
-- the conditional BatchNorms' gain / bias maps included -- except BigGAN's shared class embedding
`G.shared`, which BigGAN leaves unnormalised ("applying SN to G's embedding seems to randomly
cripple G", BigGAN-PyTorch). Weights initialised orthogonally (BigGAN's default G_init / D_init
'ortho'), biases as torch's defaults.

SAGAN's G conditions every BatchNorm on the class alone (cond = one-hot(y), a per-class gain and
bias); BigGAN's on cat(shared(y), z_chunk) with a hierarchical z: z is split into (blocks + 1)
chunks, the first feeding the linear layer and one per block (hier=False: z feeds the linear
layer whole and every block gets shared(y)).

The discriminators' ReLUs run as ganfast.ops.bias_act, fused with the preceding conv's bias where
there is one (derivatives of every order: R1 / WGAN-GP work); the output BatchNorm + ReLU runs as
ganfast.ops.batch_norm_act, the last conv's bias + tanh as bias_act.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .norm import ConditionalBatchNorm2d
from .spectral_norm import spectral_norm
from .attention import SN_EPS, SelfAttention2d
from .blocks import _running, batch_norm_momentum
from .sync_batchnorm import batch_norm_process_group

RESOLUTIONS = (32, 64)
BOTTOM_WIDTH = 4

# BigGAN-PyTorch's arch dicts: channel multipliers of the block inputs and outputs.
_G_ARCH = {32: ([4, 4, 4], [4, 4, 4]), 64: ([16, 16, 8, 4], [16, 8, 4, 2])}
_D_ARCH = {32: ([4, 4, 4, 4], [True, True, False, False]), 64: ([1, 2, 4, 8, 16], [True, True, True, True, False])}


def _sn(module: nn.Module) -> nn.Module:
    """Orthogonal initialisation of the weight, then spectral norm (its power iteration starts from
    the initialised weight)."""
    nn.init.orthogonal_(module.weight)
    return spectral_norm(module, eps=SN_EPS)


def _conv(cin: int, cout: int, k: int = 3, bias: bool = True) -> nn.Module:
    return _sn(nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias))


def _check_int(cls: str, name: str, v, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"ganfast.nn.{cls}: {name} must be an int >= {lo}; got {v!r}")


def _check_common(cls: str, n_classes, ch, resolution, channels) -> None:
    _check_int(cls, "n_classes", n_classes, 1)
    _check_int(cls, "ch", ch, 1)
    if resolution not in RESOLUTIONS:
        raise ValueError(f"ganfast.nn.{cls}: resolution must be one of {RESOLUTIONS}; got {resolution!r}")
    if channels not in (1, 3):
        raise ValueError(f"ganfast.nn.{cls}: channels must be 1 or 3; got {channels!r}")


def _check_attn_res(cls: str, attn_res, available: Sequence[int]) -> Tuple[int, ...]:
    try:
        res = tuple(int(r) for r in attn_res)
    except TypeError:
        raise ValueError(f"ganfast.nn.{cls}: attn_res must be a sequence of resolutions; got {attn_res!r}") from None
    bad = [r for r in res if r not in available]
    if bad:
        raise ValueError(f"ganfast.nn.{cls}: attn_res {bad} not available; attention can follow blocks of output "
                         f"resolution {sorted(set(available))}")
    return res


def _check_labels(cls: str, y: Tensor, n: int, n_classes: int) -> None:
    """y: (n,) integer class labels in [0, n_classes). The range is checked on the host for CPU
    tensors; on a GPU with torch._assert_async, which does not synchronise (a bad label stops the
    program at the next synchronisation with a device-side assertion)."""
    if not isinstance(y, Tensor) or y.dim() != 1 or y.size(0) != n or y.dtype.is_floating_point or y.is_complex() \
            or y.dtype == torch.bool:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"ganfast.nn.{cls}: y must be a ({n},) integer tensor of class labels; got "
                         f"{shape}{' ' + str(y.dtype) if isinstance(y, Tensor) else ''}")
    if y.numel() == 0:
        return
    if y.device.type == "cpu":
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"ganfast.nn.{cls}: class labels y must lie in [0, {n_classes}); got values in "
                             f"[{lo}, {hi}]")
    else:
        torch._assert_async(((y >= 0) & (y < n_classes)).all(),
                            f"ganfast.nn.{cls}: class labels y must lie in [0, {n_classes})")


def _grad_input(*tensors: Tensor) -> bool:
    """True when a second derivative may be taken: grad mode is on and a model input requires grad
    (a gradient penalty differentiates w.r.t. the input with create_graph=True)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class GBlock(nn.Module):
    """Residual up-block: CBN-ReLU, upsample 2x (nearest), conv 3x3, CBN-ReLU, conv 3x3, plus a 1x1
    conv of the upsampled input. forward(x, cond), cond (N, cond_dim) for both BatchNorms."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(in_channels, cond_dim, act="relu")
        self.conv1 = _conv(in_channels, out_channels)
        self.bn2 = ConditionalBatchNorm2d(out_channels, cond_dim, act="relu")
        self.conv2 = _conv(out_channels, out_channels)
        self.conv_sc = _conv(in_channels, out_channels, 1)
        for bn in (self.bn1, self.bn2):  # the class-conditional gain and bias maps: spectral norm too
            bn.gain = _sn(bn.gain)
            bn.bias = _sn(bn.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = F.interpolate(self.bn1(x, cond), scale_factor=2.0, mode="nearest")
        h = self.conv2(self.bn2(self.conv1(h), cond))
        return h + self.conv_sc(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _relu(x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    return ops.bias_act(x, bias, 1, "relu", 0.0, 1.0, None)


class DBlock(nn.Module):
    """Residual down-block: (ReLU), conv 3x3, ReLU, conv 3x3, (avg-pool 2x2), plus a shortcut
    (1x1 conv and pool) where the shape changes. preactivation=False: no leading ReLU and the
    shortcut pools before its conv (the first block)."""

    def __init__(self, in_channels: int, out_channels: int, preactivation: bool, downsample: bool) -> None:
        super().__init__()
        self.preactivation, self.downsample = preactivation, downsample
        self.conv1 = _conv(in_channels, out_channels)
        self.conv2 = _conv(out_channels, out_channels)
        self.conv_sc = _conv(in_channels, out_channels, 1) if (in_channels != out_channels or downsample) else None

    def forward(self, x: Tensor) -> Tensor:
        h = _relu(x) if self.preactivation else x
        # conv1's bias and the ReLU after it in one kernel
        h = _relu(F.conv2d(h, self.conv1.weight, None, 1, 1), self.conv1.bias)
        h = self.conv2(h)
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.conv_sc is not None:
            if self.preactivation:
                s = self.conv_sc(s)
                s = F.avg_pool2d(s, 2) if self.downsample else s
            else:
                s = F.avg_pool2d(s, 2) if self.downsample else s
                s = self.conv_sc(s)
        return h + s


class _Generator(nn.Module):
    """Shared trunk of SAGANGenerator and BigGANGenerator."""

    _ganfast_batchnorm_children = ("output_bn",)  # run by ganfast.ops (convert_sync_batchnorm marks it)

    def _build(self, n_classes, z_dim, ch, resolution, channels, attn_res, cond_dim, z0) -> None:
        cls = type(self).__name__
        self.n_classes, self.z_dim, self.ch, self.resolution, self.channels = n_classes, z_dim, ch, resolution, channels
        ins, outs = _G_ARCH[resolution]
        ins, outs = [ch * m for m in ins], [ch * m for m in outs]
        block_res = [BOTTOM_WIDTH * 2 ** (i + 1) for i in range(len(outs))]
        self.attn_res = _check_attn_res(cls, attn_res, block_res)
        for r in self.attn_res:
            if outs[block_res.index(r)] < 8:
                raise ValueError(f"ganfast.nn.{cls}: attention at resolution {r} needs >= 8 channels; ch={ch} gives "
                                 f"{outs[block_res.index(r)]}")
        self.linear = _sn(nn.Linear(z0, ins[0] * BOTTOM_WIDTH ** 2))
        self.blocks = nn.ModuleList(GBlock(i, o, cond_dim) for i, o in zip(ins, outs))
        self.attention = nn.ModuleDict({str(r): SelfAttention2d(outs[block_res.index(r)]) for r in self.attn_res})
        self._attn_after = {block_res.index(r): str(r) for r in self.attn_res}
        self.output_bn = nn.BatchNorm2d(outs[-1])
        self.output_conv = _conv(outs[-1], channels)

    def _check_z(self, z: Tensor) -> None:
        if not isinstance(z, Tensor) or z.dim() != 2 or z.size(1) != self.z_dim or not z.dtype.is_floating_point:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"ganfast.nn.{type(self).__name__}: z must be a floating (N, z_dim={self.z_dim}) "
                             f"tensor; got {shape}")

    def _trunk(self, z0: Tensor, conds: List[Tensor], create_graph: bool) -> Tensor:
        h = self.linear(z0).view(z0.size(0), -1, BOTTOM_WIDTH, BOTTOM_WIDTH)
        for i, block in enumerate(self.blocks):
            h = block(h, conds[i])
            if i in self._attn_after:
                h = self.attention[self._attn_after[i]](h, create_graph)
        bn = self.output_bn
        use_batch_stats, factor = batch_norm_momentum(bn)
        rm, rv = _running(bn, use_batch_stats)
        h = ops.batch_norm_act(h, bn.weight, bn.bias, rm, rv, use_batch_stats, factor, bn.eps, "relu",
                               process_group=batch_norm_process_group(bn))
        # the output conv's bias and tanh in one kernel
        h = F.conv2d(h, self.output_conv.weight, None, 1, 1)
        return ops.bias_act(h, self.output_conv.bias, 1, "tanh", 0.0, 1.0, None)


class SAGANGenerator(_Generator):
    """SAGAN's generator: (z (N, z_dim) float, y (N,) int64 class labels) -> (N, channels, R, R) in
    [-1, 1]. Every BatchNorm is conditioned on one-hot(y) (a per-class gain and bias); z feeds the
    first linear layer. attn_res: output resolutions of the blocks followed by self-attention
    (8, 16, 32 at resolution 32; up to 64 at 64); () for none."""

    def __init__(self, n_classes: int, z_dim: int = 128, ch: int = 64, resolution: int = 32, channels: int = 3,
                 attn_res: Sequence[int] = (16,)) -> None:
        super().__init__()
        cls = type(self).__name__
        _check_common(cls, n_classes, ch, resolution, channels)
        _check_int(cls, "z_dim", z_dim, 1)
        self._build(n_classes, z_dim, ch, resolution, channels, attn_res, n_classes, z_dim)

    def spec(self) -> Dict:
        """The constructor's arguments: type(G)(**G.spec()) rebuilds the architecture."""
        return dict(n_classes=self.n_classes, z_dim=self.z_dim, ch=self.ch, resolution=self.resolution,
                    channels=self.channels, attn_res=tuple(self.attn_res))

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        self._check_z(z)
        _check_labels(type(self).__name__, y, z.size(0), self.n_classes)
        # one-hot without F.one_hot (whose range check synchronises with the GPU)
        cond = (y[:, None] == torch.arange(self.n_classes, device=y.device)).to(z.dtype)
        return self._trunk(z, [cond] * len(self.blocks), _grad_input(z))


class BigGANGenerator(_Generator):
    """BigGAN's generator: (z (N, z_dim) float, y (N,) int64) -> (N, channels, R, R) in [-1, 1].

    `shared` = nn.Embedding(n_classes, shared_dim), the class embedding all blocks share. hier=True:
    z is split into len(blocks) + 1 chunks (sizes `z_chunks`, as equal as possible, the first one
    the largest), the first feeding the linear layer, each block's BatchNorms conditioned on
    cat(shared(y), its chunk); hier=False: z feeds the linear layer, every block gets shared(y).
    z_dim must be >= len(blocks) + 1 with hier (4 at resolution 32, 5 at 64)."""

    def __init__(self, n_classes: int, z_dim: int = 120, ch: int = 64, resolution: int = 32, channels: int = 3,
                 attn_res: Sequence[int] = (16,), shared_dim: int = 128, hier: bool = True) -> None:
        super().__init__()
        cls = type(self).__name__
        _check_common(cls, n_classes, ch, resolution, channels)
        _check_int(cls, "shared_dim", shared_dim, 1)
        _check_int(cls, "z_dim", z_dim, 1)
        self.shared_dim, self.hier = shared_dim, bool(hier)
        n_blocks = len(_G_ARCH[resolution][0])
        if self.hier:
            slots = n_blocks + 1
            if z_dim < slots:
                raise ValueError(f"ganfast.nn.{cls}: z_dim must be >= {slots} with hier=True at resolution "
                                 f"{resolution} (one chunk for the linear layer and one per block); got {z_dim}")
            size, rest = divmod(z_dim, slots)
            self.z_chunks = (size + rest,) + (size,) * n_blocks
        else:
            self.z_chunks = (z_dim,)
        cond_dim = shared_dim + (self.z_chunks[1] if self.hier else 0)
        self._build(n_classes, z_dim, ch, resolution, channels, attn_res, cond_dim, self.z_chunks[0])
        self.shared = nn.Embedding(n_classes, shared_dim)
        nn.init.orthogonal_(self.shared.weight)

    def spec(self) -> Dict:
        """The constructor's arguments: type(G)(**G.spec()) rebuilds the architecture."""
        return dict(n_classes=self.n_classes, z_dim=self.z_dim, ch=self.ch, resolution=self.resolution,
                    channels=self.channels, attn_res=tuple(self.attn_res), shared_dim=self.shared_dim, hier=self.hier)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        self._check_z(z)
        _check_labels(type(self).__name__, y, z.size(0), self.n_classes)
        e = self.shared(y).to(z.dtype)
        if self.hier:
            zs = torch.split(z, self.z_chunks, 1)
            z0, conds = zs[0], [torch.cat([e, c], 1) for c in zs[1:]]
        else:
            z0, conds = z, [e] * len(self.blocks)
        return self._trunk(z0, conds, _grad_input(z))


class _Discriminator(nn.Module):
    """The projection discriminator SAGAN and BigGAN share: forward(x, y) -> logits (N,)."""

    def __init__(self, n_classes: int, ch: int = 64, resolution: int = 32, channels: int = 3,
                 attn_res: Sequence[int] = (16,)) -> None:
        super().__init__()
        cls = type(self).__name__
        _check_common(cls, n_classes, ch, resolution, channels)
        self.n_classes, self.ch, self.resolution, self.channels = n_classes, ch, resolution, channels
        mults, down = _D_ARCH[resolution]
        outs = [ch * m for m in mults]
        ins = [channels] + outs[:-1]
        block_res, r = [], resolution
        for d in down:
            r = r // 2 if d else r
            block_res.append(r)
        self.attn_res = _check_attn_res(cls, attn_res, block_res)
        # attention after the first block of that resolution
        self._attn_after = {block_res.index(r): str(r) for r in self.attn_res}
        for i, key in self._attn_after.items():
            if outs[i] < 8:
                raise ValueError(f"ganfast.nn.{cls}: attention at resolution {key} needs >= 8 channels; ch={ch} "
                                 f"gives {outs[i]}")
        self.blocks = nn.ModuleList(DBlock(i, o, preactivation=k > 0, downsample=d)
                                    for k, (i, o, d) in enumerate(zip(ins, outs, down)))
        self.attention = nn.ModuleDict({key: SelfAttention2d(outs[i]) for i, key in self._attn_after.items()})
        self.linear = _sn(nn.Linear(outs[-1], 1))
        self.embed = _sn(nn.Embedding(n_classes, outs[-1]))

    def _check_x(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (self.channels, self.resolution,
                                                                                 self.resolution):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"ganfast.nn.{type(self).__name__}: x must be (N, {self.channels}, {self.resolution}, "
                             f"{self.resolution}); got {shape}")

    def features(self, x: Tensor) -> Tensor:
        """Sum over positions of ReLU(the last block's output): (N, C), the vector the head reads."""
        self._check_x(x)
        create_graph = _grad_input(x)
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self._attn_after:
                h = self.attention[self._attn_after[i]](h, create_graph)
        return _relu(h).sum(dim=(2, 3))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        self._check_x(x)
        _check_labels(type(self).__name__, y, x.size(0), self.n_classes)
        h = self.features(x)
        # projection: psi(h) + <embed(y), h>
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(1)


class SAGANDiscriminator(_Discriminator):
    """SAGAN's projection discriminator: (x (N, channels, R, R), y (N,) int64) -> logits (N,).
    attn_res: output resolutions of the blocks followed by self-attention; () for none."""


class BigGANDiscriminator(_Discriminator):
    """BigGAN's projection discriminator (the same architecture as SAGAN's in BigGAN-PyTorch):
    (x (N, channels, R, R), y (N,) int64) -> logits (N,)."""
