"""`ganfast compare`: "Are GANs created equal?" (Lucic et al. 2018) as a command.

Every (model x objective) x seed is trained with the same data, the same steps and, with
--budget-minutes, the same wall-clock budget, each one an ordinary `ganfast train` run launched as
its own process (a crash in one cannot take the others down; --jobs of them run at once):

    DIR/<model>-<objective>/seed<k>/    the run (config.toml, checkpoint.pt, summary.json, ...):
                                        resume it, sample it, inspect it as any other run
    DIR/logs/<model>-<objective>-seed<k>.log   its stdout and stderr
    DIR/compare.csv                     one row per run: model, objective, seed, status, error, steps,
                                        seconds, every final metric of summary.json (flattened)
    DIR/compare.md                      per (model, objective): median, min and max over the seeds of
                                        each metric, and the best run
    DIR/compare.json                    the settings (data, steps, budget, --train-args, objectives,
                                        models, seeds, versions, command); --resume refuses other
                                        data, steps, budget or --train-args
    DIR/compare.png                     box plots, one panel per metric, one box per (model, objective),
                                        the seeds as points (the layout of Lucic et al.'s figures)

<model> is `mlp` on 2-D data (ring8, grid25, npy: points), whose runs always train the MLPs.
A run is finished when its summary.json has the requested steps or says the budget stopped it;
--resume skips finished runs, continues those with a checkpoint (the engine's --resume) and starts
the others. The command exits 1 when any run failed; each failed run is a row with its error.

Metrics are taken generically: every number in summary.json's metrics_ema ("ema.<name>"),
metrics_raw ("raw.<name>") and metrics (CycleGAN, "<name>") dicts, nested dicts flattened with
dots, lists (per-mode counts) left out. DIRECTIONS says which way is better for the known names; the
best run is chosen by PRIMARY: on 2-D mixtures the most modes, then the most high-quality samples;
on images the lowest Frechet distance `fd` where the runs have it, else the class agreement (sagan /
biggan), the categorical code agreement (infogan), the classes covered and the lowest KL(classes ||
uniform); on CycleGAN the content preserved, then the lowest cycle error.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import statistics
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

# ---- metrics: which way is better -----------------------------------------------------------------

HIGHER, LOWER = "higher", "lower"
# by the metric's own name (the last dotted part); names not here have no direction ("?")
DIRECTIONS = {
    "modes": HIGHER, "high_quality": HIGHER, "recall": HIGHER, "precision": HIGHER, "classes": HIGHER,
    "class_agreement": HIGHER, "code_agreement": HIGHER, "content_ab": HIGHER, "content_ba": HIGHER,
    "coverage": HIGHER, "density": HIGHER, "is": HIGHER, "inception_score": HIGHER,
    "fd": LOWER, "fid": LOWER, "kl": LOWER, "kl_uniform": LOWER, "mode_kl": LOWER, "cycle_l1_a": LOWER,
    "cycle_l1_b": LOWER,
}
# the best run: the first of these the runs have decides, the next ones break ties (G_ema's metrics)
PRIMARY = {
    "points": ("ema.modes", "ema.high_quality"),
    "images_fd": ("ema.fd",),
    "images": ("ema.class_agreement", "ema.code_agreement", "ema.classes", "ema.kl_uniform"),
    "cyclegan": ("content_ab", "content_ba", "cycle_l1_a", "cycle_l1_b"),
}
# constants of the data set, not of the run: kept in the CSV, left out of the table and the plot
CONSTANT_METRICS = ("n_modes", "n_classes")
# train flags compare sets itself (--train-args may not)
OWN_TRAIN_FLAGS = ("--data", "--objective", "--model", "--seed", "--steps", "--out", "--resume", "--overwrite",
                   "--threads", "--max-minutes", "--config")
BASE_COLUMNS = ["run", "model", "objective", "seed", "status", "action", "steps", "steps_requested",
                "train_seconds", "wall_seconds", "loss_d", "loss_g", "error", "out", "log"]


def direction(metric: str) -> Optional[str]:
    name = metric.rsplit(".", 1)[-1]
    if name in DIRECTIONS:
        return DIRECTIONS[name]
    if "kl" in name.split("_") or name.startswith(("fd", "fid")):
        return LOWER
    if name.endswith(("agreement", "recall", "precision")):
        return HIGHER
    return None


def flatten_metrics(summary: dict) -> dict:
    """Every numeric final metric of a summary.json, flattened: ema.<k>, raw.<k>, and (CycleGAN) <k>."""
    out: dict = {}

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v)
            elif isinstance(v, bool):
                out[key] = int(v)
            elif isinstance(v, (int, float)) and math.isfinite(float(v)):
                out[key] = v
            elif isinstance(v, float):  # nan / inf: kept, so a diverged run shows
                out[key] = v
            # lists (per-mode counts, per-class agreement), strings, None: left out

    for src, prefix in (("metrics_ema", "ema."), ("metrics_raw", "raw."), ("metrics", "")):
        if isinstance(summary.get(src), dict):
            walk(prefix, summary[src])
    return out


# ---- the plan -------------------------------------------------------------------------------------


@dataclass
class Run:
    model: str             # "mlp" on 2-D data
    objective: str
    seed: int
    out: Path
    log: Path
    steps: int             # requested
    status: str = "pending"   # ok | budget | failed
    action: str = ""          # trained | resumed | skipped
    error: str = ""
    wall_seconds: float = 0.0
    summary: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.model}-{self.objective}"

    @property
    def label(self) -> str:
        return f"{self.name}/seed{self.seed}"


def _split_list(value: str, what: str) -> list[str]:
    items = [x.strip() for x in value.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{what}: expected a comma-separated list; got '{value}'")
    if len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"{what}: '{value}' names something twice")
    return items


def _names_arg(value: str, flag: str, what: str, choices) -> list[str]:
    """--objectives / --models: 'all' or a comma-separated list of known names."""
    if value.strip() == "all":
        return list(choices)
    items = _split_list(value, flag)
    bad = [x for x in items if x not in choices]
    if bad:
        raise argparse.ArgumentTypeError(f"{flag}: unknown {what}(s) {', '.join(bad)}; choose from "
                                         f"{', '.join(choices)} or 'all'")
    return items


def _objectives_arg(value: str) -> list[str]:
    from .train.objectives import OBJECTIVES

    return _names_arg(value, "--objectives", "objective", OBJECTIVES)


def _models_arg(value: str) -> list[str]:
    from .train.config import MODELS

    return _names_arg(value, "--models", "model", MODELS)


def _positive(kind):
    def parse(value: str):
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}; got '{value}'") from None
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}; got {value}")
        return v
    return parse


def is_points(data: str) -> bool:
    """Whether the data set is 2-D points (the MLPs, the mode metrics)."""
    from .train.config import data_kind

    kind = data_kind(data)
    if kind in ("ring8", "grid25"):
        return True
    if kind == "npy":
        import numpy as np

        try:
            a = np.load(data[4:], mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ValueError(f"ganfast compare: --data {data}: cannot read it ({e})") from None
        return a.ndim == 2 and a.shape[1] == 2
    return False


def plan(args: argparse.Namespace) -> list[Run]:
    """Every run of the comparison, in order: model, objective, seed."""
    from .train.config import TrainConfig

    points = is_points(args.data)
    models = args.models
    if points and models:
        raise ValueError(f"--models: 2-D data ({args.data}) always trains the MLPs; compare objectives only")
    if models and any(m == "cyclegan" for m in models) and not args.data.startswith("cycle:"):
        raise ValueError(f"--models: cyclegan needs --data cycle:A,B; got {args.data}")
    root = Path(args.out)
    runs = []
    for model in (models or [None]):
        for objective in (args.objectives or [None]):
            cfg = TrainConfig(data=args.data, objective=objective, steps=args.steps, model=model or "dcgan")
            r = cfg.resolve(points=points)
            label = "mlp" if points else r.model
            for seed in range(args.seed_start, args.seed_start + args.seeds):
                name = f"{label}-{r.objective}"
                runs.append(Run(label, r.objective, seed, root / name / f"seed{seed}",
                                root / "logs" / f"{name}-seed{seed}.log", r.steps))
    return runs


def run_state(run: Run) -> str:
    """'finished' (summary.json at the requested steps, or stopped by the budget), 'partial' (a
    checkpoint to resume from) or 'new'."""
    s = read_summary(run.out)
    if s is not None and (s.get("steps") == run.steps or s.get("stopped") == "budget"):
        return "finished"
    if (run.out / "checkpoint.pt").is_file():
        return "partial"
    return "new"


def read_summary(out: Path) -> Optional[dict]:
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def train_command(run: Run, args: argparse.Namespace, threads: int, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "ganfast", "train", "--data", args.data, "--seed", str(run.seed),
           "--steps", str(run.steps), "--out", str(run.out), "--threads", str(threads), "--no-progress"]
    if run.model != "mlp":
        cmd += ["--model", run.model]
    if args.objectives:  # else each model's own default objective
        cmd += ["--objective", run.objective]
    if args.budget_minutes:
        cmd += ["--max-minutes", repr(args.budget_minutes)]
    cmd += ["--resume"] if resume else ["--overwrite"]
    return cmd + list(args.train_args)


def _error_text(log: Path, rc: int) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    errors = [ln for ln in lines if "error" in ln.lower() or "Error" in ln]
    text = errors[-1] if errors else (lines[-1] if lines else "")
    how = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
    return f"{how}: {text}"[:500] if text else how


_CHILDREN: set = set()     # the train processes running now
_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set by stop_children: no new train process starts


def stop_children(grace: float = 15.0) -> None:
    """Interrupt every running train process (SIGINT: each keeps its last checkpoint, for --resume),
    then kill the ones still there after `grace` seconds."""
    with _LOCK:
        _STOPPING.set()
        procs = list(_CHILDREN)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # still running: SIGINT ignored (a child of a non-interactive shell's background job
            # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler)
            p.kill()
            p.wait()


def execute(run: Run, args: argparse.Namespace, threads: int) -> Run:
    state = run_state(run)
    if state == "finished" and args.resume:
        run.action, run.summary = "skipped", read_summary(run.out) or {}
        run.status = "budget" if run.summary.get("stopped") == "budget" else "ok"
        return run
    resume = state == "partial" and args.resume
    run.action = "resumed" if resume else "trained"
    cmd = train_command(run, args, threads, resume)
    run.log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # the subprocesses import this very ganfast, wherever the command was started from
    pkg_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    with open(run.log, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        with _LOCK:
            try:
                proc = None if _STOPPING.is_set() else subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                                         env=env)
                rc = 130
            except OSError as e:
                proc, rc, run.error = None, 1, f"cannot start: {e}"
            if proc is not None:
                _CHILDREN.add(proc)
        if proc is not None:
            try:
                rc = proc.wait()
            finally:
                with _LOCK:
                    _CHILDREN.discard(proc)
    run.wall_seconds = round(time.perf_counter() - t0, 2)
    summary = read_summary(run.out)
    if rc != 0:
        run.status = "failed"
        run.error = run.error or _error_text(run.log, rc)
        run.summary = {}
        return run
    if summary is None or not (summary.get("steps") == run.steps or summary.get("stopped") == "budget"):
        run.status, run.error = "failed", f"no summary.json at step {run.steps} after the run (see {run.log})"
        return run
    run.summary = summary
    run.status = "budget" if summary.get("stopped") == "budget" else "ok"
    return run


# ---- the outputs ----------------------------------------------------------------------------------


def rows_of(runs: list[Run]) -> tuple[list[dict], list[str]]:
    metric_names: list[str] = []
    rows = []
    for r in runs:
        s = r.summary
        m = flatten_metrics(s) if r.status != "failed" else {}
        for k in m:
            if k not in metric_names:
                metric_names.append(k)
        rows.append({
            "run": r.label, "model": r.model, "objective": r.objective, "seed": r.seed, "status": r.status,
            "action": r.action, "steps": s.get("steps", ""), "steps_requested": r.steps,
            "train_seconds": s.get("train_seconds_total", s.get("seconds", "")), "wall_seconds": r.wall_seconds,
            "loss_d": s.get("loss_d", ""), "loss_g": s.get("loss_g", ""), "error": r.error,
            "out": str(r.out), "log": str(r.log), **m,
        })
    ema = [k for k in metric_names if k.startswith("ema.")]
    raw = [k for k in metric_names if k.startswith("raw.")]
    rest = [k for k in metric_names if k not in ema and k not in raw]
    return rows, ema + raw + rest


def write_csv(rows: list[dict], metrics: list[str], path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=BASE_COLUMNS + metrics, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    os.replace(tmp, path)


def shown_metrics(metrics: list[str]) -> list[str]:
    return [m for m in metrics if m.rsplit(".", 1)[-1] not in CONSTANT_METRICS]


def primary_metrics(metrics: list[str], kind: str) -> list[str]:
    if kind == "points":
        keys = PRIMARY["points"]
    elif kind == "cyclegan":
        keys = PRIMARY["cyclegan"]
    elif "ema.fd" in metrics:
        keys = PRIMARY["images_fd"]
    else:
        keys = PRIMARY["images"]
    chosen = [k for k in keys if k in metrics]
    if not chosen:  # none of the known ones: the first metric that has a direction
        chosen = [m for m in shown_metrics(metrics) if direction(m)][:1]
    return chosen


def best_row(rows: list[dict], keys: list[str]) -> Optional[dict]:
    ok = [r for r in rows if r["status"] != "failed"]
    if not ok or not keys:
        return None

    def score(r):
        out = []
        for k in keys:
            v = r.get(k)
            v = v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf if direction(k) == HIGHER else math.inf
            out.append(-v if direction(k) == HIGHER else v)
        return tuple(out) + (r["seed"],)
    return min(ok, key=score)


def _fmt(v) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == int(v) and abs(v) < 1e6:
            return f"{v:.0f}" if abs(v) >= 10 else f"{v:g}"
        return f"{v:.4g}"
    return str(v)


def group_stats(rows: list[dict], metric: str) -> Optional[tuple]:
    vals = [r[metric] for r in rows if r["status"] != "failed" and isinstance(r.get(metric), (int, float))]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals), len(vals)


def groups_of(rows: list[dict]) -> dict:
    g: dict = {}
    for r in rows:
        g.setdefault(f"{r['model']}-{r['objective']}", []).append(r)
    return g


def write_markdown(rows: list[dict], metrics: list[str], kind: str, args: argparse.Namespace, path: Path,
                   command: str) -> None:
    shown = shown_metrics(metrics)
    keys = primary_metrics(metrics, kind)
    groups = groups_of(rows)
    arrow = {HIGHER: "higher is better", LOWER: "lower is better", None: "no direction known"}
    L = [f"# ganfast compare: {args.data}", "",
         f"`{command}`", "",
         f"{len(rows)} runs: {len(groups)} (model, objective) x {args.seeds} seeds "
         f"({args.seed_start}..{args.seed_start + args.seeds - 1}), {rows[0]['steps_requested'] if rows else '?'} "
         f"steps each" + (f", at most {args.budget_minutes:g} training minutes each" if args.budget_minutes else "")
         + ". Each cell: median [min, max] over the seeds that finished.", ""]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        L.append(f"**{len(failed)} run(s) failed** (see the table at the end).")
        L.append("")
    main = [m for m in shown if m.startswith("ema.")] or [m for m in shown if not m.startswith("raw.")]
    L.append("## Summary (G_ema)" if main and main[0].startswith("ema.") else "## Summary")
    L.append("")
    head = ["model-objective", "runs"] + [f"{m} ({'↑' if direction(m) == HIGHER else '↓' if direction(m) == LOWER else '?'})"
                                         for m in main] + ["best run"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    for name, grp in groups.items():
        n_ok = sum(r["status"] != "failed" for r in grp)
        cells = [name, f"{n_ok}/{len(grp)}"]
        for m in main:
            st = group_stats(grp, m)
            cells.append("" if st is None else f"{_fmt(st[0])} [{_fmt(st[1])}, {_fmt(st[2])}]")
        b = best_row(grp, keys)
        cells.append(f"seed {b['seed']}" if b else "—")
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    b = best_row(rows, keys)
    L.append(f"Best run (by {', then '.join(keys) if keys else 'nothing: no metric with a direction'}): "
             + (f"**{b['run']}** ({', '.join(f'{k} {_fmt(b.get(k))}' for k in keys)}), in `{b['out']}`"
                if b else "none") + ".")
    L.append("")
    L.append("## Every metric")
    L.append("")
    L.append("| model-objective | metric | better | median | min | max | seeds |")
    L.append("|---|---|---|---|---|---|---|")
    for name, grp in groups.items():
        for m in shown:
            st = group_stats(grp, m)
            if st is None:
                continue
            L.append(f"| {name} | {m} | {arrow[direction(m)].split(' ')[0] if direction(m) else '?'} | "
                     f"{_fmt(st[0])} | {_fmt(st[1])} | {_fmt(st[2])} | {st[3]} |")
    L.append("")
    L.append("## Runs")
    L.append("")
    cols = ["run", "status", "action", "steps", "train_seconds"] + [m for m in keys]
    L.append("| " + " | ".join(cols + ["error"]) + " |")
    L.append("|" + "---|" * (len(cols) + 1))
    for r in rows:
        err = str(r.get("error", "")).replace("|", "\\|").replace("\n", " ")
        L.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + f" | {err} |")
    L.append("")
    L.append("ema.*: the moving average of G's weights (G_ema, what `ganfast sample` draws from); raw.*: G "
             "itself. Every run is a `ganfast train` run in its directory: `ganfast sample --ckpt DIR/...`.")
    path.write_text("\n".join(L) + "\n")


def write_plot(rows: list[dict], metrics: list[str], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shown = [m for m in shown_metrics(metrics) if m.startswith("ema.")] or shown_metrics(metrics)
    groups = groups_of(rows)
    names = list(groups)
    n = max(1, len(shown))
    cols = min(n, 3)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(max(4.0, 0.9 * len(names) + 1.5) * cols, 3.6 * nrows),
                             squeeze=False)
    rng = np.random.default_rng(0)
    for i, m in enumerate(shown):
        ax = axes[i // cols][i % cols]
        data = [[r[m] for r in groups[g] if r["status"] != "failed" and isinstance(r.get(m), (int, float))
                 and math.isfinite(r[m])] for g in names]
        ax.boxplot([d if d else [np.nan] for d in data], widths=0.6, showfliers=False)
        ax.set_xticks(range(1, len(names) + 1))
        for j, d in enumerate(data):
            if d:
                ax.scatter(j + 1 + rng.uniform(-0.12, 0.12, len(d)), d, s=14, color="C1", alpha=0.8, zorder=3)
        d = direction(m)
        ax.set_title(f"{m} ({'higher' if d == HIGHER else 'lower' if d == LOWER else '?'} is better)", fontsize=10)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for i in range(len(shown), nrows * cols):
        axes[i // cols][i % cols].axis("off")
    if not shown:
        axes[0][0].text(0.5, 0.5, "no finished run", ha="center", va="center")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the command ----------------------------------------------------------------------------------


def default_parallelism(points: bool, jobs: Optional[int], threads: Optional[int]) -> tuple[int, int]:
    """(jobs, threads per run) with jobs x threads <= the cores: 2-D runs are fastest on one thread
    each, so by default one job per core; image runs by default one job with every core."""
    cores = os.cpu_count() or 1
    if jobs is None and threads is None:
        threads = 1 if points else cores
    if jobs is None:
        jobs = max(1, cores // threads)
    if threads is None:
        threads = max(1, cores // jobs)
    return jobs, threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import _data_arg

    p.add_argument("--data", type=_data_arg, default="ring8", metavar="DATA",
                   help="the data every run trains on, as `ganfast train --data` (default: ring8)")
    p.add_argument("--objectives", type=_objectives_arg, default=None, metavar="LIST",
                   help="comma-separated objectives, or 'all' (every objective the engine has: nonsaturating, "
                        "minimax, wgan, wgan-gp, hinge, least_squares, r1) (default: each model's own)")
    p.add_argument("--models", type=_models_arg, default=None, metavar="LIST",
                   help="comma-separated image models (dcgan, infogan, cyclegan, sagan, biggan) to compare, "
                        "crossed with --objectives (default: the engine's, dcgan; 2-D data always trains MLPs)")
    p.add_argument("--seeds", type=_positive(int), default=5, metavar="N",
                   help="seeds per (model, objective): --seed-start .. --seed-start + N - 1 (default: 5)")
    p.add_argument("--seed-start", type=int, default=0, metavar="K", help="the first seed (default: 0)")
    p.add_argument("--steps", type=_positive(int), default=None, metavar="S",
                   help="generator steps of every run (default: the engine's for the data and model, e.g. "
                        "8,000 on ring8)")
    p.add_argument("--budget-minutes", type=_positive(float), default=None, metavar="M",
                   help="wall-clock training budget of each run (train --max-minutes): a run stops at --steps "
                        "or at M minutes, whichever comes first, evaluated and checkpointed (default: none)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the comparison's directory: DIR/<model>-<objective>/seed<k>/ (model 'mlp' on 2-D "
                        "data) are the runs, DIR/logs/ their output, DIR/compare.csv, compare.md, compare.png")
    p.add_argument("--jobs", type=_positive(int), default=None, metavar="J",
                   help="runs at once (default: cores // --threads: one per core on 2-D data, one on images)")
    p.add_argument("--threads", type=_positive(int), default=None, metavar="T",
                   help="torch threads of each run (default: 1 on 2-D data, else cores // --jobs); keep "
                        "jobs x threads <= cores")
    p.add_argument("--resume", action="store_true",
                   help="continue the comparison in DIR: finished runs are kept, interrupted ones resumed from "
                        "their checkpoints (train --resume), missing ones started")
    p.add_argument("--overwrite", action="store_true", help="start every run again (train --overwrite)")
    p.add_argument("--train-args", default="", metavar="'FLAGS'",
                   help="more `ganfast train` flags for every run, one quoted string, e.g. --train-args "
                        "'--eval-samples 1000 --batch-size 128' (not the flags compare sets: "
                        + ", ".join(OWN_TRAIN_FLAGS) + ")")


def check_args(args: argparse.Namespace) -> None:
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other; choose one")
    extra = shlex.split(args.train_args) if isinstance(args.train_args, str) else list(args.train_args)
    own = [a for a in extra if a.split("=", 1)[0] in OWN_TRAIN_FLAGS]
    if own:
        raise ValueError(f"--train-args: {', '.join(own)} is set by ganfast compare itself; use its own flags")
    args.train_args = extra
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {args.seeds}")


# What makes two calls the same comparison (compare.json): runs of a different data set, step count,
# budget or engine flags must not be mixed into one table. The objectives, models and seeds may grow.
SETTINGS_THAT_DEFINE_RUNS = ("data", "steps", "budget_minutes", "train_args")


def settings_of(args: argparse.Namespace, runs: list) -> dict:
    """The comparison's settings, as compare.json records them."""
    import torch

    from . import __version__

    return {"data": args.data, "steps": runs[0].steps, "budget_minutes": args.budget_minutes,
            "train_args": list(args.train_args), "objectives": sorted({r.objective for r in runs}),
            "models": sorted({r.model for r in runs}), "seeds": sorted({r.seed for r in runs}),
            "ganfast": __version__, "torch": torch.__version__}


