"""Data sets that need no download: two 2-D mixtures of Gaussians, scikit-learn's 8x8 digits,
a folder of images and a .npy array.

    ring8    8 Gaussians of std 0.01 on the unit circle
    grid25   25 Gaussians of std 0.05 at {-4, -2, 0, 2, 4}^2
    digits   the 1,797 8x8 handwritten digits that ship with scikit-learn, resized (32x32)
    digits-bold  the same digits with strokes dilated (3x3 maximum filter) and intensities inverted
    cycle:A,B    two domains (any of the image data sets above) for CycleGAN; digits,digits-bold
                 splits the digits so that no image appears in both domains
    folder:PATH  PNG / JPEG files under PATH (recursively), resized, grayscale or RGB; labelled when
                 every image sits in a first-level subfolder (torchvision's ImageFolder convention:
                 the class is that subfolder's name, classes sorted by name)
    npy:PATH     an array: (N, 2) points, or images (N, H, W), (N, C, H, W) or (N, H, W, C); labelled
                 by a sidecar PATH with .npy replaced by .labels.npy: (N,) integers 0..K-1

Images are tensors (C, H, W) in [-1, 1]; 2-D points are in the data's own coordinates.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import data_kind

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class Dataset:
    """A data set: either a sampler of an analytic mixture (`modes` set) or a tensor of examples."""

    def __init__(self, name: str, *, points: Optional[Tensor] = None, modes: Optional[Tensor] = None,
                 mode_std: float = 0.0, labels: Optional[Tensor] = None, n_classes: int = 0,
                 skipped: int = 0, class_names: Optional[list] = None) -> None:
        self.name = name
        self.points = points          # (N, *shape) examples, or None for an analytic mixture
        self.modes = modes            # (M, 2) mixture centres for ring8 / grid25
        self.mode_std = mode_std
        self.labels = labels          # (N,) int64 class of each example (digits, labelled folder / npy), or None
        self.n_classes = n_classes
        self.class_names = class_names if class_names is not None else [str(i) for i in range(n_classes)]
        self.skipped = skipped        # unreadable image files
        ref = modes if points is None else points
        self.shape = tuple(ref.shape[1:])
        # 2-D data: the MLPs work in units of this scale (grid25 spans +-4, ring8 +-1)
        if not self.is_image:
            if modes is not None:
                self.scale = float(modes.abs().max().clamp_min(1e-6))
            else:
                self.scale = float(points.abs().max().clamp_min(1e-6))

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def __len__(self) -> int:
        return 0 if self.points is None else self.points.shape[0]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n examples (float32, CPU) drawn with `generator`: mixture draws, or examples chosen
        uniformly with replacement."""
        if self.points is None:
            idx = torch.randint(self.modes.shape[0], (n,), generator=generator)
            noise = torch.randn(n, self.modes.shape[1], generator=generator)
            return self.modes[idx] + self.mode_std * noise
        idx = torch.randint(self.points.shape[0], (n,), generator=generator)
        return self.points[idx]


