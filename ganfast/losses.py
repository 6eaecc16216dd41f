"""Fused GAN losses: drop-in replacements for torch.nn's binary cross-entropies, and the GAN
objectives on the discriminator's raw logits.

    import ganfast.losses as L
    criterion = L.BCEWithLogitsLoss()                  # instead of torch.nn.BCEWithLogitsLoss()
    loss_d = L.discriminator_loss(D(x), D(G(z).detach()), kind="hinge")
    loss_g = L.generator_loss(D(G(z)), kind="hinge")

Every loss is one kernel launch forward and one backward on the CUDA and Triton backends (the
real and fake halves of the discriminator loss together), computed in float32 for half-precision
inputs and returned in the input's dtype.

Objectives (D minimises its loss, G minimises its own; a = real_label, b = fake_label):
    minimax         D: BCE(D(x), a) + BCE(D(G(z)), b)         G: E log(1 - sigmoid(D(G(z))))
    nonsaturating   D: as minimax                             G: -E log sigmoid(D(G(z)))
    hinge           D: E relu(1 - D(x)) + E relu(1 + D(G(z)))  G: -E D(G(z))
    wasserstein     D: E D(G(z)) - E D(x)                      G: -E D(G(z))
    least_squares   D: E (D(x) - a)^2 / 2 + E (D(G(z)) - b)^2 / 2   G: E (D(G(z)) - 1)^2 / 2
The minimax generator loss is computed as -softplus(logit), finite where
torch.log(1 - torch.sigmoid(logit)) gives -inf once D saturates.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

from torch import Tensor, nn

from . import ops
from ._args import GAN_KINDS, parse_gan_kind

__all__ = [
    "GAN_KINDS",
    "BCELoss",
    "BCEWithLogitsLoss",
    "DiscriminatorLoss",
    "GeneratorLoss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cycle_loss",
    "discriminator_loss",
    "generator_loss",
    "info_loss",
]

# Objectives whose discriminator loss uses the labels (for one-sided label smoothing).
_LABELLED_KINDS = ("minimax", "nonsaturating", "least_squares")


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                                     reduction: str = "mean", pos_weight: Optional[Tensor] = None) -> Tensor:
    """Same values, gradients (w.r.t. input and target), broadcasting and errors as
    torch.nn.functional.binary_cross_entropy_with_logits, in one fused kernel."""
    if isinstance(input, Tensor) and isinstance(target, Tensor) and target.size() != input.size():
        raise ValueError(f"Target size ({target.size()}) must be the same as input size ({input.size()})")
    return ops.bce_with_logits(input, target, weight, pos_weight, reduction)


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                         reduction: str = "mean") -> Tensor:
    """Same values, gradients, broadcasting and errors as torch.nn.functional.binary_cross_entropy
    (probabilities in [0, 1]; each log clamped at -100), in one fused kernel."""
    if isinstance(input, Tensor) and isinstance(target, Tensor) and target.size() != input.size():
        raise ValueError(f"Using a target size ({target.size()}) that is different to the input size "
                         f"({input.size()}) is deprecated. Please ensure they have the same size.")
    return ops.binary_cross_entropy(input, target, weight, reduction)


def cycle_loss(reconstructed: Union[Tensor, Sequence[Tensor]], original: Union[Tensor, Sequence[Tensor]],
               weight: float = 1.0) -> Tensor:
    """CycleGAN's cycle-consistency (or identity) loss: weight * F.l1_loss(reconstructed, original),
    same value and gradients (w.r.t. both tensors; 0 where they are equal, torch's subgradient).

    reconstructed and original may also be equal-length lists (or tuples) of tensors: the result is
    the sum of the pairs' losses, each the mean over its own elements, in one kernel launch forward
    and one backward for all pairs (both directions of a CycleGAN, F(G(x)) vs x and G(F(y)) vs y, or
    the identity losses, together):

        loss_cyc = cycle_loss([F(G(x)), G(F(y))], [x, y], weight=10.0)

    Each pair must have one shape (no broadcasting: F.l1_loss warns and broadcasts, this refuses),
    all tensors one floating dtype and one device; weight finite and >= 0. An empty pair gives NaN
    (the mean of nothing), as F.l1_loss. First order only: a second derivative is an error.
    """
    pair_types = (list, tuple)
    if isinstance(reconstructed, Tensor) and isinstance(original, Tensor):
        reconstructed, original = [reconstructed], [original]
    elif not (isinstance(reconstructed, pair_types) and isinstance(original, pair_types)):
        raise TypeError("ganfast.losses.cycle_loss: reconstructed and original must both be tensors or both be "
                        "lists (or tuples) of tensors; got "
                        f"{type(reconstructed).__name__} and {type(original).__name__}")
    else:
        for name, seq in (("reconstructed", reconstructed), ("original", original)):
            for i, t in enumerate(seq):
                if not isinstance(t, Tensor):
                    raise TypeError(f"ganfast.losses.cycle_loss: {name}[{i}] must be a tensor; got {type(t).__name__}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"ganfast.losses.cycle_loss: weight must be a number; got {type(weight).__name__}")
    weight = float(weight)
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"ganfast.losses.cycle_loss: weight must be finite and non-negative; got {weight:g}")
    return ops.cycle_loss(reconstructed, original, weight)


def _check_labels(kind: str, real_label: float, fake_label: float) -> None:
    parse_gan_kind(kind)
    for name, value in (("real_label", real_label), ("fake_label", fake_label)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"ganfast: {name} must be a number; got {type(value).__name__}")
    if kind not in _LABELLED_KINDS and (real_label != 1.0 or fake_label != 0.0):
        raise ValueError(f"ganfast: kind '{kind}' takes no labels (real_label/fake_label apply to "
                         f"{', '.join(_LABELLED_KINDS)}); got real_label={real_label}, fake_label={fake_label}")


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "nonsaturating",
                       real_label: float = 1.0, fake_label: float = 0.0) -> Tensor:
    """The discriminator's loss from its raw logits on real and generated samples.

    real_logits and fake_logits may have any (different) shapes, e.g. (B,) or (B, 1) or a
    PatchGAN map; each half is averaged on its own. real_label < 1 is one-sided label smoothing.
    """
    # `kind` is validated by the op itself; labels only matter when they are not the defaults.
    if real_label != 1.0 or fake_label != 0.0 or type(real_label) is not float or type(fake_label) is not float:
        _check_labels(kind, real_label, fake_label)
        real_label, fake_label = float(real_label), float(fake_label)
    return ops.gan_d_loss(real_logits, fake_logits, kind, real_label, fake_label)


def generator_loss(fake_logits: Tensor, kind: str = "nonsaturating") -> Tensor:
    """The generator's loss from the discriminator's raw logits on its samples."""
    return ops.gan_g_loss(fake_logits, kind)  # `kind` is validated by the op itself


def info_loss(cat_logits: Optional[Tensor] = None, cat_codes: Optional[Tensor] = None,
              cont_mean: Optional[Tensor] = None, cont_codes: Optional[Tensor] = None,
              cont_logstd: Optional[Tensor] = None, cat_weight: float = 1.0, cont_weight: float = 1.0) -> Tensor:
    """InfoGAN's mutual-information loss L_I (Chen et al. 2016) from Q's outputs, in one fused
    kernel forward and one backward:

        cat_weight * cross_entropy(cat_logits, cat_codes)                       (mean over B)
      + cont_weight * mean_b sum_j [logstd + ((cont_codes - cont_mean) / exp(logstd))^2 / 2]

    cat_logits (B, K), K >= 2, with cat_codes (B,) int64 class indices in [0, K); cont_mean,
    cont_codes and (optionally; sigma = 1 without) cont_logstd of shape (B, J), the Gaussian
    negative log-likelihood without its constant 0.5 log(2 pi). Either part may be absent, not
    both; weights finite and >= 0. Equal in value and gradients (w.r.t. cat_logits, cont_mean,
    cont_codes, cont_logstd) to the eager composite
    `cat_weight * F.cross_entropy(cat_logits, cat_codes) + cont_weight * (cont_logstd + 0.5 *
    ((cont_codes - cont_mean) * torch.exp(-cont_logstd)) ** 2).sum(1).mean()`; an empty batch
    gives NaN, as there. Returns a 0-dim tensor in cat_logits' dtype (cont_mean's without the
    categorical part); half precision is computed in float32. First order only: a second
    derivative raises. Class indices outside [0, K) raise IndexError on CPU and are a device-side
    assert on CUDA (as torch's cross_entropy), never a host synchronisation.
    """
    return ops.info_loss(cat_logits, cat_codes, cont_mean, cont_codes, cont_logstd, float(cat_weight),
                         float(cont_weight))


class BCEWithLogitsLoss(nn.Module):
    """Drop-in for torch.nn.BCEWithLogitsLoss (weight and pos_weight are buffers, as there)."""

    def __init__(self, weight: Optional[Tensor] = None, reduction: str = "mean",
                 pos_weight: Optional[Tensor] = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(input, target, self.weight, self.reduction, self.pos_weight)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class BCELoss(nn.Module):
    """Drop-in for torch.nn.BCELoss (weight is a buffer, as there)."""

    def __init__(self, weight: Optional[Tensor] = None, reduction: str = "mean") -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy(input, target, self.weight, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class DiscriminatorLoss(nn.Module):
    """discriminator_loss as a module: loss = DiscriminatorLoss("hinge")(d_real, d_fake)."""

    def __init__(self, kind: str = "nonsaturating", real_label: float = 1.0, fake_label: float = 0.0) -> None:
        super().__init__()
        _check_labels(kind, real_label, fake_label)
        self.kind, self.real_label, self.fake_label = kind, float(real_label), float(fake_label)

    def forward(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return ops.gan_d_loss(real_logits, fake_logits, self.kind, self.real_label, self.fake_label)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, real_label={self.real_label}, fake_label={self.fake_label}"


class GeneratorLoss(nn.Module):
    """generator_loss as a module: loss = GeneratorLoss("nonsaturating")(d_fake)."""

    def __init__(self, kind: str = "nonsaturating") -> None:
        super().__init__()
        self.kind = parse_gan_kind(kind)

    def forward(self, fake_logits: Tensor) -> Tensor:
        return ops.gan_g_loss(fake_logits, self.kind)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


# torch.nn.functional-style aliases, so `import ganfast.losses as F` reads like torch's code.
bce_with_logits = binary_cross_entropy_with_logits
