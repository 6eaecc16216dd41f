"""Sampling from a trained run: load_generator(ckpt) and sample_to_file (`ganfast sample`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, checkpoint_path, first_line, load_checkpoint, load_state
from .data import labels_path
from .models import generator_from_spec, is_conditional, is_infogan, sample_codes, sample_labels


def load_generator(ckpt: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> nn.Module:
    """The generator of a checkpoint (a file or a run directory), in eval mode: G_ema (the moving
    average of G's weights, what the run's sample grids show) unless ema=False. Its `z_dim`
    attribute says the latent size and `latent` the distribution ("normal" or "uniform")."""
    path = checkpoint_path(ckpt)
    state = load_checkpoint(path)
    spec = state["model"]
    if spec.get("kind") == "cyclegan":
        raise ValueError(f"ganfast sample: {path} is a CycleGAN run: its generators translate images rather than "
                         f"draw samples; use ganfast translate --ckpt {ckpt} --input FILE_OR_FOLDER --out ...")
    try:
        G = generator_from_spec(spec)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"its model description cannot be built ({first_line(e)})") from None
    load_state(G, state["G_ema" if ema else "G"], path, "G_ema" if ema else "G")
    G.z_dim = spec.get("z_dim", spec.get("nz"))
    G.latent = state["config"].get("latent", "normal")
    G.trained_steps = int(state["step"])
    G.model_kind = spec.get("kind")  # what --class on an unconditional run's error names
    return G.to(device).eval().requires_grad_(False)


@torch.no_grad()
def sample(G: nn.Module, n: int, seed: Optional[int] = None, batch: int = 1000, cat: Optional[int] = None,
           cls: Optional[int] = None, truncation: Optional[float] = None) -> torch.Tensor:
    """n samples (CPU float32) from a generator returned by load_generator. An InfoGAN generator
    draws its codes as in training (the categorical code uniform, or fixed at `cat`; the continuous
    codes U(-1, 1)); `cat` on any other generator is an error. A class-conditional generator (SAGAN,
    BigGAN) draws the classes uniformly, or all `cls`; `cls` on an unconditional one is an error.
    truncation=psi > 0: BigGAN's truncation trick, every entry of z with |z| > psi redrawn until it is
    at most psi. See sample_with_labels for the classes drawn."""
    return sample_with_labels(G, n, seed, batch, cat=cat, cls=cls, truncation=truncation)[0]


def _model_name(G: nn.Module) -> str:
    return getattr(G, "model_kind", None) or type(G).__name__


@torch.no_grad()
def sample_with_labels(G: nn.Module, n: int, seed: Optional[int] = None, batch: int = 1000,
                       cat: Optional[int] = None, cls: Optional[int] = None,
                       truncation: Optional[float] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(samples, classes) as sample() draws them; classes (n,) int64 for a conditional generator, else
    None."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"ganfast.train.sample: n must be a positive integer; got {n!r}")
    if truncation is not None and not (isinstance(truncation, (int, float)) and not isinstance(truncation, bool)
                                       and math.isfinite(truncation) and truncation > 0):
        raise ValueError(f"ganfast sample: --truncation must be a number > 0 (entries of z with |z| above it "
                         f"are redrawn); got {truncation!r}")
    cond = is_conditional(G)
    if cls is not None:
        if not cond:
            raise ValueError(f"ganfast sample: --class fixes the class of a class-conditional run (--model sagan "
                             f"or biggan); this run's model '{_model_name(G)}' is unconditional")
        if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls < G.n_classes:
            raise ValueError(f"ganfast sample: --class must be in [0, {G.n_classes}) for this run "
                             f"({G.n_classes} classes); got {cls!r}")
    info = is_infogan(G)
    if cat is not None:
        if not info:
            raise ValueError("ganfast sample: --cat fixes InfoGAN's categorical code; this run's generator has "
                             "no codes (train with --model infogan)")
        if not G.n_cat or not (isinstance(cat, int) and 0 <= cat < G.n_cat):
            raise ValueError(f"ganfast sample: --cat must be in [0, {G.n_cat}) for this run; got {cat!r}"
                             if G.n_cat else "ganfast sample: this InfoGAN run has no categorical code")
    device = next(G.parameters()).device
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**63)
    uniform = getattr(G, "latent", "normal") == "uniform"

    def draw(shape):
        return torch.rand(shape, generator=g) * 2 - 1 if uniform else torch.randn(shape, generator=g)

    z = draw((n, G.z_dim))
    if truncation is not None:
        bad = z.abs() > truncation
        while bad.any():  # resampling, not clipping: each redrawn entry keeps the latent's shape inside psi
            z[bad] = draw((int(bad.sum()),))
            bad = z.abs() > truncation
    codes = sample_codes(G, n, g, "cpu", cat=cat) if info else ()
    y = None
    if cond:
        y = torch.full((n,), cls, dtype=torch.int64) if cls is not None else sample_labels(n, G.n_classes, g, "cpu")
        codes = (y,)
    out = []
    for i in range(0, n, batch):
        args = [z[i:i + batch]] + [None if c is None else c[i:i + batch] for c in codes]
        out.append(G(*[None if a is None else a.to(device) for a in args]).float().cpu())
    return torch.cat(out), y


def class_rows(x: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, int]:
    """Images (n, C, H, W) and their classes -> (tiles, columns) for plots.save_image_grid: one row per
    class in class order, rows as wide as the most frequent class, short rows padded with blank tiles."""
    counts = torch.bincount(y, minlength=n_classes)
    cols = max(1, int(counts.max()))
    tiles = x.new_full((n_classes * cols, *x.shape[1:]), -1.0)
    for k in range(n_classes):
        idx = (y == k).nonzero().flatten()
        tiles[k * cols: k * cols + idx.numel()] = x[idx]
    return tiles, cols


def sample_to_file(ckpt: str | Path, n: int, out: str | Path, seed: Optional[int] = None,
                   device: str = "cpu", cat: Optional[int] = None, cls: Optional[int] = None,
                   truncation: Optional[float] = None) -> Path:
    """Write n samples of the checkpoint's G_ema to `out`: .npy (the raw array: (n, 2) points or
    (n, C, H, W) images in [-1, 1]; a conditional run's classes beside it in OUT.labels.npy, the
    convention of npy: data) or .png (an image grid, one row per class for a conditional run without
    `cls`; for 2-D points a scatter plot)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".npy"):
        raise ValueError(f"ganfast sample: --out must end in .png or .npy; got '{out}'")
    if truncation is not None and not (isinstance(truncation, (int, float)) and truncation > 0):
        raise ValueError(f"ganfast sample: --truncation must be a number > 0; got {truncation!r}")
    G = load_generator(ckpt, device)
    x, y = sample_with_labels(G, n, seed, cat=cat, cls=cls, truncation=truncation)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(out, x.numpy())
        if y is not None:
            np.save(labels_path(out), y.numpy())
    else:
        from . import plots

        if y is not None and cls is None:
            tiles, cols = class_rows(x, y, G.n_classes)
            plots.save_image_grid(tiles, out, nrow=cols)
        elif x.dim() == 4:
            plots.save_image_grid(x, out)
        else:
            plots.save_points(x, out, title=f"{n} samples, step {G.trained_steps}")
    return out
