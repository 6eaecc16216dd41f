"""The `ganfast` command.

    ganfast train [flags]                     train a GAN (ring8 by default), see `ganfast train --help`
    ganfast sample --ckpt RUN --n N --out F   samples of a trained generator (.png grid or .npy)
    ganfast translate --ckpt RUN --input X --out Y   a CycleGAN run's translation of your images
    ganfast check [--quick] [--json FILE]     every kernel against the float64 reference, on this machine
    ganfast bench [--quick] [--out DIR]       eager vs torch.compile vs ganfast, side by side
    ganfast compare --objectives all --seeds 5 --out DIR   every objective x seed, one budget, compared
    ganfast --version                         this install: versions, compiled backends, devices

Subcommands live in COMMANDS (name -> Command); another one is added with
`register_command(Command(name, help, add_arguments, run))` before `main()` runs.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, NamedTuple, Optional, Sequence


class Command(NamedTuple):
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


COMMANDS: dict[str, Command] = {}


def register_command(cmd: Command) -> Command:
    COMMANDS[cmd.name] = cmd
    return cmd


class _Parser(argparse.ArgumentParser):
    """argparse, with an unknown flag's error listing the flags that exist."""

    def parse_args(self, args=None, namespace=None):  # noqa: D401
        ns, unknown = self.parse_known_args(args, namespace)
        if unknown:
            sub = getattr(ns, "_parser", self)
            flags = sorted({s for a in sub._actions for s in a.option_strings if s.startswith("--")})
            sub.error(f"unrecognized argument(s): {' '.join(unknown)}\n"
                      f"valid flags for '{sub.prog}': {', '.join(flags)}")
        return ns


# ---- ganfast train ------------------------------------------------------------------------------


def _data_arg(value: str) -> str:
    from .train.config import data_kind

    try:
        data_kind(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("ganfast.train: ", "")) from None
    return value


