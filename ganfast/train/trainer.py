"""The training loop: k discriminator steps (fresh real batch, fresh z) then one generator step
(fresh z); the discriminator's loss and penalties through ganfast.steps (one pass over real and fake
where D allows, lean double backward), the generator's through ganfast.losses.

    from ganfast.train import TrainConfig, Trainer
    summary = Trainer(TrainConfig(data="ring8", steps=5000, out="runs/ring8")).fit()

Output directory: config.toml (the resolved configuration), checkpoint.pt (atomic), metrics.jsonl,
samples/step_NNNNNN.png, samples.png (the last), training.png (curves), summary.json.
"""
from __future__ import annotations

import copy
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import backend as _backend
from .. import losses, penalty, steps
from . import plots
from .checkpoint import (CHECKPOINT_NAME, CheckpointError, first_line, load_checkpoint, load_state, save_atomic,
                         write_text_atomic)
from .config import RESUMABLE_CHANGES, TrainConfig
from .data import DataSampler, load_dataset
from .distributed import World, unwrap_all, wrap
from .metrics import (DigitClassifier, class_agreement, class_metrics, code_agreement, feature_network, knn_radii,
                      mode_metrics, precision_recall, sample_quality)
from .models import (balanced_labels, build_models, is_conditional, is_infogan, model_spec, sample_codes,
                     sample_labels)
from .objectives import get_objective

# Everything a run writes; --overwrite removes exactly these (never other files in the folder).
OUTPUT_FILES = ("config.toml", CHECKPOINT_NAME, "metrics.jsonl", "samples.png", "samples.npy", "training.png",
                "summary.json", "codes.png", "translations.png")
OUTPUT_DIRS = ("samples",)

# The sample-quality metrics (fd, precision, recall): at most this many generated samples against as many
# real ones, k-NN manifolds with k = QUALITY_K.
QUALITY_SAMPLES, QUALITY_K = 1000, 3

_LABELLED = ("minimax", "nonsaturating", "least_squares")