class DataSampler:
    """Batches from a Dataset, with a generator of its own whose state the checkpoint keeps."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, device: torch.device,
                 shard: Optional[slice] = None) -> None:
        """shard: this process's rows of each batch (data-parallel training): every process draws the
        whole batch of batch_size from the same generator, as one process would, and keeps its rows."""
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.shard = shard if shard is not None else slice(None)
        self.generator = torch.Generator().manual_seed(seed)
        # examples live on the training device once, so a batch is one index_select there
        if dataset.points is not None:
            self._points = dataset.points.to(device)
        self._labels = dataset.labels.to(device) if dataset.labels is not None else None

    def next(self) -> Tensor:
        ds = self.dataset
        if ds.points is None:
            return ds.sample(self.batch_size, self.generator)[self.shard].to(self.device, non_blocking=True)
        idx = torch.randint(ds.points.shape[0], (self.batch_size,), generator=self.generator)[self.shard]
        return self._points[idx.to(self.device, non_blocking=True)]

    def next_labelled(self) -> tuple[Tensor, Tensor]:
        """(images, labels) of one batch: the same draw as next() (one randint from this sampler's
        generator), the labels of the images drawn."""
        if self._labels is None:
            raise ValueError(f"ganfast.train: {self.dataset.name} has no labels")
        idx = torch.randint(self.dataset.points.shape[0], (self.batch_size,), generator=self.generator)[self.shard]
        idx = idx.to(self.device, non_blocking=True)
        return self._points[idx], self._labels[idx]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def ring8() -> Dataset:
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    modes = torch.stack([angles.cos(), angles.sin()], 1).float()
    return Dataset("ring8", modes=modes, mode_std=0.01)


def grid25() -> Dataset:
    axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
    modes = torch.cartesian_prod(axis, axis)
    return Dataset("grid25", modes=modes, mode_std=0.05)


def _resize(images: Tensor, size: int) -> Tensor:
    """(N, C, h, w) in [-1, 1] -> (N, C, size, size): bilinear with antialiasing, centre-cropped to
    a square first."""
    h, w = images.shape[-2:]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        images = images[..., top:top + s, left:left + s]
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=images.shape[-1] > size)
    return images.clamp(-1, 1).contiguous()


def digits(image_size: int = 32) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ImportError("ganfast.train: the digits data set needs scikit-learn (pip install scikit-learn)") from e
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32)).unsqueeze(1) / 16.0 * 2 - 1  # 0..16 -> [-1, 1]
    return Dataset("digits", points=_resize(x, image_size), labels=torch.from_numpy(d.target).long(),
                   n_classes=10)


def digits_bold(image_size: int = 32) -> Dataset:
    """The digits with their strokes dilated by a 3x3 maximum filter at `image_size` and the
    intensities inverted (x -> -x): CycleGAN's embedded second domain, the same content (labels kept
    for the content-preservation metric) in another style."""
    d = digits(image_size)
    x = -F.max_pool2d(d.points, 3, stride=1, padding=1)
    return Dataset("digits-bold", points=x, labels=d.labels, n_classes=10)


def unpaired_halves(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two disjoint halves of range(n), shuffled with `seed`: CycleGAN's embedded pair draws domain A
    from the first and domain B from the second, so no digit image appears in both (unpaired)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2].sort().values, perm[n // 2:].sort().values


def folder(path: str, image_size: int = 32, channels: Optional[int] = None) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"ganfast.train: data folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    # labelled (ImageFolder's convention) when every image lies in a first-level subfolder: the class
    # is that subfolder's name; an image directly in the folder makes the whole folder unlabelled
    parts = [p.relative_to(root).parts for p in files]
    labelled = bool(files) and all(len(q) >= 2 for q in parts)
    class_names = sorted({q[0] for q in parts}) if labelled else None
    images, skipped, modes, labels = [], [], [], []
    for p, q in zip(files, parts):
        try:
            with Image.open(p) as im:
                im.load()
                modes.append(im.mode)
                images.append(im.copy())
                if labelled:
                    labels.append(class_names.index(q[0]))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            skipped.append(p)
    if skipped:
        names = ", ".join(str(p.name) for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(f"ganfast.train: skipped {len(skipped)} unreadable image file(s) of {len(files)} in "
                      f"{root}: {names}", stacklevel=2)
    if not images:
        raise ValueError(f"ganfast.train: no readable PNG/JPEG images in {root} "
                         f"({len(files)} image file(s) found, {len(skipped)} unreadable)")
    if channels is None:
        gray = ("1", "L", "LA", "I", "I;16", "F")
        channels = 1 if all(m in gray for m in modes) else 3
    tensors = [image_tensor(im, image_size, channels) for im in images]
    if labelled:
        return Dataset(f"folder:{path}", points=torch.stack(tensors), skipped=len(skipped),
                       labels=torch.tensor(labels, dtype=torch.int64), n_classes=len(class_names),
                       class_names=class_names)
    return Dataset(f"folder:{path}", points=torch.stack(tensors), skipped=len(skipped))


def labels_path(path: str | Path) -> Path:
    """The sidecar labels file of an npy: data set: X.npy -> X.labels.npy."""
    p = Path(path)
    return p.with_name((p.name[:-4] if p.name.endswith(".npy") else p.name) + ".labels.npy")


def _npy_labels(path: str | Path, n: int) -> Optional[Tensor]:
    """The sidecar labels of an npy: data set ((n,) integers in 0..K-1), or None when there is none."""
    lp = labels_path(path)
    if not lp.is_file():
        return None
    try:
        a = np.load(lp, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"ganfast.train: cannot read the labels {lp} as a .npy array: {e}") from None
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer) or (n and a.min() < 0):
        raise ValueError(f"ganfast.train: labels {lp}: expected ({n},) integers >= 0 (one class per image of "
                         f"{path}); got {a.dtype} {a.shape}")
    return torch.from_numpy(a.astype(np.int64))


def image_tensor(im, image_size: int, channels: int) -> Tensor:
    """A Pillow image as the models see it: (channels, image_size, image_size) in [-1, 1], centre-
    cropped to a square and resized with Pillow's bicubic (antialiasing) filter."""
    from PIL import Image

    im = im.convert("L" if channels == 1 else "RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
    a = np.asarray(im, dtype=np.float32).reshape(image_size, image_size, channels)
    return (torch.from_numpy(a).permute(2, 0, 1) / 127.5 - 1).clamp(-1, 1)


def npy(path: str, image_size: int = 32, channels: Optional[int] = None) -> Dataset:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ganfast.train: .npy file not found: {p}")
    try:
        a = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"ganfast.train: cannot read {p} as a .npy array: {e}") from None
    if a.ndim < 2 or a.shape[0] < 1 or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"ganfast.train: {p}: expected a numeric array of shape (N, 2), (N, H, W), (N, C, H, W) "
                         f"or (N, H, W, C); got {a.dtype} {a.shape}")
    if a.ndim == 2:
        if a.shape[1] != 2:
            raise ValueError(f"ganfast.train: {p}: points must have shape (N, 2); got {a.shape}")
        x = torch.from_numpy(a.astype(np.float32))
        if not torch.isfinite(x).all():
            raise ValueError(f"ganfast.train: {p} holds NaN or inf values")
        return Dataset(f"npy:{path}", points=x)
    x = torch.from_numpy(a.astype(np.float32))
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"ganfast.train: {p}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C) with "
                         f"C in (1, 3); got {tuple(a.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"ganfast.train: {p} holds NaN or inf values")
    # uint8 / 0..255 -> [-1, 1]; [0, 1] floats -> [-1, 1]; anything already in [-1, 1] is kept
    if np.issubdtype(a.dtype, np.integer) or x.max() > 1:
        x = x / 127.5 - 1
    elif x.min() >= 0:
        x = x * 2 - 1
    if channels is not None and channels != x.shape[1]:
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, 3, -1, -1)
    labels = _npy_labels(p, x.shape[0])
    if labels is not None:
        return Dataset(f"npy:{path}", points=_resize(x, image_size), labels=labels, n_classes=int(labels.max()) + 1)
    return Dataset(f"npy:{path}", points=_resize(x, image_size))