def _positive_int(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got '{value}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {v}")
    return v


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .train.config import (AMP_CHOICES, BACKEND_CHOICES, CONDITIONAL_BATCH, CONDITIONAL_WIDTH, CYCLEGAN_BATCH, CYCLEGAN_WIDTH,
                               DEFAULT_ATTN_RES, DEFAULT_CONDITIONAL_STEPS, DEFAULT_CYCLEGAN_STEPS,
                               DEFAULT_INFOGAN_STEPS, DEFAULT_STEPS, DEVICE_CHOICES, LATENT_CHOICES, MODEL_DEFAULTS,
                               MODELS, OPTIMIZERS, TrainConfig)
    from .train.objectives import OBJECTIVES

    d = TrainConfig()
    steps = DEFAULT_STEPS
    S = argparse.SUPPRESS  # only flags given on the command line override the config file / the saved run
    objectives = "; ".join(f"{o.name}: {o.summary}" for o in OBJECTIVES.values())

    g = p.add_argument_group("what to train")
    g.add_argument("--config", metavar="FILE.toml", default=S,
                   help="read the configuration from a TOML file (keys as these flags, with _ for -, top "
                        "level or under [train]); flags given as well override it")
    g.add_argument("--data", type=_data_arg, default=S, metavar="DATA",
                   help="ring8 (8 Gaussians, std 0.01, on the unit circle), grid25 (25 Gaussians, std 0.05, "
                        "on {-4,-2,0,2,4}^2), digits (scikit-learn's 8x8 digits resized to --image-size), "
                        "digits-bold (the same digits, strokes dilated and intensities inverted), "
                        "folder:PATH (PNG/JPEG files under PATH), npy:PATH ((N, 2) points or (N, [C,] H, W[, C]) "
                        "images), cycle:A,B (two image domains for --model cyclegan, e.g. "
                        f"cycle:digits,digits-bold) (default: {d.data})")
    g.add_argument("--objective", choices=list(OBJECTIVES), default=S,
                   help=f"the GAN objective (default: nonsaturating; least_squares for cyclegan; hinge for sagan "
                        f"and biggan). {objectives}")
    g.add_argument("--steps", type=_positive_int, default=S,
                   help=f"generator steps (default: by data, each default run measured on a 2-core CPU: "
                        f"{steps['ring8']:,} on ring8 (38 s), grid25 (wgan-gp: 2.5 min) and 2-D npy: points; "
                        f"{steps['digits']:,} on digits (9.4 min) and folder: / npy: images (as long at "
                        f"32x32, about 55 min at 64x64); wgan and wgan-gp run 5 D steps per G step, about 6x as long "
                        f"on images; infogan: {DEFAULT_INFOGAN_STEPS:,}; cyclegan: {DEFAULT_CYCLEGAN_STEPS:,}; "
                        f"sagan: {DEFAULT_CONDITIONAL_STEPS['sagan']:,}; biggan: {DEFAULT_CONDITIONAL_STEPS['biggan']:,})")
    g.add_argument("--batch-size", type=_positive_int, default=S,
                   help=f"real and generated samples per step (default: 256 for 2-D data, 64 for images, "
                        f"{CYCLEGAN_BATCH} per domain for cyclegan, {CONDITIONAL_BATCH} for sagan and biggan)")
    g.add_argument("--d-steps", type=_positive_int, default=S,
                   help="discriminator steps per generator step, each with a fresh real batch and fresh z "
                        f"(default: the objective's: 5 for wgan and wgan-gp, else 1; sagan "
                        f"{MODEL_DEFAULTS['sagan']['d_steps']}, biggan {MODEL_DEFAULTS['biggan']['d_steps']})")
    g.add_argument("--lr", type=float, default=S,
                   help="learning rate of both optimizers (default: the objective's: 2e-4 with Adam "
                        "betas (0.5, 0.999), 1e-3 on ring8 / grid25 / 2-D .npy points; wgan-gp 1e-4 with "
                        "(0, 0.9), on 2-D points (0.5, 0.9); wgan RMSprop 5e-5; sagan and biggan: constant "
                        "rates, the papers' D rates and "
                        "G 2e-4 (measured on digits, faster than their G 1e-4 / 5e-5 in a short run): "
                        f"sagan D {MODEL_DEFAULTS['sagan']['lr_d']:g} / G {MODEL_DEFAULTS['sagan']['lr_g']:g} with "
                        f"betas {MODEL_DEFAULTS['sagan']['betas']}, biggan D {MODEL_DEFAULTS['biggan']['lr_d']:g} / "
                        f"G {MODEL_DEFAULTS['biggan']['lr_g']:g} with {MODEL_DEFAULTS['biggan']['betas']})")
    g.add_argument("--lr-d", type=float, default=S, help="the discriminator's learning rate (overrides --lr)")
    g.add_argument("--lr-g", type=float, default=S, help="the generator's learning rate (overrides --lr)")
    g.add_argument("--betas", type=float, nargs=2, metavar=("BETA1", "BETA2"), default=S,
                   help="Adam's betas (default: the objective's; sagan (0, 0.9), biggan (0, 0.999))")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=S, help="default: the objective's")
    g.add_argument("--lr-decay", dest="lr_decay", action="store_true", default=S,
                   help="decay both learning rates linearly to 0 over the second half (default: on, "
                        "except for --model infogan, sagan and biggan)")
    g.add_argument("--no-lr-decay", dest="lr_decay", action="store_false", default=S,
                   help="keep the learning rates constant (the default for --model infogan, sagan and biggan)")
    g.add_argument("--seed", type=int, default=S, help=f"seeds every random stream (default: {d.seed})")

    g = p.add_argument_group("models")
    g.add_argument("--model", choices=MODELS, default=S,
                   help=f"the image models (default: {d.model}): dcgan (Radford et al.), or infogan (Chen et al.: "
                        "categorical and continuous codes in G's input, a Q head on D's trunk predicting them, "
                        "the mutual-information term added to both losses; writes codes.png), or cyclegan (Zhu et "
                        "al.: two ResNet generators and two PatchGAN discriminators between the domains of "
                        "--data cycle:A,B; writes translations.png), or sagan (Zhang et al.: class-conditional "
                        "ResNet G and D with spectral norm, self-attention, conditional BatchNorm in G, a "
                        "projection D) or biggan (Brock et al.: SAGAN plus a shared class embedding, hierarchical "
                        "z, orthogonal regularization); sagan and biggan need labelled images (digits, "
                        "folder:PATH with one subfolder per class, npy:X.npy with X.labels.npy) and write "
                        "samples.png one row per class; 2-D data trains MLPs")
    g.add_argument("--z-dim", type=_positive_int, default=S,
                   help="latent dimension (default: 8 for ring8 and .npy points, 2 for grid25, 128 for images, "
                        "62 for infogan, 120 for biggan)")
    g.add_argument("--latent", choices=LATENT_CHOICES, default=S,
                   help=f"z ~ N(0, I) or U(-1, 1)^d (default: {d.latent})")
    g.add_argument("--width", type=_positive_int, default=S, help=f"MLP hidden units, 2-D data (default: {d.width})")
    g.add_argument("--depth", type=_positive_int, default=S, help=f"MLP hidden layers, 2-D data (default: {d.depth})")
    g.add_argument("--ngf", type=_positive_int, default=S,
                   help=f"generator width (default: 64; {CYCLEGAN_WIDTH} for cyclegan at 32x32; sagan / biggan: "
                        f"G's ch, {CONDITIONAL_WIDTH})")
    g.add_argument("--ndf", type=_positive_int, default=S,
                   help=f"discriminator width (default: 64; {CYCLEGAN_WIDTH} for cyclegan at 32x32; sagan / "
                        f"biggan: D's ch, {CONDITIONAL_WIDTH})")
    g.add_argument("--image-size", type=int, choices=(32, 64, 128), default=S,
                   help=f"images are resized to this square size (default: {d.image_size})")
    g.add_argument("--channels", type=int, choices=(1, 3), default=S,
                   help="1 (grayscale) or 3 (RGB) (default: as the images are)")

    g = p.add_argument_group("infogan (--model infogan)")
    g.add_argument("--cat-codes", type=int, default=S,
                   help=f"values of the categorical code, drawn uniformly (default: {d.cat_codes}; 0: none)")
    g.add_argument("--cont-codes", type=int, default=S,
                   help=f"continuous codes, drawn U(-1, 1) (default: {d.cont_codes}; 0: none)")
    g.add_argument("--info-weight", type=float, default=S,
                   help=f"lambda of the categorical mutual-information term (default: {d.info_weight}, the paper's)")
    g.add_argument("--info-cont-weight", type=float, default=S,
                   help=f"lambda of the continuous codes' term (default: {d.info_cont_weight}; the paper uses "
                        "less than 1 for continuous codes)")

    g = p.add_argument_group("sagan / biggan (--model sagan or biggan; widths: --ngf / --ndf)")
    g.add_argument("--attn-res", type=_positive_int, nargs="*", metavar="RES", default=S,
                   help=f"resolutions at which G and D have a self-attention block (default: "
                        f"{' '.join(map(str, DEFAULT_ATTN_RES))}; --attn-res with no value: none)")
    g.add_argument("--ortho-reg", type=float, metavar="BETA", default=S,
                   help=f"orthogonal regularization of G's weights after each backward (the shared class "
                        f"embedding left out, as BigGAN-PyTorch), in ganfast.penalty's convention: the "
                        f"gradient 4*BETA*(W W^T * (1 - I)) W is added, so BigGAN-PyTorch's --G_ortho S is "
                        f"BETA = S / 2 (default: biggan {MODEL_DEFAULTS['biggan']['ortho_reg']:g} = its 1e-4; "
                        f"sagan 0 = off)")

    g = p.add_argument_group("cyclegan (--model cyclegan --data cycle:A,B; defaults: the reference code's)")
    g.add_argument("--cycle-weight", type=float, default=S,
                   help=f"lambda of the cycle-consistency L1, each direction (default: {d.cycle_weight})")
    g.add_argument("--identity-weight", type=float, default=S,
                   help="identity L1 |G_AB(b) - b| + |G_BA(a) - a|, as a fraction of --cycle-weight (default: "
                        "the reference's 0.5; 0 = off on cycle:digits,digits-bold, whose domains differ by an "
                        "intensity inversion that the identity term fights)")
    g.add_argument("--pool-size", type=int, default=S,
                   help=f"generated images kept for the discriminators (default: {d.pool_size}; 0: none)")
    g.add_argument("--n-blocks", type=int, default=S,
                   help=f"residual blocks of each ResNet generator (default: {d.n_blocks})")
    g.add_argument("--d-layers", type=_positive_int, default=S,
                   help=f"strided layers of each PatchGAN discriminator (default: {d.d_layers}: 70x70 patches)")

    g = p.add_argument_group("objective options")
    g.add_argument("--gp-weight", type=float, default=S,
                   help="wgan-gp's lambda (default: 10; 0.1 on 2-D points, the paper's toy setting)")
    g.add_argument("--clip", type=float, default=S, help="wgan's weight clipping bound (default: 0.01)")
    g.add_argument("--r1-gamma", type=float, default=S,
                   help="R1 penalty gamma/2 E||grad D(x)||^2 on real data, any objective (default: 1 for "
                        "the r1 objective, else 0 = off)")
    g.add_argument("--r1-every", type=_positive_int, default=S,
                   help=f"lazy R1: every N discriminator steps, scaled by N (default: {d.r1_every})")
    g.add_argument("--label-smoothing", type=float, default=S,
                   help="one-sided: real label 1 - S for minimax, nonsaturating, r1, least_squares (default: 0)")
    g.add_argument("--instance-noise", type=float, default=S,
                   help="std of Gaussian noise added to D's inputs (real and generated), annealed linearly to 0 "
                        "(default: 0.1 on ring8, else 0 = off)")
    g.add_argument("--noise-anneal", type=_positive_int, default=S,
                   help="the step at which the instance noise reaches 0 (default: steps / 2)")
    g.add_argument("--ema", type=float, default=S,
                   help=f"decay of the moving average of G's weights that samples are drawn from "
                        f"(default: {d.ema}; 0 = G itself)")
    g.add_argument("--amp", choices=AMP_CHOICES, default=S,
                   help="autocast: bf16 (CPU or CUDA) or fp16 (CUDA, with gradient scaling) (default: none)")

    g = p.add_argument_group("where and how")
    g.add_argument("--out", metavar="DIR", default=S,
                   help=f"output directory (default: {d.out}); an existing one needs --resume or --overwrite")
    g.add_argument("--resume", action="store_true", default=S,
                   help="continue the run in --out from its checkpoint (its saved configuration; only "
                        "--steps and the logging / backend / device flags may change)")
    g.add_argument("--max-minutes", type=float, metavar="M", default=S,
                   help="wall-clock budget of training minutes (summed over resumes): the run stops at the "
                        "first step past it, evaluated and checkpointed as at its last step, and summary.json "
                        "records \"stopped\": \"budget\" (default: none, train all --steps)")
    g.add_argument("--overwrite", action="store_true", default=S,
                   help="replace the run in --out (removes only the files a run writes)")
    g.add_argument("--backend", choices=BACKEND_CHOICES, default=S,
                   help="ganfast kernels to use (default: auto); reference is pure PyTorch")
    g.add_argument("--device", choices=DEVICE_CHOICES, default=S, help="where to train (default: auto: CUDA when torch sees a GPU, else the CPU)")
    g.add_argument("--threads", type=int, default=S,
                   help="torch intra-op threads (default: 0 = automatic: 1 for 2-D data, whose tiny models "
                        "run faster on one thread and then give the same numbers on any machine; torch's "
                        "default for images)")
    g.add_argument("--log-every", type=_positive_int, default=S,
                   help=f"steps per metrics.jsonl row and progress-bar update (default: {d.log_every})")
    g.add_argument("--eval-every", type=_positive_int, default=S,
                   help="steps between evaluations (modes / classes) (default: steps / 5)")
    g.add_argument("--sample-every", type=_positive_int, default=S,
                   help="steps between sample grids in OUT/samples/ (default: the eval interval)")
    g.add_argument("--ckpt-every", type=_positive_int, default=S,
                   help="steps between checkpoints (default: the eval interval)")
    g.add_argument("--eval-samples", type=_positive_int, default=S,
                   help=f"samples per evaluation (default: {d.eval_samples}); fd / precision / recall use the "
                        f"first min(1000, this, data size) against as many real images")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S,
                   help="no progress bar")

    g = p.add_argument_group("several processes (data-parallel: torchrun, or --nproc)")
    g.add_argument("--nproc", type=_positive_int, default=S, metavar="N",
                   help="train in N processes on this machine (one per GPU; gloo on the CPU), launched through "
                        "torch's elastic launcher as `torchrun --standalone --nproc-per-node N -m ganfast train` "
                        "would: --batch-size is the global batch, split evenly; the result equals one process's "
                        "with the same seed up to floating-point reduction order. Several machines: run "
                        "torchrun yourself (README, \"Multiple GPUs and machines\")")
    g.add_argument("--sync-bn", dest="sync_bn", action=argparse.BooleanOptionalAction, default=S,
                   help="with several processes, the fused BatchNorm's statistics over the global batch, as one "
                        "process computes them (default: on when there is more than one process)")
    g.add_argument("--dist-timeout", type=float, metavar="MIN", default=S,
                   help=f"minutes a collective waits for the other processes before the run fails "
                        f"(default: {d.dist_timeout:g})")


