"""`ganfast compare`: every objective x seed as its own `ganfast train` run, then compare.csv / .md / .png.

Kept short (tiny ring8 runs of a few dozen steps, 200 evaluation samples): the whole file takes
about a minute on 2 CPU cores, most of it the Python start-up of each run's process.
"""
from __future__ import annotations

import csv
import json
import shutil
import statistics
import time
from pathlib import Path

import pytest

from ganfast import cli, compare
from ganfast.train import TrainConfig, Trainer

STEPS = 30
TINY = "--eval-samples 200 --log-every 10"


def _compare(out, *extra) -> int:
    return cli.main(["compare", "--data", "ring8", "--steps", str(STEPS), "--out", str(out),
                     "--train-args", TINY, *extra])


def _rows(out) -> list[dict]:
    with open(Path(out) / "compare.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished comparison: nonsaturating and hinge x seeds 0 and 1, two runs at once."""
    out = tmp_path_factory.mktemp("cmp") / "ring8"
    rc = _compare(out, "--objectives", "nonsaturating,hinge", "--seeds", "2", "--jobs", "2", "--threads", "1")
    return out, rc


def test_end_to_end_outputs(finished):
    out, rc = finished
    assert rc == 0
    rows = _rows(out)
    assert [(r["model"], r["objective"], r["seed"]) for r in rows] == [
        ("mlp", "nonsaturating", "0"), ("mlp", "nonsaturating", "1"), ("mlp", "hinge", "0"), ("mlp", "hinge", "1")]
    cols = list(rows[0])
    assert cols[:len(compare.BASE_COLUMNS)] == compare.BASE_COLUMNS
    # every numeric final metric, flattened; the per-mode counts (lists) left out
    for m in ("ema.modes", "ema.high_quality", "ema.n_modes", "raw.modes", "raw.high_quality"):
        assert m in cols
    assert not any("per_mode" in c for c in cols)
    for r in rows:
        assert r["status"] == "ok" and r["action"] == "trained" and r["error"] == ""
        assert int(r["steps"]) == STEPS == int(r["steps_requested"])
        assert float(r["train_seconds"]) > 0 and float(r["wall_seconds"]) > 0
        run_dir = Path(r["out"])
        # each an ordinary ganfast train run, where the README says
        assert run_dir == out / f"mlp-{r['objective']}" / f"seed{r['seed']}"
        for f in ("config.toml", "checkpoint.pt", "metrics.jsonl", "summary.json", "samples.png"):
            assert (run_dir / f).is_file(), f
        s = json.loads((run_dir / "summary.json").read_text())
        assert s["seed"] == int(r["seed"]) and s["objective"] == r["objective"]
        assert float(r["ema.high_quality"]) == s["metrics_ema"]["high_quality"]
        assert Path(r["log"]).is_file()
    # the PNG: box plots were drawn
    png = out / "compare.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_markdown_median_min_max(finished):
    out, _ = finished
    rows = _rows(out)
    md = (out / "compare.md").read_text()
    for obj in ("nonsaturating", "hinge"):
        for m in ("ema.modes", "ema.high_quality", "raw.modes"):
            vals = [float(r[m]) for r in rows if r["objective"] == obj]
            med, lo, hi = statistics.median(vals), min(vals), max(vals)
            line = next(ln for ln in md.splitlines() if ln.startswith(f"| mlp-{obj} | {m} |"))
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert [float(c) for c in cells[3:6]] == pytest.approx([med, lo, hi], abs=5e-4), line
            assert cells[6] == "2"
    assert "| mlp-nonsaturating | 2/2 |" in md
    # the best run: most modes, then most high-quality samples
    best = max(rows, key=lambda r: (float(r["ema.modes"]), float(r["ema.high_quality"]), -int(r["seed"])))
    assert f"**{best['run']}**" in md


def test_resume_runs_only_the_missing_work(finished, tmp_path):
    src, _ = finished
    out = tmp_path / "ring8"
    shutil.copytree(src, out)
    done = {p: (out / p / "summary.json").stat().st_mtime_ns for p in ("mlp-nonsaturating/seed0", "mlp-hinge/seed0")}
    # nonsaturating seed 1: never started; hinge seed 1: interrupted at step 10 of 30 (a checkpoint, no summary)
    shutil.rmtree(out / "mlp-nonsaturating" / "seed1")
    part = out / "mlp-hinge" / "seed1"
    shutil.rmtree(part)
    Trainer(TrainConfig(data="ring8", objective="hinge", seed=1, steps=STEPS, out=str(part), eval_samples=200,
                        log_every=10, threads=1, progress=False)).fit(until=10)
    (part / "summary.json").unlink()
    # without --resume (or --overwrite) the comparison's directory is not touched
    assert _compare(out, "--objectives", "nonsaturating,hinge", "--seeds", "2") == 1
    rc = _compare(out, "--objectives", "nonsaturating,hinge", "--seeds", "2", "--resume", "--jobs", "2")
    assert rc == 0
    rows = {r["run"]: r for r in _rows(out)}
    for p, mtime in done.items():
        assert rows[p]["action"] == "skipped" and rows[p]["status"] == "ok"
        assert (out / p / "summary.json").stat().st_mtime_ns == mtime  # not retrained
    assert rows["mlp-nonsaturating/seed1"]["action"] == "trained" and rows["mlp-nonsaturating/seed1"]["status"] == "ok"
    r = rows["mlp-hinge/seed1"]
    assert r["action"] == "resumed" and r["status"] == "ok" and int(r["steps"]) == STEPS
    s = json.loads((part / "summary.json").read_text())
    assert s["steps"] == STEPS and s["trained_steps_this_run"] == STEPS - 10  # continued, not restarted
    assert "--resume" in (out / "logs" / "mlp-hinge-seed1.log").read_text()


def test_compare_json_and_resume_with_other_settings_refused(finished, tmp_path, capsys):
    src, _ = finished
    saved = json.loads((src / "compare.json").read_text())
    assert saved["data"] == "ring8" and saved["steps"] == STEPS and saved["train_args"] == TINY.split()
    assert saved["objectives"] == ["hinge", "nonsaturating"] and saved["seeds"] == [0, 1]
    assert saved["models"] == ["mlp"] and saved["command"].startswith("ganfast compare")
    out = tmp_path / "ring8"
    shutil.copytree(src, out)
    capsys.readouterr()
    rc = cli.main(["compare", "--data", "ring8", "--steps", str(STEPS), "--out", str(out), "--objectives", "hinge",
                   "--seeds", "2", "--resume", "--train-args", "--eval-samples 300 --log-every 10"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "is a comparison with other settings (train_args:" in err and "'--eval-samples', '300'" in err
    # the same settings, fewer objectives: nothing to train, and compare.json says what this call compared
    assert _compare(out, "--objectives", "hinge", "--seeds", "2", "--resume") == 0
    assert json.loads((out / "compare.json").read_text())["objectives"] == ["hinge"]


def test_failed_run_reported_and_exit_code(tmp_path, capsys):
    out = tmp_path / "fail"
    # label smoothing has no meaning for hinge: the engine rejects that run
    rc = cli.main(["compare", "--data", "ring8", "--objectives", "hinge", "--seeds", "1", "--steps", "5",
                   "--out", str(out), "--train-args", "--label-smoothing 0.1 --eval-samples 100"])
    assert rc == 1
    (row,) = _rows(out)
    assert row["status"] == "failed" and row["run"] == "mlp-hinge/seed0"
    assert "label_smoothing" in row["error"] and "exit code 1" in row["error"]
    md = (out / "compare.md").read_text()
    assert "1 run(s) failed" in md and "label_smoothing" in md
    assert (out / "compare.png").is_file()
    assert "FAILED" in capsys.readouterr().out


def test_failed_run_among_others(tmp_path, monkeypatch):
    """A run that crashes is a row with its error; the others are still compared."""
    real = compare.execute

    def execute(run, args, threads):
        if run.seed == 1:
            run.action, run.status, run.error = "trained", "failed", "exit code 3: boom"
            return run
        run.summary = {"steps": run.steps, "metrics_ema": {"modes": 7, "n_modes": 8, "high_quality": 0.9,
                                                          "per_mode": [1] * 8, "fd": {"x": 1.5}}}
        run.status, run.action = "ok", "trained"
        return run

    monkeypatch.setattr(compare, "execute", execute)
    out = tmp_path / "mixed"
    rc = _compare(out, "--objectives", "wgan", "--seeds", "2")
    assert rc == 1 and real is not execute
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[1]["error"] == "exit code 3: boom" and rows[1]["ema.modes"] == ""
    assert rows[0]["ema.fd.x"] == "1.5"  # nested dicts flattened with dots
    md = (out / "compare.md").read_text()
    assert "| mlp-wgan | 1/2 |" in md and "boom" in md


@pytest.mark.parametrize("argv, words", [
    (["--objectives", "nonsaturating,bogus"], ["--objectives", "bogus"]),
    (["--seeds", "0"], ["--seeds"]),
    (["--jobs", "0"], ["--jobs"]),
    (["--budget-minutes", "-1"], ["--budget-minutes"]),
    (["--models", "stylegan"], ["--models", "stylegan"]),
    (["--data", "mnist"], ["--data", "mnist"]),
])
def test_bad_arguments_named(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        cli.main(["compare", "--out", str(tmp_path / "x"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv, words", [
    (["--models", "dcgan,sagan"], ["--models", "2-D data"]),
    (["--train-args", "--seed 3"], ["--train-args", "--seed"]),
    (["--resume", "--overwrite"], ["--resume", "--overwrite"]),
])
def test_bad_combinations_named(tmp_path, capsys, argv, words):
    assert cli.main(["compare", "--out", str(tmp_path / "x"), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ganfast compare: error:")
    for w in words:
        assert w in err


def test_objectives_all_and_models_cross_product(tmp_path):
    from ganfast.train.objectives import OBJECTIVES

    p = cli.build_parser()
    args = p.parse_args(["compare", "--objectives", "all", "--seeds", "3", "--out", str(tmp_path)])
    runs = compare.plan(args)
    assert [r.objective for r in runs[::3]] == list(OBJECTIVES) and len(runs) == 3 * len(OBJECTIVES)
    assert runs[0].steps == TrainConfig(data="ring8").resolve().steps  # the engine's default
    args = p.parse_args(["compare", "--data", "digits", "--models", "dcgan,sagan", "--objectives",
                         "hinge,wgan-gp", "--seeds", "1", "--steps", "7", "--out", str(tmp_path)])
    runs = compare.plan(args)
    assert [r.name for r in runs] == ["dcgan-hinge", "dcgan-wgan-gp", "sagan-hinge", "sagan-wgan-gp"]
    cmd = compare.train_command(runs[2], args, 2, resume=False)
    assert cmd[cmd.index("--model") + 1] == "sagan" and cmd[cmd.index("--objective") + 1] == "hinge"
    assert cmd[cmd.index("--threads") + 1] == "2" and "--overwrite" in cmd
    # models alone: each model's own default objective
    args = p.parse_args(["compare", "--data", "digits", "--models", "dcgan,biggan", "--seeds", "1",
                         "--out", str(tmp_path)])
    assert [r.name for r in compare.plan(args)] == ["dcgan-nonsaturating", "biggan-hinge"]


def test_parallelism_defaults(monkeypatch):
    monkeypatch.setattr(compare.os, "cpu_count", lambda: 8)
    assert compare.default_parallelism(True, None, None) == (8, 1)
    assert compare.default_parallelism(False, None, None) == (1, 8)
    assert compare.default_parallelism(True, 2, None) == (2, 4)
    assert compare.default_parallelism(True, None, 3) == (2, 3)


def test_directions_and_best():
    assert compare.direction("ema.modes") == "higher" and compare.direction("raw.recall") == "higher"
    assert compare.direction("ema.fd") == "lower" and compare.direction("ema.mode_kl") == "lower"
    assert compare.direction("ema.kl_uniform") == "lower" and compare.direction("ema.precision") == "higher"
    assert compare.direction("loss_x") is None
    rows = [{"seed": 0, "status": "ok", "ema.fd": 3.0}, {"seed": 1, "status": "ok", "ema.fd": 2.0},
            {"seed": 2, "status": "failed"}]
    keys = compare.primary_metrics(["ema.fd", "ema.classes"], "images")
    assert keys == ["ema.fd"] and compare.best_row(rows, keys)["seed"] == 1
    assert compare.primary_metrics(["ema.classes", "ema.class_agreement"], "images") == [
        "ema.class_agreement", "ema.classes"]
    m = compare.flatten_metrics({"metrics_ema": {"modes": 8, "per_mode": [1, 2], "recall": 0.5, "x": None},
                                 "metrics_raw": None, "metrics": {"cycle_l1_a": 0.1}})
    assert m == {"ema.modes": 8, "ema.recall": 0.5, "cycle_l1_a": 0.1}


def test_max_minutes_stops_the_run(tmp_path):
    """TrainConfig.max_minutes: the run stops at the budget, evaluated and checkpointed; resumable."""
    out = tmp_path / "budget"
    cfg = TrainConfig(data="ring8", steps=10**6, out=str(out), eval_samples=100, max_minutes=0.01,
                      log_every=10, progress=False)
    t0 = time.perf_counter()
    s = Trainer(cfg).fit()
    assert time.perf_counter() - t0 < 30
    assert s["stopped"] == "budget" and s["steps_requested"] == 10**6 and 0 < s["steps"] < 10**6
    assert s["max_minutes"] == 0.01 and s["train_seconds_total"] >= 0.6
    assert s["eval_step"] == s["steps"] and "modes" in s["metrics_ema"]  # evaluated at the stop
    import torch
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == s["steps"] and ckpt["train_seconds"] >= 0.6
    # the budget counts over resumes: a resumed run that has spent it stops after one step
    s2 = Trainer(TrainConfig(data="ring8", out=str(out), resume=True, progress=False)).fit()
    assert s2["steps"] == s["steps"] + 1 and s2["stopped"] == "budget"
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(max_minutes=0).validate()


def test_stop_children_interrupts_the_train_processes():
    """Interrupting compare (Ctrl-C, or SIGTERM to its process) stops the runs it started."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    compare._CHILDREN.add(p)
    try:
        compare.stop_children(grace=5)
        assert p.poll() is not None
        assert compare._STOPPING.is_set()
    finally:
        compare._CHILDREN.discard(p)
        compare._STOPPING.clear()
        if p.poll() is None:
            p.kill()
