"""CycleGAN's generator and discriminator (Zhu et al., 2017), the layers of the reference code
(junyanz/pytorch-CycleGAN-and-pix2pix: `ResnetGenerator`, `NLayerDiscriminator`) on ganfast's
fused ops: every InstanceNorm and the activation after it is one `ganfast.ops.instance_norm_act`,
every bias + LeakyReLU one `ganfast.ops.bias_act`; the convolutions are torch's (cuDNN's).

    G: reflect-pad 3, conv 7x7 ngf, IN, ReLU
       -> conv 3x3/2 2ngf, IN, ReLU -> conv 3x3/2 4ngf, IN, ReLU
       -> n_blocks x [x + (reflect-pad 1, conv 3x3, IN, ReLU, reflect-pad 1, conv 3x3, IN)(x)]
       -> deconv 3x3/2 2ngf, IN, ReLU -> deconv 3x3/2 ngf, IN, ReLU
       -> reflect-pad 3, conv 7x7 out_ch, tanh
    D (70x70 PatchGAN at n_layers = 3): conv 4x4/2 ndf, lReLU(0.2)
       -> (n_layers - 1) x [conv 4x4/2 min(2^i, 8) ndf, IN, lReLU(0.2)]
       -> conv 4x4/1 min(2^n_layers, 8) ndf, IN, lReLU(0.2) -> conv 4x4/1 1   (a map of patch logits)

InstanceNorm without affine parameters and without running statistics, as the reference's
`--norm instance`. The reference gives the convolutions before an InstanceNorm a bias; here they
have none: the per-(sample, channel) mean subtraction removes any bias exactly, so the function
computed is the same and the bias's gradient would always be 0. Weights N(0, 0.02), biases 0 (the
reference's `init_type normal`).
"""
from __future__ import annotations

from torch import Tensor, nn

from .bias_act import BiasAct
from .dcgan import _positive
from .norm import InstanceNormAct2d

D_SLOPE = 0.2  # the reference's LeakyReLU slope in the PatchGAN discriminator


def cyclegan_init_(module: nn.Module, std: float = 0.02) -> nn.Module:
    """The reference's `init_weights(net, 'normal', 0.02)`: convolution weights N(0, std), biases 0
    (affine InstanceNorm weights N(1, std))."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, InstanceNormAct2d) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, BiasAct) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return module


class ResnetBlock(nn.Module):
    """x + (reflect-pad 1, conv 3x3, IN + ReLU, reflect-pad 1, conv 3x3, IN)(x): the shape kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), InstanceNormAct2d(channels, act="relu"),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False),
            InstanceNormAct2d(channels, act="linear"))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """(B, in_ch, H, W) -> (B, out_ch, H, W) in [-1, 1]; H and W multiples of 4 (two stride-2
    downsamplings and two upsamplings). The reference's `resnet_6blocks` at n_blocks = 6 (its
    default for 128x128 images; 9 for 256x256)."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, ngf: int = 64, n_blocks: int = 6) -> None:
        super().__init__()
        cls = type(self).__name__
        _positive(cls, in_ch=in_ch, out_ch=out_ch, ngf=ngf)
        if not isinstance(n_blocks, int) or isinstance(n_blocks, bool) or n_blocks < 0:
            raise ValueError(f"ganfast.nn.{cls}: n_blocks must be an int >= 0; got {n_blocks!r}")
        self.in_ch, self.out_ch, self.ngf, self.n_blocks = in_ch, out_ch, ngf, n_blocks
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7, bias=False),
                                   InstanceNormAct2d(ngf, act="relu")]
        for i in range(2):  # downsampling
            c = ngf * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False), InstanceNormAct2d(2 * c, act="relu")]
        layers += [ResnetBlock(4 * ngf) for _ in range(n_blocks)]
        for i in range(2):  # upsampling
            c = ngf * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=False),
                       InstanceNormAct2d(c // 2, act="relu")]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        cyclegan_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.size(1) != self.in_ch:
            raise ValueError(f"ganfast.nn.ResnetGenerator: expected input (B, {self.in_ch}, H, W); "
                             f"got {tuple(x.shape)}")
        if x.size(2) % 4 or x.size(3) % 4 or x.size(2) < 4 or x.size(3) < 4:
            raise ValueError(f"ganfast.nn.ResnetGenerator: H and W must be positive multiples of 4 (two stride-2 "
                             f"downsamplings and upsamplings give the input's size back); got {tuple(x.shape[2:])}")
        return self.net(x)

    def extra_repr(self) -> str:
        return f"in_ch={self.in_ch}, out_ch={self.out_ch}, ngf={self.ngf}, n_blocks={self.n_blocks}"


class PatchDiscriminator(nn.Module):
    """(B, in_ch, H, W) -> (B, 1, h, w): a logit per overlapping patch (70x70 at n_layers = 3; a
    32x32 input gives a 2x2 map). The LSGAN/BCE losses average over the map. H and W must be at
    least 3 * 2^n_layers (min_size())."""

    def __init__(self, in_ch: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        cls = type(self).__name__
        _positive(cls, in_ch=in_ch, ndf=ndf, n_layers=n_layers)
        self.in_ch, self.ndf, self.n_layers = in_ch, ndf, n_layers
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, stride=2, padding=1, bias=False),
                                   BiasAct(ndf, "lrelu", alpha=D_SLOPE, gain=1.0)]
        mult = 1
        for i in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                       InstanceNormAct2d(ndf * mult, act="lrelu", alpha=D_SLOPE)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        cyclegan_init_(self)

    def min_size(self) -> int:
        """The smallest H (and W) whose patch map is not empty: every stride-2 layer halves it,
        the two stride-1 4x4 layers take one each, and the InstanceNorm before the last needs
        more than one value per channel."""
        return 2 ** self.n_layers * 3

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.size(1) != self.in_ch:
            raise ValueError(f"ganfast.nn.PatchDiscriminator: expected input (B, {self.in_ch}, H, W); "
                             f"got {tuple(x.shape)}")
        if min(x.size(2), x.size(3)) < self.min_size():
            raise ValueError(f"ganfast.nn.PatchDiscriminator: images of at least {self.min_size()}x{self.min_size()} "
                             f"for n_layers={self.n_layers}; got {tuple(x.shape[2:])}")
        return self.net(x)

    def extra_repr(self) -> str:
        return f"in_ch={self.in_ch}, ndf={self.ndf}, n_layers={self.n_layers}"