def load_dataset(data: str, image_size: int = 32, channels: Optional[int] = None) -> Dataset:
    kind = data_kind(data)  # raises listing the choices
    if kind == "cycle":
        raise ValueError(f"ganfast.train: data '{data}' is a pair of domains for CycleGAN (--model cyclegan); "
                         f"the other models train on one data set")
    if kind == "digits-bold":
        return digits_bold(image_size)
    if kind == "ring8":
        return ring8()
    if kind == "grid25":
        return grid25()
    if kind == "digits":
        ds = digits(image_size)
        if channels == 3:
            ds.points = ds.points.expand(-1, 3, -1, -1).contiguous()
            ds.shape = tuple(ds.points.shape[1:])
        return ds
    path = data.split(":", 1)[1]
    return folder(path, image_size, channels) if kind == "folder" else npy(path, image_size, channels)


# ---- CycleGAN's two domains -----------------------------------------------------------------------

EMBEDDED_DOMAINS = ("digits", "digits-bold")
# Images of each domain kept out of training for the metrics (cycle error, content preservation).
HELD_OUT_FRACTION, HELD_OUT_MAX = 0.1, 200


class CycleData:
    """CycleGAN's data: two image domains `a` and `b` (Datasets of the training images) and their
    held-out images `a_test` / `b_test` (with labels `a_test_labels` / `b_test_labels` where the
    domain has them: the embedded digits pair)."""

    def __init__(self, name: str, a: Dataset, b: Dataset, a_test: Tensor, b_test: Tensor,
                 a_test_labels: Optional[Tensor], b_test_labels: Optional[Tensor]) -> None:
        self.name, self.a, self.b = name, a, b
        self.a_test, self.b_test = a_test, b_test
        self.a_test_labels, self.b_test_labels = a_test_labels, b_test_labels
        self.is_image = True