def _format_summary(s: dict) -> str:
    lines = [f"ganfast train: {s['objective']} on {s['data']}: step {s['steps']} "
             f"({s['trained_steps_this_run']} this run, {s['seconds']:.1f} s training, {s['seconds_total']:.1f} s in all, "
             f"{s['device']}, backend {s['backend']})"]
    if s.get("stopped") == "budget":
        lines.append(f"  stopped by the --max-minutes {s['max_minutes']:g} budget at step {s['steps']} of "
                     f"{s['steps_requested']}")
    if s.get("loss_d") is not None:
        lines.append(f"  last losses: D {s['loss_d']:.4f}  G {s['loss_g']:.4f}")
    for key, who in (("metrics_ema", "G_ema"), ("metrics_raw", "G    ")):
        m = s.get(key)
        if not m:
            continue
        if "high_quality" in m:
            lines.append(f"  {who}: {m['modes']}/{m['n_modes']} modes captured, {100 * m['high_quality']:.1f}% "
                         f"high-quality samples (step {s['eval_step']})")
        elif "classes" in m:
            agreement = (f", categorical code / class agreement {100 * m['code_agreement']:.1f}%"
                         if "code_agreement" in m else "")
            if "class_agreement" in m:
                agreement += f", requested class agreement {100 * m['class_agreement']:.1f}%"
            lines.append(f"  {who}: {m['classes']}/{m['n_classes']} classes covered, KL(classes || uniform) "
                         f"{m['kl_uniform']:.4f}{agreement} (step {s['eval_step']})")
    m = s.get("metrics")
    if m:  # cyclegan
        content = (f"; content preserved A->B {100 * m['content_ab']:.1f}%, B->A {100 * m['content_ba']:.1f}%"
                   if "content_ab" in m else "")
        lines.append(f"  held-out cycle error |G_BA(G_AB(a)) - a| {m['cycle_l1_a']:.4f}, |G_AB(G_BA(b)) - b| "
                     f"{m['cycle_l1_b']:.4f}{content} (step {s['eval_step']})")
        out = s["out"]
        lines.append(f"  files in {out}: config.toml checkpoint.pt metrics.jsonl training.png translations.png "
                     f"samples/ summary.json")
        lines.append(f"  translate your images: ganfast translate --ckpt {out} --input FILE_OR_FOLDER --out ...")
        return "\n".join(lines)
    out = s["out"]
    codes = " codes.png" if (s.get("metrics_ema") or {}).get("code_agreement") is not None else ""
    lines.append(f"  files in {out}: config.toml checkpoint.pt metrics.jsonl training.png samples.png{codes} samples/ "
                 f"summary.json")
    cls = " [--class K] [--truncation PSI]" if (s.get("metrics_ema") or {}).get("class_agreement") is not None else ""
    lines.append(f"  more samples: ganfast sample --ckpt {out} --n 1000 --out samples.png{cls}")
    return "\n".join(lines)


