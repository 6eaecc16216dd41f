"""InfoGAN's generator and discriminator (Chen et al., 2016), the paper's MNIST architecture
(its Table 1) adapted to 32x32 or 64x64 images with 1 or 3 channels, on ganfast's fused blocks.

The generator reads a latent made of noise z, a categorical code c_cat (one of n_cat values,
one-hot) and continuous codes c_cont; the discriminator's trunk feeds two heads: D's logit, and Q,
which predicts the codes from the image (categorical logits, continuous means and, optionally,
log standard deviations). Training adds the mutual-information lower bound
`ganfast.losses.info_loss(cat_logits, c_cat, cont_mean, c_cont, cont_logstd)` to both players'
losses. The paper's layers, with the image size s:

    G: FC 1024, BN, ReLU -> FC 2*ngf*(s/4)^2, BN, ReLU -> deconv 4x4/2 ngf, BN, ReLU -> deconv 4x4/2 nc, tanh
    D: conv 4x4/2 ndf, lReLU(0.1) -> conv 4x4/2 2*ndf, BN, lReLU -> FC 1024, BN, lReLU -> FC 1 (D)
    Q: (from D's FC 1024) FC 128, BN, lReLU -> FC n_cat + n_cont (+ n_cont log-stds)

(the paper's G ends in a sigmoid on [0, 1] images; here tanh on [-1, 1], as the rest of ganfast).
Weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0 (dcgan_init_).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Conv2dBlock, ConvTransposeBlock, LinearBlock
from .dcgan import _positive, dcgan_init_

INFOGAN_IMAGE_SIZES = (32, 64)
Q_SLOPE = 0.1  # the paper's LeakyReLU slope in D and Q


def _check_image_size(cls: str, image_size: int) -> int:
    if image_size not in INFOGAN_IMAGE_SIZES:
        raise ValueError(f"ganfast.nn.{cls}: image_size must be one of {INFOGAN_IMAGE_SIZES}; got {image_size!r}")
    return image_size // 4


def _check_codes(cls: str, n_cat: int, n_cont: int) -> None:
    for name, v in (("n_cat", n_cat), ("n_cont", n_cont)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"ganfast.nn.{cls}: {name} must be an int >= 0; got {v!r}")
    if n_cat == 1:
        raise ValueError(f"ganfast.nn.{cls}: n_cat must be 0 (no categorical code) or >= 2; got 1")
    if n_cat == 0 and n_cont == 0:
        raise ValueError(f"ganfast.nn.{cls}: at least one code: n_cat >= 2 or n_cont >= 1")


class InfoGANGenerator(nn.Module):
    """(z (B, nz), cat (B,) int64 in [0, n_cat), cont (B, n_cont)) -> image (B, nc, s, s) in [-1, 1].

    `input_vector(z, cat, cont)` is the (B, nz + n_cat + n_cont) vector the first layer reads (the
    categorical code one-hot); `z_dim` is nz. n_cat = 0 or n_cont = 0 leaves that code out (its
    argument is then None)."""

    def __init__(self, nz: int = 62, n_cat: int = 10, n_cont: int = 2, nc: int = 1, image_size: int = 32,
                 ngf: int = 64) -> None:
        super().__init__()
        cls = type(self).__name__
        _positive(cls, nz=nz, nc=nc, ngf=ngf)
        _check_codes(cls, n_cat, n_cont)
        start = _check_image_size(cls, image_size)
        self.nz, self.n_cat, self.n_cont, self.nc, self.image_size, self.ngf = nz, n_cat, n_cont, nc, image_size, ngf
        self.z_dim = nz
        self.start = start
        self.fc = nn.Sequential(
            LinearBlock(nz + n_cat + n_cont, 1024, bias=False, norm="batch", act="relu"),
            LinearBlock(1024, 2 * ngf * start * start, bias=False, norm="batch", act="relu"))
        self.up = nn.Sequential(
            ConvTransposeBlock(2 * ngf, ngf),
            ConvTransposeBlock(ngf, nc, bias=True, norm=None, act="tanh"))
        dcgan_init_(self)

    def input_vector(self, z: Tensor, cat: Optional[Tensor] = None, cont: Optional[Tensor] = None) -> Tensor:
        cls = type(self).__name__
        if z.dim() != 2 or z.size(1) != self.nz:
            raise ValueError(f"ganfast.nn.{cls}: z must have shape (B, {self.nz}); got {tuple(z.shape)}")
        parts = [z]
        if self.n_cat:
            if cat is None or cat.dim() != 1 or cat.size(0) != z.size(0) or cat.dtype != torch.int64:
                raise ValueError(f"ganfast.nn.{cls}: cat must be an int64 tensor of shape ({z.size(0)},) with "
                                 f"values in [0, {self.n_cat}); got "
                                 f"{None if cat is None else (tuple(cat.shape), cat.dtype)}")
            parts.append(F.one_hot(cat, self.n_cat).to(z.dtype))  # raises on values outside [0, n_cat)
        elif cat is not None:
            raise ValueError(f"ganfast.nn.{cls}: this generator has no categorical code (n_cat=0); got cat")
        if self.n_cont:
            if cont is None or cont.shape != (z.size(0), self.n_cont):
                raise ValueError(f"ganfast.nn.{cls}: cont must have shape ({z.size(0)}, {self.n_cont}); got "
                                 f"{None if cont is None else tuple(cont.shape)}")
            parts.append(cont.to(z.dtype))
        elif cont is not None:
            raise ValueError(f"ganfast.nn.{cls}: this generator has no continuous code (n_cont=0); got cont")
        return torch.cat(parts, 1)

    def forward(self, z: Tensor, cat: Optional[Tensor] = None, cont: Optional[Tensor] = None) -> Tensor:
        h = self.fc(self.input_vector(z, cat, cont))
        return self.up(h.view(h.size(0), 2 * self.ngf, self.start, self.start))


class InfoGANOutput(NamedTuple):
    """What InfoGANDiscriminator returns: D's logits (B,) and Q's predictions of the codes."""
    logits: Tensor
    cat_logits: Optional[Tensor]    # (B, n_cat), None when n_cat = 0
    cont_mean: Optional[Tensor]     # (B, n_cont), None when n_cont = 0
    cont_logstd: Optional[Tensor]   # (B, n_cont) when cont_logstd=True, else None (sigma = 1)


class InfoGANDiscriminator(nn.Module):
    """image (B, nc, s, s) -> InfoGANOutput(logits (B,), cat_logits, cont_mean, cont_logstd): D and
    Q share the trunk (conv, conv, FC 1024), so one pass gives both. `cont_logstd=True` makes Q
    predict a log standard deviation per continuous code (a factored Gaussian, as the paper);
    False fixes it at 1 (the loss is then half the squared error), which the paper's released
    code does too. BatchNorm in the trunk follows the paper: no gradient penalty through this D
    (its fused BatchNorm backward is first order and says so)."""

    def __init__(self, nc: int = 1, n_cat: int = 10, n_cont: int = 2, image_size: int = 32, ndf: int = 64,
                 cont_logstd: bool = False) -> None:
        super().__init__()
        cls = type(self).__name__
        _positive(cls, nc=nc, ndf=ndf)
        _check_codes(cls, n_cat, n_cont)
        start = _check_image_size(cls, image_size)
        self.nc, self.n_cat, self.n_cont, self.image_size, self.ndf = nc, n_cat, n_cont, image_size, ndf
        self.cont_logstd = bool(cont_logstd) and n_cont > 0
        self.trunk = nn.Sequential(
            Conv2dBlock(nc, ndf, bias=True, norm=None, act="lrelu", alpha=Q_SLOPE),
            Conv2dBlock(ndf, 2 * ndf, bias=False, norm="batch", act="lrelu", alpha=Q_SLOPE),
            nn.Flatten(),
            LinearBlock(2 * ndf * start * start, 1024, bias=False, norm="batch", act="lrelu", alpha=Q_SLOPE))
        self.d_head = nn.Linear(1024, 1)
        self.q_head = nn.Sequential(
            LinearBlock(1024, 128, bias=False, norm="batch", act="lrelu", alpha=Q_SLOPE),
            nn.Linear(128, n_cat + n_cont * (2 if self.cont_logstd else 1)))
        dcgan_init_(self)

    def forward(self, x: Tensor) -> InfoGANOutput:
        s = self.image_size
        if x.dim() != 4 or x.shape[1:] != (self.nc, s, s):
            raise ValueError(f"ganfast.nn.InfoGANDiscriminator: input must have shape (B, {self.nc}, {s}, {s}); "
                             f"got {tuple(x.shape)}")
        h = self.trunk(x)
        q = self.q_head(h)
        k, j = self.n_cat, self.n_cont
        return InfoGANOutput(
            logits=self.d_head(h).view(x.size(0)),
            cat_logits=q[:, :k] if k else None,
            cont_mean=q[:, k:k + j] if j else None,
            cont_logstd=q[:, k + j:] if self.cont_logstd else None)