def seeded_choice(points: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` rows of `points` drawn without replacement by their own generator (the global RNG, and so
    the training, is untouched): the real side of the sample-quality metrics."""
    idx = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))[:count]
    return points[idx]


def labels_kw(obj, real_label: float) -> dict:
    """The real-label keyword of the losses that take one (label smoothing)."""
    return {"real_label": real_label} if obj.loss in _LABELLED else {}


def _fits_classifier(ds) -> bool:
    """Whether the class metrics' linear classifier can be fitted to a labelled data set: images, every
    class present with at least two examples (its shared covariance needs them)."""
    if not ds.is_image or ds.n_classes < 2:
        return False
    counts = torch.bincount(ds.labels, minlength=ds.n_classes)
    return bool((counts >= 2).all())


def orthogonal_regularization_(params, beta: float) -> None:
    # one name here, so that a test can record the calls
    from ..penalty import orthogonal_regularization_ as ortho_
    ortho_(params, beta)


def ortho_parameters(G: torch.nn.Module) -> list:
    """G's weights that orthogonal regularization acts on: every parameter of 2 or more dimensions
    except the shared class embedding (BigGAN-PyTorch leaves G.shared out of it)."""
    shared = getattr(G, "shared", None)
    skip = {id(p) for p in shared.parameters()} if isinstance(shared, torch.nn.Module) else set()
    return [p for p in G.parameters() if p.dim() >= 2 and id(p) not in skip]


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the run stopped and the last good checkpoint was kept."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class OutputDirError(RuntimeError):
    """The output directory exists and neither resume nor overwrite was asked for (or resume has
    nothing to resume)."""


def global_rng_state() -> dict:
    """The process-wide random states a checkpoint keeps (torch, Python, NumPy, and CUDA's once
    initialised); each trainer adds its own generators' states beside them."""
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_global_rng_state(rng: dict) -> None:
    """The inverse of global_rng_state (CUDA's only where a GPU is here)."""
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("ganfast.train: device 'cuda' asked for but torch sees no CUDA GPU")
    return torch.device(name)


def _merge_resume(given: TrainConfig, saved: dict, out: Path, explicit: Optional[set] = None) -> TrainConfig:
    """The saved run's configuration, with the given values of the fields a resumed run may change.
    A field that defines the model or the training (objective, lr, ...) set to something other than
    its default and other than the saved value is an error, not a silent change."""
    default = TrainConfig()
    base = TrainConfig.from_dict({k: (tuple(v) if k == "betas" and v is not None else v)
                                  for k, v in saved.items()}, where=f"{out}/config")
    changes, conflicts = {}, []
    for name in TrainConfig.field_names():
        value = getattr(given, name)
        if name in ("out", "resume", "overwrite", "progress"):
            changes[name] = value
        elif name in RESUMABLE_CHANGES:
            # given explicitly (named in `explicit`, or not the default): the saved run's value otherwise
            if (explicit is not None and name in explicit) or value != getattr(default, name):
                changes[name] = value
        elif value != getattr(default, name) and value != getattr(base, name):
            conflicts.append(f"{name}={value!r} (the run has {getattr(base, name)!r})")
    if conflicts:
        raise ValueError(f"ganfast.train: cannot resume {out} with a different configuration: {'; '.join(conflicts)}. "
                         f"Resuming continues the saved run; only {', '.join(RESUMABLE_CHANGES)} may change")
    return base.replace(**changes)


class Trainer:
    def __new__(cls, config: TrainConfig = None, explicit: Optional[set] = None):
        # one entry point for every model: a CycleGAN configuration gets CycleGAN's loop
        if cls is Trainer and getattr(config, "model", None) == "cyclegan":
            from .cyclegan import CycleGANTrainer
            cls = CycleGANTrainer
        return super().__new__(cls)

    def __init__(self, config: TrainConfig, explicit: Optional[set] = None) -> None:
        """explicit: the names of the fields the user set (the CLI passes its flags), so that resuming
        with e.g. --steps equal to the default still applies it; without it, a field counts as set
        when it differs from the default."""
        if not isinstance(config, TrainConfig):
            raise TypeError(f"ganfast.train.Trainer: expected a TrainConfig; got {type(config).__name__}")
        config.validate()
        self.config = config
        self.explicit = set(explicit) if explicit is not None else None
        self.out = Path(config.out)
        self.world = World()  # one process until fit() finds torchrun's environment

    # ---- the output directory ---------------------------------------------------------------

    def _prepare_out(self) -> Optional[dict]:
        """Create / check the output directory; the checkpoint to resume from, if any."""
        cfg, out = self.config, self.out
        if not self.world.is_main:
            # rank 0 owns the directory; the others only read the checkpoint they resume from
            return load_checkpoint(out / CHECKPOINT_NAME) if cfg.resume else None
        if out.exists() and not out.is_dir():
            raise OutputDirError(f"ganfast.train: --out {out} exists and is not a directory")
        ckpt_path = out / CHECKPOINT_NAME
        if cfg.resume:
            if not ckpt_path.is_file():
                raise OutputDirError(f"ganfast.train: nothing to resume in {out} (no {CHECKPOINT_NAME}); "
                                     f"start a new run without --resume")
            return load_checkpoint(ckpt_path)
        if out.is_dir() and any(out.iterdir()):
            if not cfg.overwrite:
                raise OutputDirError(f"ganfast.train: output directory {out} already exists and is not empty; "
                                     f"pass --resume to continue its run, --overwrite to replace it, or "
                                     f"choose another --out")
            for name in OUTPUT_FILES:
                (out / name).unlink(missing_ok=True)
            for name in OUTPUT_DIRS:
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
        out.mkdir(parents=True, exist_ok=True)
        return None

    # ---- the run ----------------------------------------------------------------------------

    def fit(self, until: Optional[int] = None) -> dict:
        """Train to config.steps (or stop after step `until`, checkpointed, as if interrupted there)
        and return the summary (also written to summary.json)."""
        threads = torch.get_num_threads()
        # torchrun's processes join their group here (a one-process world otherwise)
        self.world = World.from_environment(self.config.device, self.config.dist_timeout)
        try:
            with _backend.use_backend(self.config.backend):
                return self._fit(until)
        finally:
            torch.set_num_threads(threads)  # _fit sets the run's own (cfg.threads)
            unwrap_all(self)  # the DDP wrappers go before their process group
            self.world.close()

    def _setup(self, ckpt: Optional[dict]) -> None:
        given = self.config
        if ckpt is not None:
            given = _merge_resume(given, ckpt["config"], self.out, self.explicit)
            if given.model == "cyclegan" and type(self) is Trainer:
                # resuming a CycleGAN run without --model: the saved configuration says which loop runs
                from .cyclegan import CycleGANTrainer
                self.__class__ = CycleGANTrainer
                return self._setup(ckpt)
        # the data first: whether an npy: file holds 2-D points or images decides the defaults
        self.dataset = load_dataset(given.data, given.image_size, given.channels)
        cfg = given.resolve(points=not self.dataset.is_image)
        self.cfg = cfg
        self.objective = get_objective(cfg.objective)
        world = self.world
        self.device = world.device(_resolve_device(cfg.device))  # one GPU per process
        world.check_batch(cfg.batch_size)
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("ganfast.train: amp 'fp16' needs a CUDA device; use 'bf16' on CPU")

        # every random stream starts from the seed (a resumed run overwrites them below)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        self.G, self.D = build_models(cfg, self.dataset)
        self.G.to(self.device)
        self.D.to(self.device)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False).eval()
        self._synchronise_batchnorm()
        self.info = is_infogan(self.G)  # InfoGAN: codes in G's input, Q's mutual-information term
        self.cond = is_conditional(self.G)  # SAGAN / BigGAN: G(z, y), D(x, y)
        self._ortho_params = ortho_parameters(self.G) if self.cond and cfg.ortho_reg else []
        self.opt_d = self._optimizer(self.D, cfg.lr_d)
        self.opt_g = self._optimizer(self.G, cfg.lr_g)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed + 1)  # z and instance noise
        self.sampler = DataSampler(self.dataset, cfg.batch_size, cfg.seed + 2, self.device,
                                   shard=world.shard(cfg.batch_size))
        fp16 = cfg.amp == "fp16"
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=fp16)
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=fp16)
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
        self.classifier = None
        if self.dataset.labels is not None and _fits_classifier(self.dataset):
            self.classifier = DigitClassifier(self.dataset.points, self.dataset.labels)
        self.step = 0
        self.rows: list[dict] = []
        if ckpt is not None:
            self._restore(ckpt)
        # what the training steps call: DistributedDataParallel wrappers across processes (G and D
        # themselves in one), built after the restore so every rank starts from the same weights
        self.G_train, self.D_train = wrap(self.G, world, self.device), wrap(self.D, world, self.device)

    def _synchronise_batchnorm(self) -> None:
        """Across processes (unless sync_bn is False): the fused BatchNorm of G and D computes the global
        batch's statistics (ganfast.nn.convert_sync_batchnorm), as one process would."""
        if not self.world.distributed or self.cfg.sync_bn is False:
            return
        from ..nn import convert_sync_batchnorm
        for m in (self.G, self.D):
            convert_sync_batchnorm(m)

    def _train_seconds(self) -> float:
        """Training seconds of the run so far, over every resume (what max_minutes budgets)."""
        return self._trained_before + (time.perf_counter() - self._t0)

    def _optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "rmsprop":
            return torch.optim.RMSprop(model.parameters(), lr=lr)
        return torch.optim.Adam(model.parameters(), lr=lr, betas=cfg.betas)

    def _fit(self, until: Optional[int]) -> dict:
        t_start = time.perf_counter()
        ckpt = self._prepare_out()
        self._setup(ckpt)
        cfg, out = self.cfg, self.out
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        elif not self.dataset.is_image:
            torch.set_num_threads(1)
        main = self.world.is_main  # rank 0 writes, logs and evaluates; the others train
        if main:
            write_text_atomic(cfg.to_toml(), out / "config.toml")
            (out / "samples").mkdir(exist_ok=True)
        last = cfg.steps if until is None else max(self.step, min(until, cfg.steps))
        start_step, t0 = self.step, time.perf_counter()
        self._t0 = t0
        self._trained_before = float((ckpt or {}).get("train_seconds", 0.0))  # before this resume
        budget = cfg.max_minutes * 60.0 if cfg.max_minutes else None
        self.stopped_by_budget = False
        self._pending: list[torch.Tensor] = []

        bar = None
        if cfg.progress and main:
            from tqdm.auto import tqdm
            # redrawn a few times a second on a terminal; in a log file, a line every 30 s
            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"{cfg.objective} on {self.dataset.name}",
                       unit="step", dynamic_ncols=True, file=sys.stderr,
                       mininterval=0.25 if sys.stderr.isatty() else 30.0)
        try:
            while self.step < last:
                self._train_step()
                self.step += 1
                s = self.step
                if budget is not None and s < last and self.world.any(self._train_seconds() >= budget):
                    # the wall-clock budget is spent: this step ends the run, as the last one would
                    last, self.stopped_by_budget = s, True
                end = s == cfg.steps or self.stopped_by_budget
                at_ckpt = s % cfg.ckpt_every == 0 or s == last
                row = None
                if s % cfg.log_every == 0 or at_ckpt or s % cfg.eval_every == 0:
                    row = self._flush()
                if not main:
                    continue
                if s % cfg.eval_every == 0 or end:
                    self._add_eval(row)
                if row is not None:
                    self._append_row(row)
                    if bar is not None:
                        bar.set_postfix_str(self._postfix(row), refresh=False)
                if s % cfg.sample_every == 0 or end:
                    self._save_samples(out / "samples" / f"step_{s:06d}.png")
                if at_ckpt:
                    self._save_checkpoint()
                if bar is not None:
                    bar.update(1)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            print(f"\nganfast train: interrupted at step {self.step}; the last checkpoint is kept in "
                  f"{out / CHECKPOINT_NAME} (continue with --resume)", file=sys.stderr)
            raise
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - t0
        # every rank's throughput, summed: the run's
        samples_per_s = self.world.total((self.step - start_step) * self._local_batch() / max(elapsed, 1e-9))
        summary = self._summary(start_step, elapsed)
        summary["world_size"] = self.world.size
        summary["samples_per_second"] = round(samples_per_s, 1)
        if not main:
            return summary
        self._save_final()
        plots.plot_training(self.rows, out / "training.png", self.objective.loss)
        summary["seconds_total"] = round(time.perf_counter() - t_start, 2)  # with data, plots, checkpoints
        write_text_atomic(json.dumps(summary, indent=2) + "\n", out / "summary.json")
        return summary

    def _local_batch(self) -> int:
        """The examples this rank trains on per D step (its slice of the global batch)."""
        return self.cfg.batch_size // self.world.size

    # ---- one iteration ----------------------------------------------------------------------

    def _latent(self, n: int) -> torch.Tensor:
        if self.cfg.latent == "uniform":
            return torch.rand(n, self.cfg.z_dim, generator=self.gen, device=self.device) * 2 - 1
        return torch.randn(n, self.cfg.z_dim, generator=self.gen, device=self.device)

    def _noisy(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """x (this rank's slice of a global batch) plus instance noise drawn for the whole global batch."""
        if sigma <= 0:
            return x
        shape = (x.shape[0] * self.world.size,) + tuple(x.shape[1:])
        return x + sigma * self.world.local(torch.randn(shape, generator=self.gen, device=x.device, dtype=x.dtype))

    def _interpolation_eps(self) -> Optional[torch.Tensor]:
        """The gradient penalty's eps for this rank's samples: drawn for the global batch from the global
        RNG, as ganfast.penalty.interpolate draws it in one process, and sliced."""
        if self.cfg.gp_weight <= 0:
            return None
        return self.world.local(torch.rand(self.cfg.batch_size, device=self.device))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _train_step(self) -> None:
        cfg, obj = self.cfg, self.objective
        t = self.step
        # linear decay to 0 over the second half sharpens the modes the first half found
        factor = min(1.0, 2.0 * (cfg.steps - t) / cfg.steps) if cfg.lr_decay else 1.0
        for opt, lr in ((self.opt_d, cfg.lr_d), (self.opt_g, cfg.lr_g)):
            for group in opt.param_groups:
                group["lr"] = lr * factor
        sigma = cfg.instance_noise * max(0.0, 1.0 - t / cfg.noise_anneal)
        real_label = 1.0 - cfg.label_smoothing
        B = cfg.batch_size  # the global batch: every draw is for all of it, each rank keeps its slice
        local = self.world.local

        # k discriminator steps: fresh real batch, fresh z; D descends its loss
        self.D.requires_grad_(True)
        for k in range(cfg.d_steps):
            if self.cond:
                loss_d, loss_adv, pen, d_real, d_fake = self._conditional_d_loss(k, sigma, labels_kw(obj, real_label))
                self._d_update(loss_d)
                continue
            real = self.sampler.next()
            with torch.no_grad(), self._autocast():
                z, codes = local(self._latent(B)), tuple(local(c) for c in self._codes(B))
                fake = self.G(z, *codes) if self.info else self.G(z)
            fake = fake.float() if fake.dtype != real.dtype else fake
            real_in, fake_in = self._noisy(real, sigma), self._noisy(fake, sigma)
            d_iter = t * cfg.d_steps + k
            # lazy R1 (StyleGAN2): gamma/2 E||grad D(x)||^2, every r1_every steps, scaled up by it
            r1_due = cfg.r1_gamma > 0 and d_iter % cfg.r1_every == 0
            labels = {"real_label": real_label} if obj.loss in _LABELLED else {}
            if self.info:
                # InfoGAN: D's trunk sees the fakes once for D's logits and Q's predictions of the
                # codes they were drawn with; Q (part of D) descends the mutual-information term
                with self._autocast():
                    d_real = self.D_train(real_in).logits
                    q = self.D_train(fake_in)
                    d_fake = q.logits
                    loss_adv = losses.discriminator_loss(d_real, d_fake, obj.loss, **labels)
                    loss_info_d = self._info_loss(q, codes)
                    loss_d, pen = loss_adv + loss_info_d, None
            else:
                with self._autocast():
                    # ganfast.steps: real and fake through D in one pass when D has no BatchNorm, the
                    # real pass shared with R1, the penalties' double backward lean
                    out = steps.discriminator_step_loss(
                        self.D_train, real_in, fake_in, obj.loss, gp_weight=cfg.gp_weight,
                        r1_weight=cfg.r1_gamma / 2 * cfg.r1_every if r1_due else 0.0,
                        eps=self._interpolation_eps(), **labels)
                loss_d, loss_adv, pen, d_real, d_fake = out.total, out.adversarial, out.penalty, \
                    out.real_logits, out.fake_logits
            self._d_update(loss_d)

        # one generator step with fresh z (D's weights need no gradient here, and D itself, not its
        # DistributedDataParallel wrapper, runs: nothing of D's is all-reduced)
        self.D.requires_grad_(False)
        loss_info = None
        with self._autocast():
            if self.info:
                # G also ascends the mutual information: its codes must be recoverable by Q
                z, codes = local(self._latent(B)), tuple(local(c) for c in self._codes(B))
                q = self.D(self._noisy(self.G_train(z, *codes), sigma))
                loss_info = self._info_loss(q, codes)
                loss_g = losses.generator_loss(q.logits, obj.loss) + loss_info
            elif self.cond:
                # fresh z and fresh classes, uniform over the classes
                z = local(self._latent(B))
                y = local(sample_labels(B, self.G.n_classes, self.gen, self.device))
                g_fake = self.D(self._noisy(self.G_train(z, y), sigma), y)
                loss_g = losses.generator_loss(g_fake, obj.loss)
            else:
                g_fake = self.D(self._noisy(self.G_train(local(self._latent(B))), sigma))
                loss_g = losses.generator_loss(g_fake, obj.loss)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss_g).backward()
        if self._ortho_params:
            # BigGAN's orthogonal regularization: its exact gradient added to G's (unscaled) gradients
            self.scaler_g.unscale_(self.opt_g)
            orthogonal_regularization_(self._ortho_params, cfg.ortho_reg)
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.D.requires_grad_(True)
        self._update_ema(t)

        zero = loss_adv.new_zeros(()).float()
        self._pending.append(torch.stack([
            loss_adv.detach().float(), loss_g.detach().float(), d_real.detach().float().mean(),
            d_fake.detach().float().mean(), (pen.detach().float() if pen is not None else zero),
            (loss_info.detach().float() if loss_info is not None else zero)]))

    def _d_update(self, loss_d: torch.Tensor) -> None:
        """One optimizer step of D on loss_d (and WGAN's weight clipping)."""
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        if self.cfg.clip > 0:
            with torch.no_grad():
                for p in self.D.parameters():
                    p.clamp_(-self.cfg.clip, self.cfg.clip)

    def _conditional_d_loss(self, k: int, sigma: float, labels: dict) -> tuple:
        """SAGAN / BigGAN's D loss: a real batch with its labels, fakes of fresh z and classes drawn
        uniformly; real and fake through D in one pass (as BigGAN-PyTorch: D has no batch-coupled layer,
        and spectral norm's power iteration then runs once per D step). Penalties are taken at the real
        labels. (total, adversarial, penalty, real logits, fake logits)."""
        cfg, B, local = self.cfg, self.cfg.batch_size, self.world.local
        real, y_real = self.sampler.next_labelled()
        with torch.no_grad(), self._autocast():
            z = local(self._latent(B))
            y_fake = local(sample_labels(B, self.G.n_classes, self.gen, self.device))
            fake = self.G(z, y_fake)
        fake = fake.float() if fake.dtype != real.dtype else fake
        real_in, fake_in = self._noisy(real, sigma), self._noisy(fake, sigma)
        d_iter = self.step * cfg.d_steps + k
        r1_due = cfg.r1_gamma > 0 and d_iter % cfg.r1_every == 0
        with self._autocast():
            logits = self.D_train(torch.cat([real_in, fake_in]), torch.cat([y_real, y_fake]))
            d_real, d_fake = logits.split([real_in.shape[0], fake_in.shape[0]])
            loss_adv = losses.discriminator_loss(d_real, d_fake, self.objective.loss, **labels)
            pen = None
            if cfg.gp_weight > 0:
                pen = penalty.gradient_penalty(lambda x: self.D_train(x, y_real), real_in, fake_in, kind="wgan-gp",
                                               weight=cfg.gp_weight, eps=self._interpolation_eps(), lean=True)
            if r1_due:
                r1 = penalty.gradient_penalty(lambda x: self.D_train(x, y_real), real_in, None, kind="r1",
                                              weight=cfg.r1_gamma / 2 * cfg.r1_every, lean=True)
                pen = r1 if pen is None else pen + r1
        loss_d = loss_adv if pen is None else loss_adv + pen
        return loss_d, loss_adv, pen, d_real, d_fake

    def _codes(self, n: int) -> tuple:
        """InfoGAN's (cat, cont) codes for n samples from the training stream; () for other models."""
        if not self.info:
            return ()
        return sample_codes(self.G, n, self.gen, self.device)

    def _info_loss(self, q, codes) -> torch.Tensor:
        """The mutual-information lower bound's negative (up to the codes' constant entropy), weighted:
        cross-entropy of Q's categorical logits and the Gaussian negative log-likelihood of the
        continuous codes, in one ganfast.losses.info_loss kernel."""
        cat, cont = codes
        cfg = self.cfg
        return losses.info_loss(q.cat_logits, cat, q.cont_mean, cont, q.cont_logstd,
                                cat_weight=cfg.info_weight, cont_weight=cfg.info_cont_weight)

    @torch.no_grad()
    def _update_ema(self, t: int) -> None:
        # warm-up (as TensorFlow's ExponentialMovingAverage with num_updates): early on the average
        # follows G closely instead of remembering the random initialisation
        beta = min(self.cfg.ema, (1 + t) / (10 + t))
        ema_p = list(self.G_ema.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in self.G.parameters()], 1.0 - beta)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    # ---- logging ----------------------------------------------------------------------------

    def _flush(self) -> dict:
        """One metrics row: the means over the steps since the last row. A NaN or inf loss in
        them stops the run, naming its step (nothing after the last checkpoint is saved)."""
        # the mean over ranks (equal slices: the global batch's); one host sync per row
        values = self.world.mean(torch.stack(self._pending)).cpu().double()
        n = values.shape[0]
        first = self.step - n + 1
        bad = ~torch.isfinite(values[:, :2]).all(1)
        if bad.any():
            step = first + int(bad.nonzero()[0, 0])
            which = "D" if not math.isfinite(values[step - first, 0]) else "G"
            raise NonFiniteLossError(
                f"ganfast train: the {which} loss is {values[step - first, 0 if which == 'D' else 1].item()} at "
                f"step {step}; the run stopped. The last good checkpoint is kept in {self.out / CHECKPOINT_NAME} "
                f"(try a lower --lr, another --objective, or --amp none)", step)
        self._pending = []
        m = values.mean(0).tolist()
        row = {"step": self.step, "loss_d": m[0], "loss_g": m[1], "d_real": m[2], "d_fake": m[3]}
        if self.cfg.gp_weight > 0 or self.cfg.r1_gamma > 0:
            row["penalty"] = m[4]
        if self.info:
            row["info"] = m[5]  # G's weighted mutual-information term (its loss_g includes it)
        if self.objective.loss in ("minimax", "nonsaturating"):
            # max_D V = -log 4 + 2 JSD, and L_D = -V
            row["jsd"] = (math.log(4) - m[0]) / 2
        if self.objective.loss == "wasserstein":
            row["wasserstein"] = m[2] - m[3]
        return row

    def _postfix(self, row: dict) -> str:
        parts = [f"D {row['loss_d']:.3f}", f"G {row['loss_g']:.3f}"]
        if "jsd" in row:
            parts.append(f"JSD {row['jsd']:.3f}")
        if "wasserstein" in row:
            parts.append(f"W {row['wasserstein']:.3f}")
        e = row.get("eval")
        if e and "high_quality" in e:
            parts.append(f"modes {e['modes']}/{e['n_modes']} hq {100 * e['high_quality']:.1f}%")
        elif e and "classes" in e:
            parts.append(f"classes {e['classes']}/{e['n_classes']} KL {e['kl_uniform']:.3f}")
            if "class_agreement" in e:
                parts.append(f"class agreement {100 * e['class_agreement']:.1f}%")
        if e and e.get("fd") is not None:
            parts.append(f"FD {e['fd']:.2f}")
        return " ".join(parts)

    def _append_row(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def _write_rows(self) -> None:
        text = "".join(json.dumps(r) + "\n" for r in self.rows)
        write_text_atomic(text, self.out / "metrics.jsonl")

    # ---- evaluation and samples -------------------------------------------------------------

    def _eval_latent(self, n: int) -> torch.Tensor:
        # the same z every time (a generator of its own: evaluating never moves the training streams)
        g = torch.Generator().manual_seed(self.cfg.seed + 7919)
        if self.cfg.latent == "uniform":
            z = torch.rand(n, self.cfg.z_dim, generator=g) * 2 - 1
        else:
            z = torch.randn(n, self.cfg.z_dim, generator=g)
        return z.to(self.device)

    def _eval_codes(self, G: torch.nn.Module, n: int) -> tuple:
        """The same InfoGAN codes every evaluation: the categorical code balanced (code i % n_cat for
        sample i), the continuous codes U(-1, 1) from a generator of their own; a conditional model's
        classes balanced (class i % n_classes for sample i). () for other models."""
        if self.cond:
            return (balanced_labels(n, G.n_classes).to(self.device),)
        if not self.info:
            return ()
        g = torch.Generator().manual_seed(self.cfg.seed + 6007)
        _, cont = sample_codes(G, n, g, "cpu")
        cat = torch.arange(n) % G.n_cat if G.n_cat else None
        return tuple(None if t is None else t.to(self.device) for t in (cat, cont))

    @torch.no_grad()
    def _generate(self, G: torch.nn.Module, n: int, batch: int = 500, codes: Optional[tuple] = None) -> torch.Tensor:
        was_training = G.training
        G.eval()
        z = self._eval_latent(n)
        codes = self._eval_codes(G, n) if codes is None else codes
        parts = [G(z[i:i + batch], *[None if c is None else c[i:i + batch] for c in codes]).float()
                 for i in range(0, n, batch)]
        out = torch.cat(parts) if n else z.new_zeros(0)
        G.train(was_training)
        return out

    def _add_eval(self, row: dict) -> None:
        row["eval"] = self._evaluate(self.G_ema)
        row["eval_raw"] = self._evaluate(self.G)

    def _save_final(self) -> None:
        """The pictures of the end of a run: samples.png, and InfoGAN's codes.png."""
        self._save_samples(self.out / "samples.png")
        if self.info:
            self._save_code_grid(self.out / "codes.png")

    def _evaluate(self, G: torch.nn.Module) -> dict:
        """The metrics of one evaluation on cfg.eval_samples samples: 2-D mixtures, mode_metrics (modes,
        high quality, recall, mode_kl); other 2-D points, precision and recall on the raw points; images,
        the class metrics (labelled data) and the sample quality (fd, precision, recall) of the first
        min(QUALITY_SAMPLES, eval_samples, data size) samples against as many real images."""
        ds = self.dataset
        n = self.cfg.eval_samples
        if ds.modes is not None:
            return mode_metrics(self._generate(G, n), ds.modes, ds.mode_std)
        if not ds.is_image:
            real = self._quality_reference(n)
            fake = self._generate(G, real.shape[0])
            return precision_recall(real, fake, QUALITY_K, self._quality_radii) if real.shape[0] > QUALITY_K else {}
        codes = self._eval_codes(G, n)
        images = self._generate(G, n, codes=codes)
        m = {}
        if self.classifier is not None:
            probs = self.classifier.predict_proba(images)
            m = class_metrics(probs, ds.n_classes)
            if self.info and G.n_cat:
                # how well the categorical code alone picks the digit (the paper's 5% error on MNIST)
                m.update(code_agreement(codes[0].cpu().numpy(), probs.argmax(1), G.n_cat, ds.n_classes))
            if self.cond:
                # how often the classifier sees the class G was asked for: mean and per class
                m.update(class_agreement(codes[0].cpu().numpy(), probs.argmax(1), ds.n_classes))
        real_feats = self._quality_reference(n)
        if real_feats.shape[0] > QUALITY_K:
            m.update(sample_quality(real_feats, images[: real_feats.shape[0]], self._feature_network(), QUALITY_K,
                                    self._quality_radii))
        return m

    def _feature_network(self):
        """The sample-quality metrics' feature network for this run's data, made on first use."""
        if getattr(self, "_feature_net", None) is None:
            self._feature_net = feature_network(self.cfg.data)
        return self._feature_net

    def _quality_reference(self, n: int) -> torch.Tensor:
        """The real side of the sample-quality metrics, computed once per run (and eval_samples): a
        seeded choice of min(QUALITY_SAMPLES, n, data size) examples without replacement, as features of
        the feature network for images, as raw points for 2-D data."""
        ds = self.dataset
        count = min(QUALITY_SAMPLES, n, len(ds))
        cached = getattr(self, "_quality_cache", None)
        if cached is not None and cached[0] == count:
            return cached[1]
        real = seeded_choice(ds.points, count, self.cfg.seed + 4111)
        if ds.is_image:
            real = self._feature_network()(real)
        else:
            real = real.double()
        self._quality_cache = (count, real)
        self._quality_radii = knn_radii(real, QUALITY_K) if count > QUALITY_K else None
        return real

    @torch.no_grad()
    def _save_code_grid(self, path: Path, columns: int = 10) -> None:
        """InfoGAN's codes.png: one row per categorical value, the columns sweeping the first continuous
        code from -2 to 2 (the others at 0), the same z everywhere; without continuous codes, the
        columns are different z."""
        G = self.G_ema
        rows = max(1, G.n_cat)
        g = torch.Generator().manual_seed(self.cfg.seed + 104729)
        if G.n_cont:
            z = self._eval_latent(1).expand(rows * columns, -1)
        else:
            z = torch.randn(columns, self.cfg.z_dim, generator=g).to(self.device).repeat(rows, 1)
        cat = torch.arange(rows).repeat_interleave(columns).to(self.device) if G.n_cat else None
        cont = None
        if G.n_cont:
            cont = torch.zeros(rows * columns, G.n_cont, device=self.device)
            cont[:, 0] = torch.linspace(-2, 2, columns, device=self.device).repeat(rows)
        was_training = G.training
        G.eval()
        images = G(z, cat, cont).float()
        G.train(was_training)
        plots.save_image_grid(images, path, nrow=columns)

    def _save_samples(self, path: Path) -> None:
        ds = self.dataset
        if self.cond:
            # one row per class, the same z down each column
            k = self.G.n_classes
            cols = max(4, min(10, 64 // k)) if k <= 16 else 4
            y = torch.arange(k).repeat_interleave(cols).to(self.device)
            z = self._eval_latent(cols).repeat(k, 1)
            with torch.no_grad():
                was_training = self.G_ema.training
                self.G_ema.eval()
                samples = self.G_ema(z, y).float()
                self.G_ema.train(was_training)
            plots.save_image_grid(samples, path, nrow=cols)
            return
        n = 64 if ds.is_image else self.cfg.eval_samples
        samples = self._generate(self.G_ema, n)
        real = None if ds.is_image else ds.sample(n, torch.Generator().manual_seed(self.cfg.seed + 104729))
        plots.save_samples(samples, path, ds, title=f"{self.cfg.objective} on {ds.name}, step {self.step}",
                           real=real)

    # ---- checkpoints ------------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        rng = {**global_rng_state(), "gen": self.gen.get_state(), "data": self.sampler.state_dict()}
        state = {
            "format": "ganfast.train/1",
            "step": self.step,
            "config": self.cfg.to_dict(),
            "model": model_spec(self.cfg, self.dataset, self.G),
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "rng": rng,
            "rows": len(self.rows),
            "train_seconds": self._train_seconds(),
            "world_size": self.world.size,  # informative: a run resumes on any world size (same global batch)
        }
        save_atomic(state, self.out / CHECKPOINT_NAME)

    def _restore(self, ckpt: dict) -> None:
        path = self.out / CHECKPOINT_NAME
        for what, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema), ("opt_g", self.opt_g),
                             ("opt_d", self.opt_d), ("scaler_g", self.scaler_g), ("scaler_d", self.scaler_d)):
            load_state(module, ckpt[what], path, what)
        rng = ckpt["rng"]
        try:
            restore_global_rng_state(rng)
            self.gen.set_state(rng["gen"])
            self.sampler.load_state_dict(rng["data"])
            self.step = int(ckpt["step"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(path, f"its random-number states or step cannot be restored ({first_line(e)})") from None
        self._restore_rows(ckpt)

    def _restore_rows(self, ckpt: dict) -> None:
        # metrics.jsonl may hold rows written after the checkpoint (an interrupted run): keep the
        # rows the checkpoint had, so the resumed file matches an uninterrupted run's
        path = self.out / "metrics.jsonl"
        rows = []
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    rows.append(json.loads(line))
        self.rows = [r for r in rows if r["step"] <= self.step][: ckpt.get("rows", len(rows))]
        self._write_rows()

    # ---- the end ----------------------------------------------------------------------------

    def _summary(self, start_step: int, elapsed: float) -> dict:
        cfg = self.cfg
        last = next((r for r in reversed(self.rows) if "loss_d" in r), {})
        ev = next((r for r in reversed(self.rows) if "eval" in r), None)
        summary = {
            "data": cfg.data, "objective": cfg.objective, "steps": self.step, "seed": cfg.seed,
            "trained_steps_this_run": self.step - start_step, "seconds": round(elapsed, 2),
            "device": str(self.device), "backend": _backend.get_backend(),
            "loss_d": last.get("loss_d"), "loss_g": last.get("loss_g"),
            "out": str(self.out),
        }
        summary["train_seconds_total"] = round(self._train_seconds(), 2)  # over every resume
        if cfg.max_minutes:
            summary["max_minutes"] = cfg.max_minutes
        if getattr(self, "stopped_by_budget", False):
            summary["stopped"] = "budget"
            summary["steps_requested"] = cfg.steps
        if ev is not None:
            summary["eval_step"] = ev["step"]
            summary["metrics_ema"] = ev["eval"]
            summary["metrics_raw"] = ev.get("eval_raw")
        return summary
