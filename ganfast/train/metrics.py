"""Mode-collapse metrics.

2-D mixtures (VEEGAN / PacGAN definition): a sample is *high quality* when it lies within
3 standard deviations of its nearest mode; a mode is *captured* when at least one high-quality
sample is nearest to it. Reported on 2,500 samples.

Digits: a classifier trained on the data set (DigitClassifier) labels the samples; *class coverage* counts the
classes with at least one confident sample (max probability >= 0.9) and KL(p || uniform) measures
how far the predicted class histogram p is from uniform (0 = every class equally often,
log 10 = one class only).

Sample quality (every data set), in a feature space (ganfast.train.features: the digits CNN's 128-d
features, or Inception's for an image folder when available):
  * Fréchet distance (FD; FID with Inception features): ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^1/2)
    between Gaussians fitted to the real and generated features (torchmetrics'
    FrechetInceptionDistance with the feature network as its `feature` module). 0 = same statistics.
  * precision and recall (Kynkaanniemi et al. 2019), k = 3: each sample's manifold ball has the radius
    of its k-th nearest neighbour within its own set; precision = fraction of generated samples inside
    some real ball (low: poor samples), recall = fraction of real samples inside some generated ball
    (low: mode collapse).
2-D mixtures add recall on the raw points (real = draws of the mixture) and mode_kl, KL(p || uniform)
of the high-quality samples' nearest-mode histogram p.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def mixture_samples(modes: Tensor, std: float, n: int, seed: int = 0) -> Tensor:
    """n draws (float64) of the equal-weight mixture of Gaussians N(mode, std^2 I), seeded: the real
    samples of the 2-D recall."""
    g = torch.Generator().manual_seed(seed)
    m = modes.detach().double().cpu()
    idx = torch.randint(m.shape[0], (n,), generator=g)
    return m[idx] + std * torch.randn(n, m.shape[1], generator=g, dtype=torch.float64)


def mode_kl(per_mode) -> float:
    """KL(p || uniform) of a histogram of counts over M modes, p the empirical distribution:
    sum over p_i > 0 of p_i log(p_i M) (a zero count adds nothing: 0 log 0 = 0), so it is finite,
    0 for equal counts and log M for one mode only; log M also when every count is 0 (no sample)."""
    c = np.asarray(per_mode, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or (c < 0).any():
        raise ValueError(f"mode_kl: per_mode must be a non-empty 1-D array of counts >= 0; got {c!r}")
    if c.sum() == 0:
        return math.log(c.size)
    p = c / c.sum()
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] * c.size)))


def mode_metrics(samples: Tensor, modes: Tensor, std: float, n_std: float = 3.0,
                 real: Optional[Tensor] = None, k: int = 3) -> dict:
    """{"modes": captured modes, "n_modes": M, "high_quality": fraction of high-quality samples,
    "per_mode": counts of high-quality samples per mode, "mode_kl": KL(p || uniform) of the
    high-quality samples' nearest-mode histogram (mode_kl), "recall": the k-NN recall of the samples
    (precision_recall on the raw points) against `real` (default: as many draws of the mixture as
    samples, mixture_samples with seed 0)} for samples (N, d), modes (M, d). Recall needs N > k
    (else None)."""
    if samples.dim() != 2 or modes.dim() != 2 or samples.shape[1] != modes.shape[1]:
        raise ValueError(f"mode_metrics: samples (N, d) and modes (M, d) expected; got {tuple(samples.shape)} "
                         f"and {tuple(modes.shape)}")
    x = samples.detach().double().cpu()
    m = modes.detach().double().cpu()
    n = x.shape[0]
    if n == 0:
        return {"modes": 0, "n_modes": m.shape[0], "high_quality": 0.0, "per_mode": [0] * m.shape[0],
                "mode_kl": math.log(m.shape[0]), "recall": None}
    dist = torch.cdist(x, m)  # (N, M)
    nearest_dist, nearest = dist.min(1)
    # NaN samples are never high quality
    hq = nearest_dist <= n_std * std
    per_mode = torch.bincount(nearest[hq], minlength=m.shape[0])
    recall = None
    if n > k:
        r = mixture_samples(m, std, n) if real is None else real.detach().double().cpu()
        if r.dim() != 2 or r.shape[1] != m.shape[1]:
            raise ValueError(f"mode_metrics: real must be (N, {m.shape[1]}); got {tuple(r.shape)}")
        if r.shape[0] > k:
            # precision_recall's recall alone (its precision is what high_quality measures here)
            recall = float(_inside(r, x, knn_radii(x, k)).double().mean())
    return {"modes": int((per_mode > 0).sum()), "n_modes": int(m.shape[0]),
            "high_quality": float(hq.double().mean()), "per_mode": per_mode.tolist(),
            "mode_kl": mode_kl(per_mode.tolist()), "recall": recall}


# ---- sample quality in a feature space --------------------------------------------------------------

def _features_arg(x, name: str) -> Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.dim() != 2:
        raise ValueError(f"{name}: expected features of shape (N, d); got shape {tuple(t.shape)}")
    return t


def _feature_pair(a, b, op: str, names: tuple, min_samples: int, why: str) -> tuple:
    """Two feature sets (N, d) and (M, d) for `op`, as float64 CPU tensors: same d, each with at least
    `min_samples` rows (`why` names the bound in the error)."""
    a, b = _features_arg(a, f"{op}: {names[0]}"), _features_arg(b, f"{op}: {names[1]}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{op}: {names[0]} and {names[1]} must have the same feature dimension; got "
                         f"{a.shape[1]} and {b.shape[1]}")
    for name, t in zip(names, (a, b)):
        if t.shape[0] < min_samples:
            raise ValueError(f"{op}: {name} needs at least {why}{min_samples} samples; got {t.shape[0]}")
    return a, b


def _pairwise(a: Tensor, b: Tensor, chunk: int = 2048) -> Tensor:
    """Euclidean distances (N, M) in float64 (torch.cdist: matrix products for large sets, so a distance
    carries a rounding error near 1e-8 of the norms; it decides only points on a ball's boundary)."""
    return torch.cat([torch.cdist(a[i:i + chunk], b) for i in range(0, a.shape[0], chunk)]) \
        if a.shape[0] else a.new_zeros(0, b.shape[0])


def knn_radii(feats: Tensor, k: int = 3) -> Tensor:
    """The distance of each row of feats (N, d) to its k-th nearest other row (N,)."""
    d = _pairwise(feats, feats)
    d.fill_diagonal_(float("inf"))  # a sample is not its own neighbour (its duplicates are)
    return d.topk(k, 1, largest=False).values[:, -1]  # (topk: several times faster than kthvalue here)


def _inside(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1024) -> Tensor:
    """(N,) bool: whether each point lies within radii[j] of some centre j."""
    out = [(_pairwise(points[i:i + chunk], centres) <= radii[None]).any(1) for i in range(0, points.shape[0], chunk)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def precision_recall(real_feats, fake_feats, k: int = 3, real_radii: Optional[Tensor] = None) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of generated samples, in the feature
    space the two (N, d) / (M, d) arrays live in: {"precision": fraction of fake samples within the
    k-th-nearest-neighbour radius of some real sample, "recall": fraction of real samples within the
    k-th-NN radius of some fake sample}. Distances are Euclidean, float64; a point on a ball's boundary
    is inside. Each set needs more than k samples. `real_radii`: knn_radii(real_feats, k) computed
    already (the engine keeps them for the run)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"precision_recall: k must be an integer >= 1; got {k!r}")
    r, f = _feature_pair(real_feats, fake_feats, "precision_recall", ("real_feats", "fake_feats"), k + 1,
                         "k + 1 = ")
    if real_radii is None:
        real_radii = knn_radii(r, k)
    elif tuple(real_radii.shape) != (r.shape[0],):
        raise ValueError(f"precision_recall: real_radii must be ({r.shape[0]},), knn_radii(real_feats, k); got "
                         f"{tuple(real_radii.shape)}")
    precision = _inside(f, r, real_radii.double()).double().mean()
    recall = _inside(r, f, knn_radii(f, k)).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


class _Given(torch.nn.Module):
    """torchmetrics' feature module for features computed already: the identity, in float64."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.num_features = d

    def forward(self, x: Tensor) -> Tensor:
        return x.double()


def frechet_distance(real, fake, feature: Optional[torch.nn.Module] = None) -> float:
    """The Fréchet distance between Gaussians fitted (mean, unbiased covariance) to the features of
    `real` and `fake`: torchmetrics' FrechetInceptionDistance with `feature` as its feature module,
    computed in float64. `feature`: a module mapping images (N, C, H, W) to features (N, d), e.g.
    feature_network("digits"); None: images (4-D inputs) go through the digits CNN (DigitFeatures),
    and 2-D inputs (N, d) are taken as features already. Each set needs at least 2 samples."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = torch.as_tensor(real), torch.as_tensor(fake)
    if feature is not None:
        for name, t in (("real", real), ("fake", fake)):
            if t.dim() != 4:
                raise ValueError(f"frechet_distance: {name} must be images (N, C, H, W) for a feature module; "
                                 f"got shape {tuple(t.shape)}")
        real, fake = feature(real), feature(fake)
    elif real.dim() == 4 or fake.dim() == 4:
        from .features import DigitFeatures

        net = DigitFeatures()
        real, fake = net(real), net(fake)
    real, fake = _feature_pair(real, fake, "frechet_distance", ("real", "fake"), 2, "")
    # sync_on_compute off: torchmetrics would otherwise gather the states of every process of an
    # initialised process group, and in data-parallel training rank 0 evaluates alone
    fid = FrechetInceptionDistance(feature=_Given(real.shape[1]), sync_on_compute=False)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


def sample_quality(real_feats: Tensor, fake_images: Tensor, feature: torch.nn.Module, k: int = 3,
                   real_radii: Optional[Tensor] = None) -> dict:
    """The engine's image metrics: {"fd", "precision", "recall", "fd_features"} of generated images
    against real features computed once per run with the same `feature` module (and their k-NN radii,
    `real_radii`, when given). A non-finite FD (a diverged generator's NaN images) is reported as None."""
    fake_feats = feature(fake_images)
    fd = frechet_distance(real_feats, fake_feats)
    out = {"fd": fd if math.isfinite(fd) else None}
    out.update(precision_recall(real_feats, fake_feats, k, real_radii))
    out["fd_features"] = feature.name
    if getattr(feature, "fallback", None):
        out["fd_features_note"] = feature.fallback
    return out


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


from .features import DigitCNN, DigitFeatures, digit_cnn, feature_network  # noqa: E402,F401  (the public names)
