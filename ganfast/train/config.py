"""The training configuration: one dataclass that the CLI, a TOML file and Python code all fill.

Fields left as None take the objective's (or the data set's) default when the run starts
(`resolve()`), so `TrainConfig(objective="wgan-gp")` trains with WGAN-GP's usual Adam 1e-4,
betas (0, 0.9) and five D steps per G step.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from .objectives import OBJECTIVES, get_objective

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

DATASETS = ("ring8", "grid25", "digits", "digits-bold", "folder:PATH", "npy:PATH", "cycle:A,B")
# Generator steps of a run that does not say (--steps), per kind of data: each default run takes the
# time the README and `ganfast train --help` state, measured on a 2-core CPU with the default
# objective (nonsaturating; wgan and wgan-gp run 5 D steps per G step: about 6x as long on images).
DEFAULT_STEPS = {"ring8": 8000, "grid25": 8000, "points": 8000, "digits": 4000, "images": 4000}
# CycleGAN's defaults (--model cyclegan): steps, batch and widths, measured on the embedded digits
# pair (BENCHMARKS.md); the reference trains 256x256 photographs at batch 1 with 64 filters
DEFAULT_CYCLEGAN_STEPS, CYCLEGAN_BATCH, CYCLEGAN_WIDTH = 1000, 8, 32
# InfoGAN on digits: the code/class agreement peaks by about 2,000 steps (seed 0 at 4,000 steps: 78% at
# 800, 83% at 1,600, 82% at 4,000), so its default run is half the other image models'
DEFAULT_INFOGAN_STEPS = 2000
# SAGAN (Zhang et al. 2019) and BigGAN (Brock et al. 2019), class-conditional: the papers' optimizer
# settings (hinge loss, Adam with beta1 = 0, constant learning rates, BigGAN's 2 D steps) except G's
# rate; the widths (ch) and steps are sized for the embedded digits on a 2-core CPU (BENCHMARKS.md).
# G's rate: the papers' G 1e-4 (SAGAN) and 5e-5 (BigGAN, for batch 2,048) moved G too slowly for runs
# this short (seed 0: SAGAN 51% class agreement at 2,000 steps with G 1e-4 and the decay, BigGAN 12% at
# 1,200 with 5e-5); with G 2e-4 and constant rates BigGAN reached 97% and 99% at 1,400 steps (seeds 0, 1)
# and SAGAN 86% to 100% at 2,000, 96% at 3,000 (seed 0, the default run: 8.5 minutes on 2 quiet cores)
CONDITIONAL_MODELS = ("sagan", "biggan")
MODEL_DEFAULTS = {
    "sagan": dict(lr_d=4e-4, lr_g=2e-4, betas=(0.0, 0.9), d_steps=1, ortho_reg=0.0),
    # ortho_reg in ganfast's convention (the gradient 4 beta (W W^T (1 - I)) W): 5e-5 is BigGAN-PyTorch's
    # --G_ortho 1e-4 (its strength is twice our beta)
    "biggan": dict(lr_d=2e-4, lr_g=2e-4, betas=(0.0, 0.999), d_steps=2, ortho_reg=5e-5),
}
# Measured with one thread (CPU seconds per step at batch 32, ch 8: SAGAN 0.35, BigGAN 0.55 with its 2 D
# steps; ch 16 costs 2.6x): the papers' ch 64 at 32x32 keeps 256 channels at every resolution, some 10 s
# a step here. ch 8 and batch 32 fit a default run into 6 to 9 minutes of the 2 quiet cores.
DEFAULT_CONDITIONAL_STEPS = {"sagan": 3000, "biggan": 1400}
CONDITIONAL_WIDTH = 8                     # ch of G and D (--ngf / --ndf)
CONDITIONAL_BATCH = 32
DEFAULT_ATTN_RES = (16,)
BACKEND_CHOICES = ("auto", "cuda", "triton", "cpu", "reference")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
AMP_CHOICES = ("none", "bf16", "fp16")
# The image models: DCGAN (Radford et al.), InfoGAN (Chen et al.: latent codes, Q head, the
# mutual-information term) and CycleGAN (Zhu et al.: two generators and two PatchGAN discriminators
# between two image domains, cycle:A,B). 2-D data always trains the MLPs.
# SAGAN and BigGAN (--model sagan / biggan) are class-conditional: G(z, y), D(x, y).
MODELS = ("dcgan", "infogan", "cyclegan", "sagan", "biggan")
OPTIMIZERS = ("adam", "rmsprop")
LATENT_CHOICES = ("normal", "uniform")


@dataclass
class TrainConfig:
    # what to train
    data: str = "ring8"
    objective: Optional[str] = None       # None: nonsaturating; least_squares (LSGAN) for cyclegan
    steps: Optional[int] = None           # None: DEFAULT_STEPS of the data (8,000 2-D, 4,000 images)
    batch_size: Optional[int] = None      # None: 256 for 2-D data, 64 for images
    d_steps: Optional[int] = None         # D steps per G step; None: the objective's default
    lr: Optional[float] = None            # both optimizers unless lr_d / lr_g are given
    lr_d: Optional[float] = None
    lr_g: Optional[float] = None
    betas: Optional[tuple] = None         # Adam betas; None: the objective's default
    optimizer: Optional[str] = None       # adam or rmsprop; None: the objective's default
    lr_decay: Optional[bool] = None       # linear decay of both learning rates to 0 over the last half;
                                          # None: on, but off for InfoGAN (measured, BENCHMARKS.md)
    seed: int = 0
    # the models
    model: str = "dcgan"                  # images: dcgan, infogan or cyclegan (2-D data: the MLPs)
    z_dim: Optional[int] = None           # None: 8 for ring8 / .npy points, 2 for grid25, 128 for images, 62 infogan
    latent: str = "normal"                # z ~ N(0, I) or U(-1, 1)
    width: int = 128                      # MLP hidden width (2-D data)
    depth: int = 3                        # MLP hidden layers (2-D data)
    ngf: Optional[int] = None             # generator / discriminator widths (images); None: 64, but 32
    ndf: Optional[int] = None             # for cyclegan on 32x32 images (see resolve)
    image_size: int = 32                  # images are resized to this (32, 64 or 128)
    channels: Optional[int] = None        # 1 (grayscale) or 3 (RGB) for folder:/npy:; None: inferred
    # InfoGAN (model = "infogan"): the codes and the weights of the mutual-information terms
    cat_codes: int = 10                   # values of the categorical code (0: none)
    cont_codes: int = 2                   # continuous codes, U(-1, 1) (0: none)
    info_weight: float = 1.0              # lambda of the categorical term (the paper's 1)
    info_cont_weight: float = 0.1         # lambda of the continuous terms (the paper: smaller than 1)
    # CycleGAN (model = "cyclegan", data = "cycle:A,B"): the reference code's defaults
    cycle_weight: float = 10.0            # lambda of the cycle-consistency L1 (each direction)
    identity_weight: Optional[float] = None  # identity L1 weight, a fraction of cycle_weight (0: off);
                                          # None: the reference's 0.5, but 0 on digits <-> digits-bold
    pool_size: int = 50                   # history of generated images D sees (0: none)
    n_blocks: int = 6                     # residual blocks of the ResNet generators
    d_layers: int = 3                     # PatchGAN discriminator's strided layers (3: 70x70 patches)
    # SAGAN / BigGAN (model = "sagan" / "biggan"; widths: ngf / ndf are G's and D's ch)
    attn_res: Optional[tuple] = None      # resolutions with self-attention; None: (16,); () = none
    ortho_reg: Optional[float] = None     # beta of the orthogonal regularization of G's weights (ganfast's
                                          # convention, 4 beta (W W^T (1 - I)) W; BigGAN-PyTorch's strength
                                          # is 2 beta); None: 5e-5 for biggan, 0 (off) otherwise
    # objective options
    gp_weight: Optional[float] = None     # wgan-gp's lambda (default 10)
    clip: Optional[float] = None          # wgan's weight clipping (default 0.01)
    r1_gamma: Optional[float] = None      # R1: gamma (penalty gamma/2 E||grad D(x)||^2); 0 = off
    r1_every: int = 16                    # lazy R1: applied every N D steps, scaled by N
    label_smoothing: float = 0.0          # one-sided: real label 1 - s (minimax, nonsaturating, least_squares)
    instance_noise: Optional[float] = None  # sigma of noise on D's inputs at step 0 (None: 0.1 on ring8, else 0)...
    noise_anneal: Optional[int] = None    # ...annealed linearly to 0 by this step (None: steps // 2)
    ema: float = 0.999                    # EMA decay of G's weights (G_ema samples); 0 = off
    amp: str = "none"                     # autocast: none, bf16 (CPU or CUDA), fp16 (CUDA)
    # where and how
    backend: str = "auto"
    device: str = "auto"
    # torch's intra-op threads during the run; 0: 1 for 2-D data (its tiny MLPs run faster on one
    # thread here, and a run then gives the same numbers on any machine), torch's default for images
    threads: int = 0
    out: str = "runs/ganfast"
    resume: bool = False
    overwrite: bool = False
    log_every: int = 50                   # loss rows in metrics.jsonl and the progress bar
    eval_every: Optional[int] = None      # mode / class metrics; None: steps // 5
    sample_every: Optional[int] = None    # sample grids; None: eval_every
    ckpt_every: Optional[int] = None      # checkpoints; None: eval_every
    eval_samples: int = 2500             # per eval; fd / precision / recall on min(1000, this, data size)
    progress: bool = True
    # a wall-clock budget of training time (minutes, summed over resumes): the run stops at the first
    # step past it, evaluated and checkpointed as at its last step; summary.json says "stopped": "budget".
    # None: no limit (the run trains to `steps`)
    max_minutes: Optional[float] = None
    # several processes (torchrun, or ganfast train --nproc): batch_size is the global batch, split evenly
    # over them. sync_bn: the fused BatchNorm's statistics over the global batch (None: on when there
    # is more than one process); dist_timeout: minutes a collective waits for the other ranks
    sync_bn: Optional[bool] = None
    dist_timeout: float = 10.0
    _extra: dict = field(default_factory=dict, repr=False, compare=False)

    # ---- construction -----------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if not f.name.startswith("_")]

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> "TrainConfig":
        known = set(cls.field_names())
        unknown = sorted(k for k in values if k.replace("-", "_") not in known)
        if unknown:
            raise ValueError(f"ganfast.train: unknown key(s) in {where}: {', '.join(unknown)}; "
                             f"known keys: {', '.join(sorted(known))}")
        cfg = cls(**{k.replace("-", "_"): v for k, v in values.items()})
        cfg.validate()
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"ganfast.train: config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"ganfast.train: {path} is not valid TOML: {e}") from None
        # a [train] table or top-level keys
        if set(values) == {"train"} and isinstance(values["train"], dict):
            values = values["train"]
        return cls.from_dict(values, where=str(path))

    def replace(self, **changes) -> "TrainConfig":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for name in self.field_names():
            v = getattr(self, name)
            if isinstance(v, tuple):
                v = list(v)
            out[name] = v
        return out

    def to_toml(self) -> str:
        """TOML text of every field that has a value (None fields are left out: TOML has no null)."""
        lines = ["# ganfast train configuration (resolved: objective defaults filled in)"]
        for name, v in self.to_dict().items():
            if v is None:
                continue
            lines.append(f"{name} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"

    # ---- checks and defaults ----------------------------------------------------------------

    def validate(self) -> None:
        objective = self.objective or "nonsaturating"
        get_objective(objective)       # raises listing the choices
        kind = data_kind(self.data)    # raises listing the choices
        _choice("backend", self.backend, BACKEND_CHOICES)
        _choice("device", self.device, DEVICE_CHOICES)
        _choice("amp", self.amp, AMP_CHOICES)
        _choice("latent", self.latent, LATENT_CHOICES)
        _choice("model", self.model, MODELS)
        for name in ("cat_codes", "cont_codes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"ganfast.train: {name} must be an integer >= 0; got {v!r}")
        if self.model == "infogan":
            if self.cat_codes == 1:
                raise ValueError("ganfast.train: cat_codes must be 0 (no categorical code) or >= 2; got 1")
            if self.cat_codes == 0 and self.cont_codes == 0:
                raise ValueError("ganfast.train: infogan needs a code: cat_codes >= 2 or cont_codes >= 1")
            obj = get_objective(objective)
            if obj.gp_weight > 0 or obj.r1_gamma > 0 or (self.gp_weight or 0) > 0 or (self.r1_gamma or 0) > 0:
                raise ValueError(f"ganfast.train: infogan's discriminator has BatchNorm (the paper's), whose fused "
                                 f"backward is first order: no gradient penalty through it (objective "
                                 f"'{objective}', gp_weight, r1_gamma); choose nonsaturating, minimax, hinge, "
                                 f"least_squares or wgan")
        if (self.model == "cyclegan") != (kind == "cycle"):
            if kind == "cycle":
                raise ValueError(f"ganfast.train: data '{self.data}' is a pair of domains: train it with "
                                 f"model 'cyclegan' (--model cyclegan)")
            raise ValueError(f"ganfast.train: cyclegan translates between two image domains: data must be "
                             f"cycle:A,B (e.g. cycle:digits,digits-bold); got '{self.data}'")
        if self.model == "cyclegan":
            obj = get_objective(objective)
            if obj.gp_weight > 0 or obj.r1_gamma > 0 or (self.gp_weight or 0) > 0 or (self.r1_gamma or 0) > 0 \
                    or obj.d_steps != 1 or (self.d_steps or 1) != 1:
                raise ValueError(f"ganfast.train: cyclegan trains its two discriminators once per generator step "
                                 f"with no gradient penalty (objective '{objective}', d_steps, gp_weight, r1_gamma "
                                 f"given); choose least_squares (the reference's LSGAN), nonsaturating, minimax or "
                                 f"hinge")
        for name in ("cycle_weight", "identity_weight"):
            v = getattr(self, name)
            if name == "identity_weight" and v is None:
                continue
            if not (_is_number(v) and math.isfinite(v) and v >= 0):
                raise ValueError(f"ganfast.train: {name} must be a finite number >= 0; got {v!r}")
        if not isinstance(self.pool_size, int) or isinstance(self.pool_size, bool) or self.pool_size < 0:
            raise ValueError(f"ganfast.train: pool_size must be an integer >= 0 (0: no image pool); "
                             f"got {self.pool_size!r}")
        if not isinstance(self.n_blocks, int) or isinstance(self.n_blocks, bool) or self.n_blocks < 0:
            raise ValueError(f"ganfast.train: n_blocks must be an integer >= 0; got {self.n_blocks!r}")
        if self.ortho_reg is not None and not (_is_number(self.ortho_reg) and math.isfinite(self.ortho_reg)
                                                and self.ortho_reg >= 0):
            raise ValueError(f"ganfast.train: ortho_reg must be a finite number >= 0; got {self.ortho_reg!r}")
        if self.ortho_reg and self.model not in CONDITIONAL_MODELS:
            raise ValueError(f"ganfast.train: ortho_reg applies to the sagan and biggan generators; model "
                             f"'{self.model}' does not take it")
        if self.attn_res is not None:
            a = self.attn_res
            if isinstance(a, (int, str)) or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 4
                                                    and r & (r - 1) == 0 for r in a):
                raise ValueError(f"ganfast.train: attn_res must be a list of powers of two >= 4 (resolutions "
                                 f"inside the networks; [] = no attention); got {a!r}")
            self.attn_res = tuple(int(r) for r in a)
        if self.model in CONDITIONAL_MODELS and self.image_size not in (32, 64):
            raise ValueError(f"ganfast.train: {self.model} trains 32x32 or 64x64 images; got image_size "
                             f"{self.image_size}")
        if self.optimizer is not None:
            _choice("optimizer", self.optimizer, OPTIMIZERS)
        for name in ("log_every", "r1_every", "eval_samples", "width", "depth", "d_layers"):
            _positive_int(name, getattr(self, name))
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 0:
            raise ValueError(f"ganfast.train: threads must be an integer >= 0 (0: automatic); got {self.threads!r}")
        for name in ("steps", "batch_size", "d_steps", "z_dim", "eval_every", "sample_every", "ckpt_every",
                     "noise_anneal", "ngf", "ndf"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.batch_size is not None and self.batch_size < 2:
            raise ValueError(f"ganfast.train: batch_size must be >= 2; got {self.batch_size}")
        for name in ("lr", "lr_d", "lr_g", "gp_weight", "clip", "r1_gamma", "info_weight", "info_cont_weight"):
            v = getattr(self, name)
            if v is not None and not (_is_number(v) and math.isfinite(v) and v >= 0):
                raise ValueError(f"ganfast.train: {name} must be a finite number >= 0; got {v!r}")
        for name in ("lr", "lr_d", "lr_g"):
            v = getattr(self, name)
            if v is not None and v == 0:
                raise ValueError(f"ganfast.train: {name} must be > 0; got {v!r}")
        if not (_is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise ValueError(f"ganfast.train: label_smoothing must be in [0, 1); got {self.label_smoothing!r}")
        if self.label_smoothing > 0 and get_objective(objective).loss not in ("minimax", "nonsaturating",
                                                                                  "least_squares"):
            raise ValueError(f"ganfast.train: label_smoothing applies to minimax, nonsaturating, r1 and "
                             f"least_squares; objective '{objective}' has no labels")
        if self.instance_noise is not None and not (_is_number(self.instance_noise)
                                                    and math.isfinite(self.instance_noise) and self.instance_noise >= 0):
            raise ValueError(f"ganfast.train: instance_noise must be a finite number >= 0; got {self.instance_noise!r}")
        if not (_is_number(self.ema) and 0 <= self.ema < 1):
            raise ValueError(f"ganfast.train: ema must be in [0, 1); got {self.ema!r}")
        if self.betas is not None:
            b = tuple(self.betas)
            if len(b) != 2 or not all(_is_number(x) and 0 <= x < 1 for x in b):
                raise ValueError(f"ganfast.train: betas must be two numbers in [0, 1); got {self.betas!r}")
            self.betas = (float(b[0]), float(b[1]))
        if self.image_size not in (32, 64, 128):
            raise ValueError(f"ganfast.train: image_size must be one of 32, 64, 128; got {self.image_size!r}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"ganfast.train: channels must be 1 (grayscale) or 3 (RGB); got {self.channels!r}")
        if self.resume and self.overwrite:
            raise ValueError("ganfast.train: resume and overwrite exclude each other; choose one")
        if self.sync_bn is not None and not isinstance(self.sync_bn, bool):
            raise ValueError(f"ganfast.train: sync_bn must be true, false or unset (on with several processes); "
                             f"got {self.sync_bn!r}")
        if not (_is_number(self.dist_timeout) and math.isfinite(self.dist_timeout) and self.dist_timeout > 0):
            raise ValueError(f"ganfast.train: dist_timeout must be a finite number of minutes > 0; "
                             f"got {self.dist_timeout!r}")
        if self.max_minutes is not None and not (_is_number(self.max_minutes) and math.isfinite(self.max_minutes)
                                                 and self.max_minutes > 0):
            raise ValueError(f"ganfast.train: max_minutes must be a finite number > 0 (or unset: no limit); "
                             f"got {self.max_minutes!r}")

    def resolve(self, points: Optional[bool] = None) -> "TrainConfig":
        """A copy with every None default filled in from the objective and the data set. `points`:
        whether the data are 2-D points (the Trainer knows once it has loaded an npy: file; by
        default only ring8 and grid25 count as points)."""
        kind = data_kind(self.data)
        two_d = kind in ("ring8", "grid25") if points is None else bool(points)
        c = dataclasses.replace(self)
        cycle = c.model == "cyclegan"
        c.objective = c.objective or ("least_squares" if cycle else "nonsaturating")
        obj = get_objective(c.objective)
        cond = c.model in CONDITIONAL_MODELS
        if cond:
            # the papers' hinge loss; their optimizer settings below replace the objective's
            c.objective = self.objective or "hinge"
            obj = get_objective(c.objective)
        c.steps = c.steps or (DEFAULT_CONDITIONAL_STEPS[c.model] if cond else
                              DEFAULT_CYCLEGAN_STEPS if cycle else
                              DEFAULT_INFOGAN_STEPS if c.model == "infogan" and not two_d else
                              DEFAULT_STEPS.get(kind, DEFAULT_STEPS["points" if two_d else "images"]))
        c.batch_size = c.batch_size or (256 if two_d else CYCLEGAN_BATCH if cycle else CONDITIONAL_BATCH if cond
                                        else 64)
        # CycleGAN on 32x32: the reference's 64 filters are sized for 256x256 photographs; 32 learns the
        # embedded digits pair in the default run's time (BENCHMARKS.md)
        c.ngf = c.ngf or (CYCLEGAN_WIDTH if cycle and c.image_size == 32 else CONDITIONAL_WIDTH if cond else 64)
        c.ndf = c.ndf or (CYCLEGAN_WIDTH if cycle and c.image_size == 32 else CONDITIONAL_WIDTH if cond else 64)
        if cond:
            md = MODEL_DEFAULTS[c.model]
            c.attn_res = DEFAULT_ATTN_RES if c.attn_res is None else tuple(c.attn_res)
            c.ortho_reg = md["ortho_reg"] if c.ortho_reg is None else c.ortho_reg
            if obj.optimizer == "adam":  # wgan keeps its RMSprop settings
                c.d_steps = c.d_steps or md["d_steps"]
                c.lr_d = c.lr_d or c.lr or md["lr_d"]
                c.lr_g = c.lr_g or c.lr or md["lr_g"]
                c.betas = tuple(c.betas) if c.betas is not None else md["betas"]
        if c.identity_weight is None:
            # The identity term asks G_AB(b) = b: it favours maps that keep the sign of the input. The
            # embedded pair differs by an intensity inversion, and there (measured, BENCHMARKS.md) it
            # makes each digit translate to the one its complement resembles (0% content preserved,
            # 1 -> 0, ...) where without it 95% is preserved after 100 steps
            embedded = kind == "cycle" and set(c.data.split(":", 1)[1].split(",")) <= {"digits", "digits-bold"}
            c.identity_weight = 0.0 if embedded else 0.5
        # measured (5,000 steps, 3 seeds): ring8 keeps all 8 modes with z in R^8 where R^2 lost one on a
        # seed; grid25's 5x5 layout is found from a 2-D latent (all 25) more reliably than from R^8
        infogan = c.model == "infogan" and not two_d
        c.z_dim = c.z_dim or (62 if infogan else 120 if c.model == "biggan" and not two_d else 128 if not two_d
                              else 2 if data_kind(c.data) == "grid25" else 8)
        c.d_steps = c.d_steps or obj.d_steps
        c.optimizer = c.optimizer or obj.optimizer
        obj_lr = obj.lr_2d if two_d and obj.lr_2d is not None else obj.lr
        c.lr_d = c.lr_d or c.lr or obj_lr
        # InfoGAN's paper: D 2e-4, G 1e-3 (Adam, beta1 0.5) with the DCGAN-style objectives
        c.lr_g = c.lr_g or c.lr or (1e-3 if infogan and obj.lr == 2e-4 else obj_lr)
        c.lr = None if c.lr_d != c.lr_g else c.lr_d
        # InfoGAN on digits: the code/class agreement reached by mid-run drifted away during the decay
        # (seed 1: 92% at step 800, 78% at 2,000); with constant rates they end at 89.1% and 88.6% (BENCHMARKS.md).
        # SAGAN and BigGAN train with constant rates in their papers, and their short runs here are still
        # improving at the end
        if c.lr_decay is None:
            c.lr_decay = not (infogan or cond)
        obj_betas = obj.betas_2d if two_d and obj.betas_2d is not None else obj.betas
        c.betas = tuple(c.betas) if c.betas is not None else obj_betas
        if c.gp_weight is None:
            c.gp_weight = obj.gp_weight_2d if two_d and obj.gp_weight_2d is not None else obj.gp_weight
        c.clip = obj.clip if c.clip is None else c.clip
        c.r1_gamma = obj.r1_gamma if c.r1_gamma is None else c.r1_gamma
        c.eval_every = c.eval_every or max(1, c.steps // 5)
        c.sample_every = c.sample_every or c.eval_every
        c.ckpt_every = c.ckpt_every or c.eval_every
        c.noise_anneal = c.noise_anneal or max(1, c.steps // 2)
        if c.instance_noise is None:
            # measured: on ring8 (modes of std 0.01) D's early gradients vanish on some seeds and G stays
            # at the centre (seed 1: 0/8 modes); noise of std 0.1 annealed to 0 by mid-run fixes it (8/8)
            c.instance_noise = 0.1 if data_kind(c.data) == "ring8" else 0.0
        c.validate()
        return c


# Fields that define the trained model; a resumed run must keep them (the rest may change).
RESUMABLE_CHANGES = ("steps", "out", "resume", "overwrite", "backend", "device", "threads", "log_every", "eval_every",
                     "sample_every", "ckpt_every", "eval_samples", "progress", "max_minutes", "sync_bn",
                     "dist_timeout")


def data_kind(data: str) -> str:
    if not isinstance(data, str):
        raise TypeError(f"ganfast.train: data must be a string; got {type(data).__name__}")
    if data in ("ring8", "grid25", "digits", "digits-bold"):
        return data
    for prefix in ("folder", "npy", "cycle"):
        if data.startswith(prefix + ":"):
            if not data[len(prefix) + 1:]:
                raise ValueError(f"ganfast.train: data '{data}' needs a path after '{prefix}:'")
            return prefix
    raise ValueError(f"ganfast.train: unknown data set '{data}'; choose one of {', '.join(DATASETS)}")


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"ganfast.train: unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive_int(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"ganfast.train: {name} must be a positive integer; got {v!r}")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


__all__ = ["TrainConfig", "DATASETS", "OBJECTIVES", "RESUMABLE_CHANGES", "data_kind"]
