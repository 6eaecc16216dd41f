"""`ganfast translate`: a CycleGAN run's generators applied to a user's own images.

    from ganfast.train import translate_files
    translate_files("runs/cycle", "photos/", "translated/", direction="AtoB")

Input: a .npy array of images ((N, H, W), (N, C, H, W) or (N, H, W, C); uint8 0..255, floats in
[0, 1] or in [-1, 1], as `--data npy:`), one PNG/JPEG file, or a folder of them (recursively).
Images are prepared as in training (centre crop to a square, resized to the run's image size, the
run's channels) and translated by G_AB (AtoB) or G_BA (BtoA). Output of the same kind: a .npy of
(N, C, H, W) float32 in [-1, 1]; an image file; a folder with one PNG per input image at the same
relative path.
"""
from __future__ import annotations

from pathlib import Path
import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, checkpoint_path, first_line, load_checkpoint, load_state
from .data import IMAGE_SUFFIXES, image_tensor

DIRECTIONS = ("AtoB", "BtoA")


def load_translator(ckpt, direction: str = "AtoB", device: str | torch.device = "cpu") -> nn.Module:
    """G_AB (direction AtoB) or G_BA (BtoA) of a CycleGAN checkpoint (a file or a run directory),
    in eval mode. Attributes: in_ch, out_ch, image_size, trained_steps."""
    from .cyclegan import generators_from_spec

    if direction not in DIRECTIONS:
        raise ValueError(f"ganfast translate: --direction must be AtoB or BtoA; got {direction!r}")
    path = checkpoint_path(ckpt)
    state = load_checkpoint(path)
    spec = state["model"]
    if spec.get("kind") != "cyclegan":
        raise ValueError(f"ganfast translate: {path} is a {spec.get('kind')} run, not a CycleGAN one (train with "
                         f"--model cyclegan --data cycle:A,B); draw its samples with ganfast sample")
    try:
        g_ab, g_ba = generators_from_spec(spec)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"its model description cannot be built ({first_line(e)})") from None
    what = "G_AB" if direction == "AtoB" else "G_BA"
    G = g_ab if direction == "AtoB" else g_ba
    load_state(G, state[what], path, what)
    G.image_size = int(spec["image_size"])
    G.trained_steps = int(state["step"])
    return G.to(device).eval().requires_grad_(False)


def _read_npy(path: Path, image_size: int, channels: int) -> torch.Tensor:
    from .data import npy

    ds = npy(str(path), image_size, channels)
    if not ds.is_image:
        raise ValueError(f"ganfast translate: {path} holds 2-D points, not images")
    return ds.points


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path, image_size: int, channels: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return image_tensor(im, image_size, channels)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ValueError(f"ganfast translate: cannot read {path} as an image ({first_line(e)})") from None


def _write_image(x: torch.Tensor, path: Path) -> None:
    from PIL import Image

    a = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(path)


@torch.no_grad()
def translate(G: nn.Module, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """G applied to images (N, C, H, W) in [-1, 1], in batches; CPU float32 out."""
    device = next(G.parameters()).device
    parts = [G(images[i:i + batch].to(device)).float().cpu() for i in range(0, images.shape[0], batch)]
    return torch.cat(parts) if parts else images.new_zeros((0, G.out_ch) + tuple(images.shape[2:]))


def translate_files(ckpt, input, out, direction: str = "AtoB", device: str = "cpu") -> list[Path]:
    """Translate `input` (a .npy, an image file or a folder of images) into `out` (the same kind;
    see the module's docstring). Returns the files written."""
    G = load_translator(ckpt, direction, device)
    src, dst = Path(input), Path(out)
    size, ch = G.image_size, G.in_ch
    if not src.exists():
        raise FileNotFoundError(f"ganfast translate: --input not found: {src}")
    if src.is_dir():
        files = _image_files(src)
        if not files:
            raise ValueError(f"ganfast translate: no PNG/JPEG images in {src}")
        if dst.exists() and not dst.is_dir():
            raise ValueError(f"ganfast translate: --input is a folder, so --out must be a folder; {dst} is a file")
        y = translate(G, torch.stack([_read_image(p, size, ch) for p in files]))
        written = []
        for p, img in zip(files, y):
            target = (dst / p.relative_to(src)).with_suffix(".png")
            _write_image(img, target)
            written.append(target)
        return written
    suffix, out_suffix = src.suffix.lower(), dst.suffix.lower()
    if suffix == ".npy":
        if out_suffix != ".npy":
            raise ValueError(f"ganfast translate: --input is a .npy array, so --out must end in .npy; got '{dst}'")
        y = translate(G, _read_npy(src, size, ch))
        dst.parent.mkdir(parents=True, exist_ok=True)
        np.save(dst, y.numpy())
        return [dst]
    if suffix in IMAGE_SUFFIXES:
        if out_suffix not in IMAGE_SUFFIXES:
            raise ValueError(f"ganfast translate: --input is an image, so --out must end in .png, .jpg or .jpeg; "
                             f"got '{dst}'")
        _write_image(translate(G, _read_image(src, size, ch)[None])[0], dst)
        return [dst]
    raise ValueError(f"ganfast translate: --input must be a .npy file, a PNG/JPEG image or a folder of them; "
                     f"got '{src}'")


__all__ = ["DIRECTIONS", "load_translator", "translate", "translate_files"]