def _toml_values(path: str) -> dict:
    """The keys the TOML file sets (validated), as TrainConfig field names."""
    from .train import TrainConfig

    cfg = TrainConfig.from_toml(path)
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    if set(raw) == {"train"} and isinstance(raw["train"], dict):
        raw = raw["train"]
    return {k.replace("-", "_"): getattr(cfg, k.replace("-", "_")) for k in raw}


def _run_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, Trainer

    nproc = getattr(args, "nproc", 1)
    if nproc > 1:
        return _launch_train(args, nproc)
    values = {k: v for k, v in vars(args).items()
              if not k.startswith("_") and k not in ("command", "config", "nproc")}
    for name in ("betas", "attn_res"):
        if name in values:
            values[name] = tuple(values[name])
    if hasattr(args, "config"):
        base = _toml_values(args.config)
        base.update(values)
        values = base
    cfg = TrainConfig.from_dict(values, where="the command line")
    fit = Trainer(cfg, explicit=set(values)).fit
    if "TORCHELASTIC_RUN_ID" in os.environ:
        # a process of torchrun / --nproc: its error, with the traceback, reaches the launcher's report
        from torch.distributed.elastic.multiprocessing.errors import record
        fit = record(fit)
    summary = fit()
    if int(os.environ.get("RANK", "0")) == 0:
        print(_format_summary(summary))
    return 0


