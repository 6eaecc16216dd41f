"""DCGAN generator and discriminator (Radford et al., 2015) on ganfast's fused blocks.

Following the DCGAN guidelines: no pooling and no fully connected hidden layers; G upsamples
with transposed convolutions, BatchNorm + ReLU in every layer but the last, tanh at the output;
D downsamples with strided convolutions and LeakyReLU(0.2) (ganfast.ops.bias_act), with no
BatchNorm by default so that a gradient penalty (WGAN-GP, R1) stays valid (norm='batch' adds it
to every layer but the first, as the paper's D). Weights initialised as the paper: convolution
weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .blocks import Conv2dBlock, ConvTransposeBlock

IMAGE_SIZES = (32, 64, 128)


def _num_stages(cls: str, image_size: int) -> int:
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"ganfast.nn.{cls}: image_size must be one of {IMAGE_SIZES}; got {image_size!r}")
    return image_size.bit_length() - 3  # 4x4 doubled to image_size: 32 -> 3, 64 -> 4, 128 -> 5


def _positive(cls: str, **kwargs) -> None:
    for name, v in kwargs.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"ganfast.nn.{cls}: {name} must be a positive int; got {v!r}")


def dcgan_init_(module: nn.Module) -> nn.Module:
    """DCGAN initialisation of every convolution, linear layer and BatchNorm in `module`, in place
    (InfoGAN uses the same)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


class DCGANGenerator(nn.Module):
    """z (B, nz) or (B, nz, 1, 1) -> image (B, nc, image_size, image_size) in [-1, 1].

    ConvTransposeBlock(nz, ngf*2^(n-1), 4, 1, 0) from 1x1 to 4x4, then stride-2 blocks halving the
    channels and doubling the size down to ngf, then ConvTranspose2d(ngf, nc) + tanh; BatchNorm +
    ReLU in every block but the last; no convolution biases (BatchNorm follows). image_size 32, 64
    or 128 (n = 3, 4, 5 blocks before the output block). Layers in `self.main`.
    """

    def __init__(self, nz: int = 128, ngf: int = 64, nc: int = 1, image_size: int = 64) -> None:
        super().__init__()
        cls = type(self).__name__
        _positive(cls, nz=nz, ngf=ngf, nc=nc)
        n = _num_stages(cls, image_size)
        self.nz, self.ngf, self.nc, self.image_size = nz, ngf, nc, image_size
        ch = ngf * 2 ** (n - 1)
        layers = [ConvTransposeBlock(nz, ch, 4, 1, 0)]
        for _ in range(n - 1):
            layers.append(ConvTransposeBlock(ch, ch // 2))
            ch //= 2
        layers.append(ConvTransposeBlock(ch, nc, norm=None, act="tanh"))
        self.main = nn.Sequential(*layers)
        dcgan_init_(self)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() == 2:
            z = z.reshape(z.size(0), z.size(1), 1, 1)
        if z.dim() != 4 or z.shape[1:] != (self.nz, 1, 1):
            raise ValueError(f"ganfast.nn.DCGANGenerator: z must have shape (B, {self.nz}) or "
                             f"(B, {self.nz}, 1, 1); got {tuple(z.shape)}")
        return self.main(z)


class DCGANDiscriminator(nn.Module):
    """image (B, nc, image_size, image_size) -> logits (B,).

    Strided Conv2d(4, 2, 1) + LeakyReLU(0.2) blocks from ndf channels doubling while the size halves
    down to 4x4, then Conv2d(ch, 1, 4, 1, 0) to one logit. norm=None (default): no BatchNorm,
    convolution bias + LeakyReLU fused in ganfast.ops.bias_act, every derivative order exact (a
    gradient penalty is valid); norm='batch': BatchNorm2d in every block but the first.
    """

    def __init__(self, nc: int = 1, ndf: int = 64, image_size: int = 64, norm: Optional[str] = None) -> None:
        super().__init__()
        cls = type(self).__name__
        _positive(cls, nc=nc, ndf=ndf)
        n = _num_stages(cls, image_size)
        if norm not in ("batch", None):
            raise ValueError(f"ganfast.nn.{cls}: norm must be 'batch' or None; got {norm!r}")
        self.nc, self.ndf, self.image_size, self.norm = nc, ndf, image_size, norm
        layers = [Conv2dBlock(nc, ndf, bias=True, norm=None, act="lrelu", alpha=0.2)]
        ch = ndf
        for _ in range(n - 1):
            layers.append(Conv2dBlock(ch, ch * 2, bias=norm is None, norm=norm, act="lrelu", alpha=0.2))
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, 4, 1, 0))
        self.main = nn.Sequential(*layers)
        dcgan_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        s = self.image_size
        if x.dim() != 4 or x.shape[1:] != (self.nc, s, s):
            raise ValueError(f"ganfast.nn.DCGANDiscriminator: input must have shape (B, {self.nc}, {s}, {s}); "
                             f"got {tuple(x.shape)}")
        return self.main(x).view(x.size(0))
