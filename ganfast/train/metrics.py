"""Mode-collapse metrics.

2-D mixtures (VEEGAN / PacGAN definition): a sample is *high quality* when it lies within
3 standard deviations of its nearest mode; a mode is *captured* when at least one high-quality
sample is nearest to it. Reported on 2,500 samples.

Digits: a classifier trained on the data set (DigitClassifier) labels the samples; *class coverage* counts the
classes with at least one confident sample (max probability >= 0.9) and KL(p || uniform) measures
how far the predicted class histogram p is from uniform (0 = every class equally often,
log 10 = one class only).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def mode_metrics(samples: Tensor, modes: Tensor, std: float, n_std: float = 3.0) -> dict:
    """{"modes": captured modes, "n_modes": M, "high_quality": fraction of high-quality samples,
    "per_mode": counts of high-quality samples per mode} for samples (N, d), modes (M, d)."""
    if samples.dim() != 2 or modes.dim() != 2 or samples.shape[1] != modes.shape[1]:
        raise ValueError(f"mode_metrics: samples (N, d) and modes (M, d) expected; got {tuple(samples.shape)} "
                         f"and {tuple(modes.shape)}")
    x = samples.detach().double().cpu()
    m = modes.detach().double().cpu()
    n = x.shape[0]
    if n == 0:
        return {"modes": 0, "n_modes": m.shape[0], "high_quality": 0.0, "per_mode": [0] * m.shape[0]}
    dist = torch.cdist(x, m)  # (N, M)
    nearest_dist, nearest = dist.min(1)
    # NaN samples are never high quality
    hq = nearest_dist <= n_std * std
    per_mode = torch.bincount(nearest[hq], minlength=m.shape[0])
    return {"modes": int((per_mode > 0).sum()), "n_modes": int(m.shape[0]),
            "high_quality": float(hq.double().mean()), "per_mode": per_mode.tolist()}


def _pool_features(images: Tensor) -> Tensor:
    """Images (N, C, H, W) in [-1, 1] -> grayscale 8x8 average-pooled features (N, 64), float64:
    the resolution the digits were drawn at, so a linear classifier on them is fast and accurate."""
    x = images.detach().to("cpu", torch.float64)
    if x.shape[1] != 1:
        x = x.mean(1, keepdim=True)
    return F.adaptive_avg_pool2d(x, 8).reshape(x.shape[0], -1)


class DigitClassifier:
    """Linear discriminant analysis (Gaussian classes with one shared, shrunk covariance) on
    8x8-pooled images: closed form (one 64x64 solve), so it is ready instantly and deterministic;
    about 97% accurate on the digits. Probabilities are the Gaussian posteriors."""

    def __init__(self, images: Tensor, labels: Tensor, shrinkage: float = 0.1) -> None:
        x, y = _pool_features(images), labels.cpu().long()
        self.n_classes = int(y.max()) + 1
        onehot = F.one_hot(y, self.n_classes).double()
        counts = onehot.sum(0)
        means = (onehot.T @ x) / counts[:, None]                     # (K, 64)
        centred = x - means[y]
        cov = centred.T @ centred / (x.shape[0] - self.n_classes)
        # shrink towards a scaled identity: pixels that never vary (the digit borders) stay invertible
        cov = (1 - shrinkage) * cov + shrinkage * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
        w = torch.linalg.solve(cov, means.T)                          # (64, K)
        self.weight = w
        self.bias = -0.5 * (means * w.T).sum(1) + torch.log(counts / counts.sum())
        self.train_accuracy = float((self._logits(x).argmax(1) == y).double().mean())

    def _logits(self, features: Tensor) -> Tensor:
        return features @ self.weight + self.bias

    def predict_proba(self, images: Tensor) -> np.ndarray:
        return torch.softmax(self._logits(_pool_features(images)), 1).numpy()


def class_metrics(probs: np.ndarray, n_classes: Optional[int] = None, confidence: float = 0.9) -> dict:
    """From class probabilities (N, K): {"classes": classes with at least one confident sample,
    "n_classes": K, "kl_uniform": KL(histogram of argmax classes || uniform), "confident": the
    fraction of confident samples}."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"class_metrics: probs must be (N, K); got shape {probs.shape}")
    k = n_classes or probs.shape[1]
    n = probs.shape[0]
    if n == 0:
        return {"classes": 0, "n_classes": k, "kl_uniform": math.log(k), "confident": 0.0}
    pred = probs.argmax(1)
    conf = probs.max(1) >= confidence
    covered = np.unique(pred[conf]).size
    p = np.bincount(pred, minlength=k) / n
    nz = p > 0
    kl = float(np.sum(p[nz] * np.log(p[nz] * k)))
    return {"classes": int(covered), "n_classes": int(k), "kl_uniform": kl, "confident": float(conf.mean())}


def code_agreement(codes: np.ndarray, classes: np.ndarray, n_codes: int, n_classes: int) -> dict:
    """InfoGAN's categorical code against the classes a classifier gives the samples drawn with it:
    the share of samples whose class is the one matched to their code, under the best one-to-one
    matching of codes to classes (the Hungarian method on the code x class counts,
    scipy.optimize.linear_sum_assignment). {"code_agreement": share, "code_to_class": [class of
    code 0, ...] (-1 for a code left unmatched when there are more codes than classes)}."""
    from scipy.optimize import linear_sum_assignment

    codes, classes = np.asarray(codes, dtype=np.int64), np.asarray(classes, dtype=np.int64)
    if codes.shape != classes.shape or codes.ndim != 1:
        raise ValueError(f"code_agreement: codes and classes must be 1-D of the same length; got {codes.shape} "
                         f"and {classes.shape}")
    counts = np.zeros((n_codes, n_classes), dtype=np.int64)
    np.add.at(counts, (codes, classes), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = [-1] * n_codes
    for r, c in zip(rows, cols):
        mapping[int(r)] = int(c)
    n = len(codes)
    return {"code_agreement": float(counts[rows, cols].sum() / n) if n else 0.0, "code_to_class": mapping}


def class_agreement(requested: np.ndarray, classes: np.ndarray, n_classes: int) -> dict:
    """A class-conditional generator's requested classes against the classes a classifier gives its
    samples: {"class_agreement": the share of samples classified as the class asked for,
    "class_agreement_per_class": that share for each requested class (None for a class never asked)}."""
    requested, classes = np.asarray(requested, dtype=np.int64), np.asarray(classes, dtype=np.int64)
    if requested.shape != classes.shape or requested.ndim != 1:
        raise ValueError(f"class_agreement: requested and classes must be 1-D of the same length; got "
                         f"{requested.shape} and {classes.shape}")
    hit = requested == classes
    n = np.bincount(requested, minlength=n_classes)
    h = np.bincount(requested, weights=hit.astype(np.float64), minlength=n_classes)
    per = [float(h[i] / n[i]) if n[i] else None for i in range(n_classes)]
    return {"class_agreement": float(hit.mean()) if hit.size else 0.0, "class_agreement_per_class": per}