def _launch_train(args: argparse.Namespace, nproc: int) -> int:
    """`ganfast train --nproc N ...`: the same command in N processes through torch's launcher."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from .train.distributed import launch, strip_nproc

    if "TORCHELASTIC_RUN_ID" in os.environ:
        raise ValueError("--nproc starts the processes itself; under torchrun, leave it out")
    try:
        argv = list(args._argv)
        launch(strip_nproc(argv[argv.index("train") + 1:]), nproc)
    except ChildFailedError as e:
        print(f"ganfast train: a process failed; the run stopped on every rank.\n{e.format_msg()}", file=sys.stderr)
        return 1
    return 0


register_command(Command(
    "train", "train a GAN (default: ring8, nonsaturating, 8,000 steps: 38 s on 2 idle CPU cores)",
    _add_train_arguments, _run_train,
    description="Train a GAN: each step, --d-steps discriminator steps (fresh real batch, fresh z) then one "
                "generator step (fresh z). Writes OUT/config.toml, checkpoint.pt, metrics.jsonl, samples/, "
                "samples.png, training.png and summary.json, and prints a summary."))


# ---- ganfast sample -----------------------------------------------------------------------------


def _add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, metavar="PATH", help="a run directory or its checkpoint.pt")
    p.add_argument("--n", type=_positive_int, default=64, help="number of samples (default: 64)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help=".png (an image grid; a scatter plot for 2-D data) or .npy (the raw array)")
    p.add_argument("--seed", type=int, default=0, help="seed of z (default: 0)")
    p.add_argument("--device", default="cpu", help="where to run the generator (default: cpu)")
    p.add_argument("--cat", type=int, default=None, metavar="K",
                   help="InfoGAN runs: fix the categorical code at K (default: drawn uniformly)")
    p.add_argument("--class", dest="cls", type=int, default=None, metavar="K",
                   help="sagan / biggan runs: every sample of class K (default: classes drawn uniformly; a .png "
                        "then has one row per class, a .npy its classes in OUT.labels.npy)")
    p.add_argument("--truncation", type=float, default=None, metavar="PSI",
                   help="BigGAN's truncation trick: every entry of z with |z| > PSI is redrawn until it is at "
                        "most PSI (PSI > 0; smaller: less varied, more typical samples) (default: off)")


def _run_sample(args: argparse.Namespace) -> int:
    from .train import sample_to_file

    path = sample_to_file(args.ckpt, args.n, args.out, seed=args.seed, device=args.device, cat=args.cat,
                          cls=args.cls, truncation=args.truncation)
    print(f"ganfast sample: wrote {args.n} samples of G_ema to {path}")
    return 0


register_command(Command("sample", "write samples of a trained generator (G_ema) to .png or .npy",
                         _add_sample_arguments, _run_sample))


# ---- ganfast translate --------------------------------------------------------------------------


def _add_translate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, metavar="PATH", help="a CycleGAN run directory or its checkpoint.pt")
    p.add_argument("--input", required=True, metavar="FILE_OR_FOLDER",
                   help="a .npy array of images ((N, [C,] H, W[, C])), a PNG/JPEG image, or a folder of them "
                        "(recursively); prepared as in training (centre crop, resized to the run's size and "
                        "channels)")
    p.add_argument("--out", required=True, metavar="FILE_OR_FOLDER",
                   help="the same kind as --input: a .npy ((N, C, H, W) float32 in [-1, 1]), an image file, or "
                        "a folder (one PNG per input image, same relative path)")
    p.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB",
                   help="AtoB: G_AB (the first domain of cycle:A,B to the second); BtoA: G_BA (default: AtoB)")
    p.add_argument("--device", default="cpu", help="where to run the generator (default: cpu)")


def _run_translate(args: argparse.Namespace) -> int:
    from .train import translate_files

    written = translate_files(args.ckpt, args.input, args.out, direction=args.direction, device=args.device)
    what = f"{len(written)} images into {args.out}" if len(written) > 1 else str(written[0])
    print(f"ganfast translate: {args.direction} wrote {what}")
    return 0


register_command(Command("translate", "translate images with a CycleGAN run's generator (G_AB or G_BA)",
                         _add_translate_arguments, _run_translate))


def _lazy(module: str):
    """(add_arguments, run) of a command whose module (ganfast.<module>, with functions of those
    names) is imported only when the command runs: `ganfast --help` stays fast."""
    def add_arguments(p: argparse.ArgumentParser) -> None:
        importlib.import_module(f"ganfast.{module}").add_arguments(p)

    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(f"ganfast.{module}").run(args)

    return add_arguments, run


register_command(Command(
    "bench", "the benchmark suite: eager vs torch.compile vs ganfast, device-op counts, GPU report",
    *_lazy("bench.suite"),
    description="Time every op family and eight whole training steps (DCGAN non-saturating, DCGAN "
                "WGAN-GP, DCGAN lazy R1, MLP WGAN-GP on ring8, InfoGAN, CycleGAN, SAGAN's D step and G step): eager PyTorch, torch.compile and every ganfast backend "
                "present, side by side in one run, verified against eager first; count each step's device "
                "operations and bytes moved; write JSON, Markdown and a PNG chart to --out (default ./ganfast-bench). "
                "--quick takes under 5 minutes on a 2-core CPU (44 s once torch.compile's cache is warm). --gpu-report writes the static sm_80/sm_90 "
                "register / shared memory / spill report instead."))


# ---- ganfast compare -----------------------------------------------------------------------------


register_command(Command(
    "compare", "train every objective (or model) x seed with one budget and compare them (Lucic et al. 2018)",
    *_lazy("compare"),
    description="\"Are GANs created equal?\" as a command: train every (model x objective) x seed on the same "
                "data with the same steps (and, with --budget-minutes, the same wall-clock budget), each an "
                "ordinary `ganfast train` run in its own process under DIR/<model>-<objective>/seed<k>/ "
                "(model 'mlp' on 2-D data), --jobs at once; then write DIR/compare.csv (one row per run: status, "
                "error, steps, seconds, every final metric), DIR/compare.md (per model-objective: median [min, "
                "max] over the seeds of each metric, the best run) and DIR/compare.png (box plots, one panel per "
                "metric, one box per model-objective, seeds as points). Best run: most modes then most "
                "high-quality samples on 2-D mixtures; lowest fd on images where measured, else class / code "
                "agreement, classes covered. --resume skips finished runs and continues interrupted ones. Exits "
                "1 when any run failed (each is a row with its error). Example: ganfast compare --data ring8 "
                "--objectives all --seeds 5 --out runs/cmp"))


# ---- ganfast check -------------------------------------------------------------------------------


register_command(Command(
    "check", "check every kernel on this machine against the float64 reference (run it first on a GPU)",
    *_lazy("check"),
    description="Check every op family x every backend available here x float32/float16/bfloat16, at small "
                "and production shapes (and, on a GPU without --quick, sizes that need 64-bit indexing): the "
                "value, the gradients and the promised second derivatives against the reference run in "
                "float64, each reduction twice (bit-identical). Prints a table; exits 1 naming any failure "
                "and how to fall back. --quick: under a minute on a GPU, under 3 minutes on a 2-core CPU."))


# ---- entry point --------------------------------------------------------------------------------


class _VersionAction(argparse.Action):
    """--version: ganfast's version and what this install is (ganfast.show_config()), then exit.
    Computed only when asked for: importing torch is what makes it take a second."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from .buildinfo import show_config

        show_config()
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ganfast", description="ganfast: fused GAN kernels and the training engine built on them.")
    parser.add_argument("--version", action=_VersionAction,
                        help="print ganfast's version, how this install was built (torch, CUDA and its GPU "
                             "architectures, Triton, Python), the devices and the backends that run here, "
                             "and exit: paste it into bug reports")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=argparse.ArgumentParser)
    sub.required = True
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run, _parser=p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for reports (compare)
    name = args.command
    try:
        return args._run(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, ImportError, OSError) as e:
        print(f"ganfast {name}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
