"""Atomic checkpoints: written to a temporary file in the same directory, flushed and fsynced,
then renamed over the old one, so a crash mid-write leaves the previous checkpoint whole."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"


def save_atomic(obj: Any, path: str | Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # leave the previous checkpoint as it was; drop the partial file
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # the rename itself is durable only once the directory entry is (POSIX); not possible on Windows
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(text: str, path: str | Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


FORMAT = "ganfast.train/1"
# What every checkpoint the Trainer writes holds (trainer.py, _save_checkpoint).
REQUIRED_KEYS = ("step", "config", "model", "opt_g", "opt_d", "rng")
# ...and the networks of its kind of model (the "kind" of its "model" description)
MODEL_KEYS = {"cyclegan": ("G_AB", "G_BA", "D_A", "D_B", "pool_a", "pool_b")}
GAN_KEYS = ("G", "D", "G_ema", "scaler_g", "scaler_d")  # every other kind: one G, one D


class CheckpointError(ValueError):
    """A file that is not a ganfast checkpoint, or one that is damaged (truncated, corrupted,
    incomplete, or holding weights that do not fit the model it describes)."""

    def __init__(self, path, why: str) -> None:
        super().__init__(f"ganfast.train: {path} is not a ganfast checkpoint or is damaged: {why}")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The exception in one line: its first line, and the next one too when the first only
    introduces it (load_state_dict's "Error(s) in loading state_dict for G:")."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines or [""])[0]
    text = text.split(". ")[0]  # the first sentence: torch's zip errors go on with advice about other files
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file of `path`: a run directory's checkpoint.pt, or `path` itself."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint of a run (its directory or the file itself). Raises FileNotFoundError if there
    is none, CheckpointError (a ValueError) naming the file and what is wrong if it cannot be used:
    never the parser's own message alone."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ganfast.train: checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "the file is empty")
    try:
        # our own files: RNG states are numpy arrays / tuples, so not weights_only
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001  (a truncated zip, a foreign pickle, a text file: many types)
        raise CheckpointError(path, f"torch.load cannot read its {size:,} bytes, so it is truncated, corrupted "
                                    f"or another kind of file ({first_line(e)})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(path, f"it holds a {type(ckpt).__name__}, not a ganfast training checkpoint")
    if ckpt.get("format") != FORMAT:
        found = f"format {ckpt['format']!r}" if "format" in ckpt else f"keys {', '.join(map(str, list(ckpt)[:8]))}"
        raise CheckpointError(path, f"it has {found}, not a {FORMAT!r} record")
    kind = ckpt["model"].get("kind") if isinstance(ckpt.get("model"), dict) else None
    missing = [k for k in REQUIRED_KEYS + MODEL_KEYS.get(kind, GAN_KEYS) if k not in ckpt]
    if missing:
        raise CheckpointError(path, f"it lacks {', '.join(missing)}")
    for key in ("config", "model", "rng"):
        if not isinstance(ckpt[key], dict):
            raise CheckpointError(path, f"its {key!r} is a {type(ckpt[key]).__name__}, not a dict")
    return ckpt


def load_state(module, state: dict, path, what: str) -> None:
    """module.load_state_dict(state), a mismatch reported as a damaged checkpoint: the weights a
    checkpoint holds must fit the model its own configuration describes."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(path, f"its {what} does not fit the model its configuration describes "
                                    f"({first_line(e, 300)})") from None
