"""The GAN objectives the engine trains, each a ganfast.losses kind plus the regularisation and
optimizer defaults practitioners use with it."""
from __future__ import annotations

from typing import NamedTuple, Optional


class Objective(NamedTuple):
    name: str
    loss: str                    # the ganfast.losses kind
    d_steps: int                 # D steps per G step
    optimizer: str
    lr: float
    betas: tuple
    gp_weight: float = 0.0       # WGAN-GP penalty weight (lambda)
    clip: float = 0.0            # WGAN weight clipping
    r1_gamma: float = 0.0        # R1 gamma (lazy, StyleGAN2 style)
    summary: str = ""
    lr_2d: Optional[float] = None  # on the 2-D mixtures (small MLPs, short runs); None: lr
    betas_2d: Optional[tuple] = None    # ... and the same for Adam's betas and the WGAN-GP lambda
    gp_weight_2d: Optional[float] = None


# Radford et al. 2016. The 2-D MLPs learn the mixtures in a few thousand steps at 1e-3 where 2e-4
# needs several times more (measured at 5,000 steps: ring8 94% high quality at 1e-3 against 88% at
# 2e-4; grid25 25 modes against 22); 2e-3 is too fast for grid25.
_DCGAN = dict(d_steps=1, optimizer="adam", lr=2e-4, betas=(0.5, 0.999), lr_2d=1e-3)

# WGAN-GP on the 2-D mixtures: Gulrajani et al.'s own toy-data settings (their gan_toy script: lambda
# 0.1, Adam 1e-4 with betas (0.5, 0.9)) instead of their image settings (lambda 10, betas (0, 0.9)).
# Measured at the default 8,000 steps (BENCHMARKS.md): with the image settings ring8 failed on 5 of 5
# seeds (0-5 modes, 0.1% high quality; a plain-PyTorch WGAN-GP with them fails the same way, and
# Adam 1e-3 fails worse), with the toy settings it finds all 8 modes.

OBJECTIVES = {
    o.name: o for o in (
        Objective("nonsaturating", "nonsaturating", **_DCGAN,
                  summary="D: BCE; G: -log D(G(z)) (Goodfellow et al.'s practical loss; the default)"),
        Objective("minimax", "minimax", **_DCGAN, summary="D: BCE; G: log(1 - D(G(z))) (the original game)"),
        Objective("wgan", "wasserstein", d_steps=5, optimizer="rmsprop", lr=5e-5, betas=(0.0, 0.0), clip=0.01,
                  summary="Wasserstein critic with weight clipping at +-0.01, RMSprop 5e-5, 5 D steps"),
        Objective("wgan-gp", "wasserstein", d_steps=5, optimizer="adam", lr=1e-4, betas=(0.0, 0.9),
                  gp_weight=10.0, betas_2d=(0.5, 0.9), gp_weight_2d=0.1,
                  summary="Wasserstein critic + gradient penalty lambda=10, Adam 1e-4 (0, 0.9), 5 D steps "
                          "(2-D points: lambda 0.1, betas (0.5, 0.9), the paper's toy settings)"),
        Objective("hinge", "hinge", **_DCGAN, summary="D: relu(1 - D(x)) + relu(1 + D(G(z))); G: -D(G(z))"),
        Objective("least_squares", "least_squares", **_DCGAN, summary="LSGAN: squared error to labels 1 and 0"),
        Objective("r1", "nonsaturating", **_DCGAN, r1_gamma=1.0,
                  summary="nonsaturating + lazy R1 (gamma/2 E||grad D(x)||^2 every r1_every D steps)"),
    )
}


def get_objective(name: str) -> Objective:
    obj: Optional[Objective] = OBJECTIVES.get(name) if isinstance(name, str) else None
    if obj is None:
        raise ValueError(f"ganfast.train: unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return obj