def split_cycle_spec(data: str) -> tuple[str, str]:
    """'cycle:A,B' -> (A, B), each checked as an image data set."""
    body = data.split(":", 1)[1]
    parts = body.split(",")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"ganfast.train: data '{data}': expected cycle:A,B with two domains separated by one "
                         f"comma (each digits, digits-bold, folder:PATH or npy:PATH)")
    for part in parts:
        kind = data_kind(part)
        if kind in ("ring8", "grid25", "cycle"):
            raise ValueError(f"ganfast.train: data '{data}': domain '{part}' is not an image data set; choose "
                             f"digits, digits-bold, folder:PATH or npy:PATH")
    return parts[0], parts[1]


def _held_out(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """(train, test) indices of range(n): a seeded tenth (at most HELD_OUT_MAX) held out; a domain
    of fewer than 20 images keeps them all for training and tests on them too."""
    if n < 20:
        idx = torch.arange(n)
        return idx, idx
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = min(HELD_OUT_MAX, max(1, int(n * HELD_OUT_FRACTION)))
    return perm[k:].sort().values, perm[:k].sort().values


def load_cycle_data(data: str, image_size: int = 32, channels: Optional[int] = None) -> CycleData:
    """The two domains of `cycle:A,B`. When both are embedded digit domains, the digit images are
    split in two disjoint halves (unpaired_halves): A draws from the first, B from the second."""
    spec_a, spec_b = split_cycle_spec(data)
    domains = [load_dataset(s, image_size, channels) for s in (spec_a, spec_b)]
    for s, d in zip((spec_a, spec_b), domains):
        if s not in EMBEDDED_DOMAINS:
            # a labelled folder's classes are its own names: content preservation compares classes across
            # the two domains, which only the embedded digits pair shares
            d.labels, d.n_classes = None, 0
    if spec_a in EMBEDDED_DOMAINS and spec_b in EMBEDDED_DOMAINS:
        halves = unpaired_halves(len(domains[0]), seed=0)
        domains = [Dataset(d.name, points=d.points[h], labels=d.labels[h], n_classes=d.n_classes)
                   for d, h in zip(domains, halves)]
    sizes = {d.shape[1:] for d in domains}
    if len(sizes) != 1:  # pragma: no cover - every loader resizes to image_size
        raise ValueError(f"ganfast.train: the two domains of '{data}' have different image sizes {sizes}")
    out = []
    for i, d in enumerate(domains):
        train, test = _held_out(len(d), seed=1 + i)
        labels = d.labels
        out.append((Dataset(d.name, points=d.points[train], labels=None if labels is None else labels[train],
                            n_classes=d.n_classes),
                    d.points[test], None if labels is None else labels[test]))
    (a, a_test, a_lab), (b, b_test, b_lab) = out
    return CycleData(f"{a.name} <-> {b.name}", a, b, a_test, b_test, a_lab, b_lab)
