"""Sampling from a trained run: load_generator(ckpt) and sample_to_file (`ganfast sample`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, checkpoint_path, first_line, load_checkpoint, load_state
from .models import generator_from_spec, is_infogan, sample_codes


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
    return G.to(device).eval().requires_grad_(False)


@torch.no_grad()
def sample(G: nn.Module, n: int, seed: Optional[int] = None, batch: int = 1000, cat: Optional[int] = None) -> torch.Tensor:
    """n samples (CPU float32) from a generator returned by load_generator. An InfoGAN generator
    draws its codes as in training (the categorical code uniform, or fixed at `cat`; the continuous
    codes U(-1, 1)); `cat` on any other generator is an error."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"ganfast.train.sample: n must be a positive integer; got {n!r}")
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
    if getattr(G, "latent", "normal") == "uniform":
        z = torch.rand(n, G.z_dim, generator=g) * 2 - 1
    else:
        z = torch.randn(n, G.z_dim, generator=g)
    codes = sample_codes(G, n, g, "cpu", cat=cat) if info else ()
    out = []
    for i in range(0, n, batch):
        args = [z[i:i + batch]] + [None if c is None else c[i:i + batch] for c in codes]
        out.append(G(*[None if a is None else a.to(device) for a in args]).float().cpu())
    return torch.cat(out)


def sample_to_file(ckpt: str | Path, n: int, out: str | Path, seed: Optional[int] = None,
                   device: str = "cpu", cat: Optional[int] = None) -> Path:
    """Write n samples of the checkpoint's G_ema to `out`: .npy (the raw array: (n, 2) points or
    (n, C, H, W) images in [-1, 1]) or .png (an image grid; for 2-D points a scatter plot)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".npy"):
        raise ValueError(f"ganfast sample: --out must end in .png or .npy; got '{out}'")
    G = load_generator(ckpt, device)
    x = sample(G, n, seed, cat=cat)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(out, x.numpy())
    else:
        from . import plots

        if x.dim() == 4:
            plots.save_image_grid(x, out)
        else:
            plots.save_points(x, out, title=f"{n} samples, step {G.trained_steps}")
    return out
