"""SAGAN's self-attention block (Zhang et al., 2019) for images, on torch's scaled_dot_product_attention."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .spectral_norm import spectral_norm

SN_EPS = 1e-6  # spectral norm's eps in SAGAN / BigGAN models (BigGAN-PyTorch's launch scripts use 1e-6)


def _attention_math_backend():
    """The context that restricts scaled_dot_product_attention to its math (composite) backend,
    whose backward is made of differentiable ops."""
    return sdpa_kernel([SDPBackend.MATH])


class SelfAttention2d(nn.Module):
    """x + gamma * o(attention(theta(x), maxpool(phi(x)), maxpool(g(x)))), SAGAN's attention block
    in BigGAN-PyTorch's form (layers.Attention).

    theta, phi: 1x1 convs to channels // 8 (queries, keys), g: 1x1 conv to channels // 2 (values),
    o: 1x1 conv back to channels, all without bias and spectrally normalised when sn=True
    (eps=SN_EPS); keys and values are max-pooled 2x2, so H and W must be even. Every position
    attends to the (H/2)(W/2) pooled positions with softmax(q k^T) -- no 1/sqrt(d) scale, as the
    paper and BigGAN-PyTorch. `gamma` (a scalar, initialised 0) makes the block the identity at
    initialisation. channels >= 8.

    The three input convolutions run as one 1x1 convolution over their concatenated weights (one
    GEMM, one max-pool for keys and values); the attention itself is
    torch.nn.functional.scaled_dot_product_attention(scale=1.0), which on a GPU picks a fused
    kernel (flash / memory-efficient / cuDNN: the (HW, HW/4) attention matrix never reaches memory).

    Double backward (R1, WGAN-GP, path-length penalties): torch's fused SDPA kernels have no
    derivative for their backward -- on a GPU (and on CPU where torch picks its CPU flash kernel)
    differentiating SDPA's gradient raises "derivative for aten::_scaled_dot_product_*_backward is
    not implemented". Never silently wrong, but it would break a penalty step. So the block runs
    SDPA's math backend (softmax and matmuls, differentiable to every order) whenever a second
    derivative may be taken, and a fused kernel otherwise. `forward(x, create_graph)`:
    create_graph=True forces the math backend, False allows the fused kernels; None (the default)
    uses the module's `double_backward` attribute if it is not None, else the math backend whenever
    grad mode is on and x requires grad. The SAGAN / BigGAN models pass create_graph = "grad mode
    is on and the model's own input (image or z) requires grad" -- the case of every gradient
    penalty -- so their discriminator step on detached fakes and reals, and sampling, use the fused
    kernels, and an R1 / WGAN-GP step gets exact second derivatives. On CPU with these shapes torch
    picks the math backend anyway (its CPU flash kernel needs equal query and value widths).
    """

    def __init__(self, channels: int, sn: bool = True, double_backward: Optional[bool] = None) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 8:
            raise ValueError(f"ganfast.nn.SelfAttention2d: channels must be an int >= 8 (queries and keys have "
                             f"channels // 8); got {channels!r}")
        self.channels = channels
        self.sn = bool(sn)
        self.double_backward = double_backward
        ck, cv = channels // 8, channels // 2
        self.theta = nn.Conv2d(channels, ck, 1, bias=False)
        self.phi = nn.Conv2d(channels, ck, 1, bias=False)
        self.g = nn.Conv2d(channels, cv, 1, bias=False)
        self.o = nn.Conv2d(cv, channels, 1, bias=False)
        if self.sn:
            for name in ("theta", "phi", "g", "o"):
                setattr(self, name, spectral_norm(getattr(self, name), eps=SN_EPS))
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, create_graph: Optional[bool] = None) -> Tensor:
        if x.dim() != 4 or x.size(1) != self.channels:
            raise ValueError(f"ganfast.nn.SelfAttention2d: expected input (N, {self.channels}, H, W); "
                             f"got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"ganfast.nn.SelfAttention2d: H and W must be even (keys and values are max-pooled "
                             f"2x2); got input of shape {tuple(x.shape)}")
        if create_graph is None:
            create_graph = (self.double_backward if self.double_backward is not None
                            else torch.is_grad_enabled() and x.requires_grad)
        ck, cv = c // 8, c // 2
        # Reading .weight runs each spectral norm's power iteration once, as separate convs would.
        weight = torch.cat([self.theta.weight, self.phi.weight, self.g.weight], 0)
        qkv = F.conv2d(x, weight)
        q = qkv[:, :ck]
        kv = F.max_pool2d(qkv[:, ck:], 2)
        # (N, 1, L, E): one head; positions along L, channels along E.
        q = q.flatten(2).transpose(1, 2).unsqueeze(1)
        kv = kv.flatten(2).transpose(1, 2).unsqueeze(1)
        k, v = kv[..., :ck], kv[..., ck:]
        if create_graph:
            with _attention_math_backend():
                a = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        else:
            a = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        # (N, 1, HW, cv) viewed as a channels_last (N, cv, H, W): no copy before the o conv.
        a = a.view(n, h, w, cv).permute(0, 3, 1, 2)
        return torch.addcmul(x, self.gamma, self.o(a))

    def extra_repr(self) -> str:
        s = f"{self.channels}, sn={self.sn}"
        return s if self.double_backward is None else s + f", double_backward={self.double_backward}"