def check_resumed_settings(root: Path, settings: dict) -> None:
    """--resume of a comparison made with other settings is an error naming them (compare.json)."""
    path = root / "compare.json"
    if not path.is_file():
        return  # made before compare.json existed: nothing to check against
    saved = json.loads(path.read_text())
    diff = [f"{k}: {saved.get(k)!r} there, {settings[k]!r} now" for k in SETTINGS_THAT_DEFINE_RUNS
            if saved.get(k) != settings[k]]
    if diff:
        raise ValueError(f"--resume: {root} is a comparison with other settings ({'; '.join(diff)}); its runs would "
                         f"not compare with these. Resume with its settings, --overwrite it, or choose another --out")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    points = is_points(args.data)
    runs = plan(args)
    root = Path(args.out)
    if not args.resume and not args.overwrite:
        busy = [r for r in runs if r.out.is_dir() and any(r.out.iterdir())]
        if busy:
            raise ValueError(f"--out {root} already holds runs of a comparison (e.g. {busy[0].out}); pass --resume "
                             f"to continue it, --overwrite to start again, or choose another --out")
    settings = settings_of(args, runs)
    if args.resume:
        check_resumed_settings(root, settings)
    jobs, threads = default_parallelism(points, args.jobs, args.threads)
    cores = os.cpu_count() or 1
    if jobs * threads > cores:
        print(f"ganfast compare: warning: {jobs} jobs x {threads} threads > {cores} cores: the runs will "
              f"compete for the cores, and a --budget-minutes budget buys fewer steps", file=sys.stderr)
    root.mkdir(parents=True, exist_ok=True)
    command = "ganfast " + shlex.join(getattr(args, "_argv", None) or ["compare", "--out", str(root)])
    from .train.checkpoint import write_text_atomic  # the engine's (fsync, temp file removed on failure)

    write_text_atomic(json.dumps({**settings, "command": command}, indent=2) + "\n", root / "compare.json")
    kind = "points" if points else "cyclegan" if args.data.startswith("cycle:") else "images"
    print(f"ganfast compare: {len(runs)} runs ({len({r.name for r in runs})} model-objective x {args.seeds} "
          f"seeds, {runs[0].steps} steps) in {root}, {jobs} at once x {threads} thread(s)", flush=True)
    t0 = time.perf_counter()
    done = 0

    def on_term(signum, frame):  # `kill PID` of compare: stop its train processes too, then exit
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures: list = []
    _STOPPING.clear()
    try:
        futures = [pool.submit(execute, r, args, threads) for r in runs]
        for fut in as_completed(futures):
            r = fut.result()
            done += 1
            m = flatten_metrics(r.summary)
            keys = primary_metrics(list(m), kind)
            what = (f"FAILED: {r.error}" if r.status == "failed" else
                    ", ".join(f"{k} {_fmt(m.get(k))}" for k in keys) + (" (budget hit)" if r.status == "budget" else ""))
            print(f"[{done}/{len(runs)}] {r.label}: {r.action}, {what} ({r.wall_seconds:.0f} s)", flush=True)
    except BaseException:
        for f in futures:
            f.cancel()
        stop_children()
        print(f"ganfast compare: interrupted; continue with --resume (finished runs are kept, the others "
              f"resume from their last checkpoints)", file=sys.stderr)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    rows, metrics = rows_of(runs)
    write_csv(rows, metrics, root / "compare.csv")
    write_markdown(rows, metrics, kind, args, root / "compare.md", command)
    write_plot(rows, metrics, root / "compare.png", f"ganfast compare on {args.data}: {args.seeds} seeds, "
               f"{runs[0].steps} steps" + (f", {args.budget_minutes:g} min budget" if args.budget_minutes else ""))
    failed = [r for r in runs if r.status == "failed"]
    print(f"ganfast compare: wrote {root / 'compare.csv'}, compare.md, compare.png "
          f"({time.perf_counter() - t0:.0f} s)" + (f"; {len(failed)} of {len(runs)} runs FAILED: "
                                                     + ", ".join(r.label for r in failed) if failed else ""))
    return 1 if failed else 0
