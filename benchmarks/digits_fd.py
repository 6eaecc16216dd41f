"""How close a digits run's samples are to the data: the Frechet distance between Gaussians fitted
to 8x8-pooled features (the 64 numbers the digits were drawn at, the features of the engine's
digit classifier) of n generated images and of the real digits, beside the engine's own class
metrics. The Frechet distance sees what class coverage cannot (blur, wrong strokes, a collapsed
style within a class); it is an FID-style number on a tiny feature space, comparable only between
runs measured by this script.

    python benchmarks/digits_fd.py RUN [RUN ...] [--n 1797] [--seed 0]

Prints one row per run (its step and seconds) and a floor: the distance between two random
halves of the real data. Used to choose `ganfast train --data digits`'s default step count
(BENCHMARKS.md, "Default step counts").
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from ganfast.train import load_dataset, load_generator, sample
from ganfast.train.metrics import DigitClassifier, _pool_features, class_metrics


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of Gaussians fitted to the rows of a, b."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b)
    if np.iscomplexobj(covmean):  # rounding can leave a tiny imaginary part
        covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories of `ganfast train --data digits`")
    p.add_argument("--n", type=int, default=1797, help="generated images per run (default: as many as the data)")
    p.add_argument("--seed", type=int, default=0, help="seed of z (default: 0)")
    args = p.parse_args(argv)

    data = load_dataset("digits", image_size=32)
    real = _pool_features(data.points).numpy()
    classifier = DigitClassifier(data.points, data.labels)
    perm = np.random.default_rng(args.seed).permutation(len(real))
    half = len(real) // 2
    floor = frechet_distance(real[perm[:half]], real[perm[half:2 * half]])
    print(f"floor: two random halves of the real digits: FD {floor:.3f}")
    print("| run | step | training s | FD (8x8 features) | classes | KL(classes || uniform) | confident |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        summary = json.loads((Path(run) / "summary.json").read_text())
        G = load_generator(run)
        with torch.no_grad():
            images = sample(G, args.n, seed=args.seed)
        fd = frechet_distance(_pool_features(images).numpy(), real)
        m = class_metrics(classifier.predict_proba(images), classifier.n_classes)
        print(f"| {run} | {summary['steps']} | {summary['seconds']:.0f} | {fd:.3f} | {m['classes']}/{m['n_classes']} "
              f"| {m['kl_uniform']:.4f} | {m['confident']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
