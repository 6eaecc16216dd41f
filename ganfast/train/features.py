"""Feature networks for the sample-quality metrics (Fréchet distance, precision and recall).

Nothing can be downloaded, so the package trains its own: `DigitCNN`, a small convolutional
classifier of the embedded digits, trained by a fixed recipe (DIGIT_CNN_RECIPE, below) on the first
call of `digit_cnn()` and cached as a state_dict in the user's cache directory ($GANFAST_CACHE, else
~/.cache/ganfast), under a name keyed by a hash of the recipe: a change of recipe retrains. Its
128-d penultimate layer is the feature space (`DigitFeatures`).

The recipe: the 1,797 digits (scikit-learn's 8x8, resized to 32x32 as `digits` loads them) in their
plain and bold styles (the `digits-bold` domain: dilated and inverted), so that one network serves both
embedded CycleGAN domains; a seeded fifth of the digits (359, both styles) is held out; the network
sees its 32x32 input average-pooled to 16x16 (the digits were drawn at 8x8), three 3x3 convolutions
(32, 64, 128 channels, ReLU, 2x2 max pooling after the first two), global average pooling to the 128-d
features, one linear layer to the 10 classes; Adam (lr 3e-3, cosine decay to 0), batch 32, 20 epochs,
seeded shuffling and initialisation, one CPU thread (deterministic). Measured on this project's shared
2-core CPU: about 20 s to train; held-out accuracy 98.3% on the plain digits and 97.5% on the bold
ones (`digit_cnn().accuracy`).

For a user's image folder, `feature_network` uses torchvision's Inception v3 (the 2,048-d pool
features) only when torchvision imports and its ImageNet weights are already in the torch hub cache
(never downloaded); otherwise the digits CNN, on the images greyscaled and resized to 32x32. Inception
features are not those of the papers' FID (a TensorFlow port), so the values are comparable between
runs here, not with published FIDs. GANFAST_FD_FEATURES=digits-cnn forces the digits CNN (Inception on
a CPU costs seconds per 1,000 images).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DIGIT_CNN_RECIPE = {
    "version": 1,
    "data": "digits+digits-bold, 32x32, held out: a seeded fifth of the digits",
    "holdout_fraction": 0.2,
    "split_seed": 0,
    "init_seed": 0,
    "shuffle_seed": 1,
    "channels": [32, 64, 128],
    "input_pool": 2,
    "optimizer": "adam",
    "lr": 3e-3,
    "schedule": "cosine to 0",
    "batch_size": 32,
    "epochs": 20,
}

FEATURE_NAMES = ("digits-cnn", "inception-v3")


def cache_dir() -> Path:
    """$GANFAST_CACHE when set, else ~/.cache/ganfast."""
    env = os.environ.get("GANFAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ganfast"


def recipe_hash(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


class DigitCNN(nn.Module):
    """The digits classifier whose penultimate layer is the feature space: (N, 1, 32, 32) in [-1, 1]
    -> logits (N, 10); `features(x)` -> (N, channels[-1])."""

    def __init__(self, channels=(32, 64, 128), input_pool: int = 2, n_classes: int = 10) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.input_pool = input_pool
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.fc = nn.Linear(c3, n_classes)
        self.num_features = c3
        self.accuracy: dict = {}

    def features(self, x: Tensor) -> Tensor:
        if self.input_pool > 1:
            x = F.avg_pool2d(x, self.input_pool)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        return x.mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _training_data(recipe: dict):
    from .data import digits, digits_bold

    plain, bold = digits(32), digits_bold(32)
    n = len(plain)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(recipe["split_seed"]))
    k = int(round(n * recipe["holdout_fraction"]))
    test, train = perm[:k], perm[k:]
    x_train = torch.cat([plain.points[train], bold.points[train]])
    y_train = torch.cat([plain.labels[train], bold.labels[train]])
    held_out = {"digits": (plain.points[test], plain.labels[test]),
                "digits-bold": (bold.points[test], bold.labels[test])}
    return x_train, y_train, held_out


def _train_digit_cnn(recipe: dict) -> DigitCNN:
    """Train DigitCNN by `recipe` (deterministic: seeded, one CPU thread, the global RNG untouched)."""
    x, y, held_out = _training_data(recipe)
    with torch.random.fork_rng(devices=[]), _one_thread(), torch.enable_grad():
        torch.manual_seed(recipe["init_seed"])
        model = DigitCNN(recipe["channels"], recipe["input_pool"])
        opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
        g = torch.Generator().manual_seed(recipe["shuffle_seed"])
        bs = recipe["batch_size"]
        total = recipe["epochs"] * -(-x.shape[0] // bs)
        # cosine decay of the learning rate to 0 over the run
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
        model.train()
        for _ in range(recipe["epochs"]):
            perm = torch.randperm(x.shape[0], generator=g)
            for i in range(0, x.shape[0], bs):
                idx = perm[i:i + bs]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        with torch.no_grad():
            model.accuracy = {name: float((model(xt).argmax(1) == yt).double().mean())
                              for name, (xt, yt) in held_out.items()}
    return model.requires_grad_(False)


_LOADED: dict = {}


def digit_cnn(recipe: Optional[dict] = None, directory: Optional[str | Path] = None) -> DigitCNN:
    """The trained DigitCNN: from this process's memory, else the cache file
    <cache_dir>/digit-cnn-<recipe hash>.pt, else trained now (about 20 s) and cached (written
    atomically). `.accuracy` holds its held-out accuracy per style, `.trained_now` whether this call
    trained it, `.seconds` the training time."""
    from .checkpoint import save_atomic

    recipe = dict(DIGIT_CNN_RECIPE if recipe is None else recipe)
    directory = Path(directory) if directory is not None else cache_dir()
    path = directory / f"digit-cnn-{recipe_hash(recipe)}.pt"
    key = str(path.resolve())
    if key in _LOADED:
        model = _LOADED[key]
        model.trained_now = False
        return model
    model = None
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = DigitCNN(recipe["channels"], recipe["input_pool"])
            model.load_state_dict(state["state_dict"])
            model.accuracy, model.seconds = dict(state["accuracy"]), float(state["seconds"])
            model.trained_now = False
        except Exception:  # a damaged cache file: retrain over it
            model = None
    if model is None:
        t0 = time.perf_counter()
        model = _train_digit_cnn(recipe)
        model.seconds = round(time.perf_counter() - t0, 2)
        model.trained_now = True
        directory.mkdir(parents=True, exist_ok=True)
        save_atomic({"state_dict": model.state_dict(), "recipe": recipe, "accuracy": model.accuracy,
                     "seconds": model.seconds}, path)
    model.eval().requires_grad_(False)
    _LOADED[key] = model
    return model


class DigitFeatures(nn.Module):
    """Images (N, C, H, W) in [-1, 1] -> the digits CNN's 128-d features (N, 128), float64. Images are
    greyscaled (channel mean) and resized to 32x32 as needed. `name` = "digits-cnn"; `num_features`
    for torchmetrics."""

    name = "digits-cnn"

    def __init__(self, cnn: Optional[DigitCNN] = None) -> None:
        super().__init__()
        self.cnn = cnn if cnn is not None else digit_cnn()
        self.num_features = self.cnn.num_features

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4:
            raise ValueError(f"DigitFeatures: images must be (N, C, H, W); got shape {tuple(images.shape)}")
        x = images.detach().to("cpu", torch.float32)
        if x.shape[1] != 1:
            x = x.mean(1, keepdim=True)
        if x.shape[-2:] != (32, 32):
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > 32)
        out = [self.cnn.features(x[i:i + 1000]) for i in range(0, x.shape[0], 1000)]
        return (torch.cat(out) if out else x.new_zeros(0, self.num_features)).double()


def _inception_weights_file() -> Optional[Path]:
    """The torch hub cache's file of torchvision's Inception v3 weights, when torchvision imports and
    the file is there; else None. Never downloads."""
    try:
        from torchvision.models import Inception_V3_Weights
    except Exception:
        return None
    url = Inception_V3_Weights.IMAGENET1K_V1.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return path if path.is_file() else None


class InceptionFeatures(nn.Module):
    """torchvision's Inception v3 pool features (2,048-d, float64) of images (N, C, H, W) in [-1, 1]:
    greyscale repeated to RGB, resized to 299x299, ImageNet normalisation.

    The network is built as torchvision's own `inception_v3(weights=IMAGENET1K_V1)` builds it, with
    `transform_input=True`: those weights are a port of Google's, trained on inputs scaled to [-1, 1],
    and transform_input maps the ImageNet-normalised input back to that scale. Without it the first
    convolution would see inputs about 2.2x too large (the weights' own preset transforms normalise
    for ImageNet and rely on this flag)."""

    name = "inception-v3"
    num_features = 2048

    def __init__(self, weights_file: Path) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
        net.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
        net.fc = nn.Identity()
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.detach().float().to(self.mean.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = ((x + 1) / 2 - self.mean) / self.std
        out = [self.net(x[i:i + 100]) for i in range(0, x.shape[0], 100)]
        return (torch.cat(out) if out else x.new_zeros(0, self.num_features)).double().cpu()


def feature_network(data: str = "digits") -> nn.Module:
    """The feature network of the quality metrics for a data set spec: the digits CNN
    (`DigitFeatures`) for digits, digits-bold, cycle: pairs and npy: images; for folder:PATH,
    torchvision's Inception v3 when torchvision and its cached weights are present (and
    GANFAST_FD_FEATURES is not "digits-cnn"), else the digits CNN. The module's `name` says which;
    `fallback` (on the digits CNN chosen for a folder) says why Inception was not used."""
    forced = os.environ.get("GANFAST_FD_FEATURES", "auto")
    if forced not in ("auto",) + FEATURE_NAMES:
        raise ValueError(f"GANFAST_FD_FEATURES: expected auto, digits-cnn or inception-v3; got {forced!r}")
    if data.startswith("folder:") and forced != "digits-cnn":
        weights = _inception_weights_file()
        if weights is not None:
            return InceptionFeatures(weights)
        net = DigitFeatures()
        net.fallback = "torchvision or its cached Inception v3 weights not found"
        return net
    if forced == "inception-v3":
        weights = _inception_weights_file()
        if weights is not None:
            return InceptionFeatures(weights)
    return DigitFeatures()
