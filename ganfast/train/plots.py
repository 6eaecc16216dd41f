"""PNG outputs: training curves (matplotlib, headless) and sample grids."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def image_grid(images: Tensor, nrow: Optional[int] = None, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (H', W', C) grid with `pad` pixels between tiles."""
    x = images.detach().float().cpu().clamp(-1, 1)
    n, c, h, w = x.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = torch.full((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), -1.0)
    for i in range(n):
        r, q = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i]
    a = ((grid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return a


def save_image_grid(images: Tensor, path: str | Path, nrow: Optional[int] = None) -> None:
    from PIL import Image

    a = image_grid(images, nrow)
    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(path)


def save_points(samples: Tensor, path: str | Path, modes: Optional[Tensor] = None, real: Optional[Tensor] = None,
                title: str = "") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if real is not None:
        r = real.detach().float().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="tab:gray", alpha=0.3, label="data", linewidths=0)
    s = samples.detach().float().cpu().numpy()
    ax.scatter(s[:, 0], s[:, 1], s=2, c="tab:blue", alpha=0.5, label="G_ema", linewidths=0)
    if modes is not None:
        m = modes.cpu().numpy()
        ax.scatter(m[:, 0], m[:, 1], s=30, marker="x", c="tab:red", label="modes")
        lim = float(np.abs(m).max()) * 1.4 + 0.1
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper right", fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_samples(samples: Tensor, path: str | Path, dataset, title: str = "", real: Optional[Tensor] = None) -> None:
    if dataset.is_image:
        save_image_grid(samples, path)
    else:
        save_points(samples, path, dataset.modes, real, title)


def plot_training(rows: list[dict], path: str | Path, objective_loss: str) -> None:
    """Losses; mean D(x) and D(G(z)); the JSD (minimax / nonsaturating D loss) or Wasserstein
    estimate; and the evaluation metrics, over the training steps."""
    plt = _pyplot()
    loss_rows = [r for r in rows if "loss_d" in r]
    eval_rows = [r for r in rows if r.get("eval")]  # (npy points have no metric)
    panels = 3 + (1 if eval_rows else 0)
    fig, axes = plt.subplots(panels, 1, figsize=(7, 2.4 * panels), dpi=100, sharex=True)
    steps = [r["step"] for r in loss_rows]

    ax = axes[0]
    ax.plot(steps, [r["loss_d"] for r in loss_rows], label="D loss")
    ax.plot(steps, [r["loss_g"] for r in loss_rows], label="G loss")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)

    ax = axes[1]
    ax.plot(steps, [r["d_real"] for r in loss_rows], label="mean D(x)")
    ax.plot(steps, [r["d_fake"] for r in loss_rows], label="mean D(G(z))")
    ax.set_ylabel("D logit")
    ax.legend(fontsize=8)

    ax = axes[2]
    if objective_loss == "wasserstein":
        ax.plot(steps, [r["wasserstein"] for r in loss_rows], color="tab:green")
        ax.set_ylabel("E D(x) - E D(G(z))")
        ax.set_title("Wasserstein estimate", fontsize=9)
    elif objective_loss in ("minimax", "nonsaturating"):
        ax.plot(steps, [r["jsd"] for r in loss_rows], color="tab:green")
        ax.axhline(math.log(2), color="gray", lw=0.5, ls="--")
        ax.set_ylabel("(log 4 - L_D) / 2")
        ax.set_title("Jensen-Shannon estimate (max log 2)", fontsize=9)
    else:
        ax.plot(steps, [r["d_real"] - r["d_fake"] for r in loss_rows], color="tab:green")
        ax.set_ylabel("D(x) - D(G(z))")

    if eval_rows:
        ax = axes[3]
        es = [r["step"] for r in eval_rows]
        first = eval_rows[0]["eval"]
        if "high_quality" in first:
            ax.plot(es, [r["eval"]["modes"] for r in eval_rows], "o-", label="modes captured")
            ax.set_ylabel("modes")
            ax.set_ylim(0, eval_rows[0]["eval"]["n_modes"] + 0.5)
            ax2 = ax.twinx()
            ax2.plot(es, [100 * r["eval"]["high_quality"] for r in eval_rows], "s--", color="tab:orange",
                     label="% high quality")
            ax2.set_ylabel("% high quality")
            ax2.set_ylim(0, 100)
        elif "classes" in first:
            ax.plot(es, [r["eval"]["classes"] for r in eval_rows], "o-", label="classes covered")
            ax.set_ylabel("classes")
            ax.set_ylim(0, eval_rows[0]["eval"]["n_classes"] + 0.5)
            ax2 = ax.twinx()
            if "class_agreement" in first:  # conditional models: the requested class, as the classifier sees it
                ax2.plot(es, [100 * r["eval"]["class_agreement"] for r in eval_rows], "s--", color="tab:orange",
                         label="% class agreement")
                ax2.set_ylabel("% class agreement")
                ax2.set_ylim(0, 100)
            else:
                ax2.plot(es, [r["eval"]["kl_uniform"] for r in eval_rows], "s--", color="tab:orange", label="KL")
                ax2.set_ylabel("KL(p || uniform)")
        elif "cycle_l1_a" in first:  # cyclegan: held-out cycle error, and content preservation if labelled
            ax.plot(es, [r["eval"]["cycle_l1_a"] for r in eval_rows], "o-", label="|G_BA(G_AB(a)) - a|")
            ax.plot(es, [r["eval"]["cycle_l1_b"] for r in eval_rows], "o-", label="|G_AB(G_BA(b)) - b|")
            ax.set_ylabel("held-out cycle L1")
            if "content_ab" in first:
                ax2 = ax.twinx()
                ax2.plot(es, [100 * r["eval"]["content_ab"] for r in eval_rows], "s--", color="tab:green",
                         label="content A->B %")
                ax2.plot(es, [100 * r["eval"]["content_ba"] for r in eval_rows], "s--", color="tab:red",
                         label="content B->A %")
                ax2.set_ylabel("% content preserved")
                ax2.set_ylim(0, 100)
                ax2.legend(fontsize=8, loc="lower right")
        elif "recall" in first:  # images without labels (fd) or 2-D points: the sample quality alone
            def val(r, key):
                v = r["eval"].get(key)
                return math.nan if v is None else v

            if "fd" in first:
                ax.plot(es, [val(r, "fd") for r in eval_rows], "o-", label="Fréchet distance")
                ax.set_ylabel("FD")
            ax2 = ax.twinx() if "fd" in first else ax
            ax2.plot(es, [100 * val(r, "precision") for r in eval_rows], "s--", color="tab:green", label="% precision")
            ax2.plot(es, [100 * val(r, "recall") for r in eval_rows], "s--", color="tab:red", label="% recall")
            ax2.set_ylabel("% precision / recall")
            ax2.set_ylim(0, 100)
            if ax2 is not ax:
                ax2.legend(fontsize=8, loc="lower right")
        ax.legend(fontsize=8, loc="lower left")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
