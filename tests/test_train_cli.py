"""The `ganfast` command end to end (subprocesses of `python -m ganfast.cli`, as the console
script runs it) on a tiny budget, its errors, and `ganfast train --help`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ganfast import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "4", "--width", "16", "--depth", "2", "--batch-size", "16", "--eval-samples", "100",
        "--no-progress"]


# tiny models: one intra-op thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "ganfast.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_train_resume_sample_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    r = run("train", *TINY, "--out", str(out), "--objective", "hinge", "--seed", "3")
    assert r.returncode == 0, r.stderr
    # the printed summary, and the files it names
    assert "ganfast train: hinge on ring8: step 4" in r.stdout
    assert "modes captured" in r.stdout and "high-quality samples" in r.stdout
    for name in ("config.toml", "checkpoint.pt", "metrics.jsonl", "samples.png", "training.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["objective"], summary["seed"], summary["steps"]) == ("hinge", 3, 4)

    # an existing --out: a clear error, nothing touched
    before = (out / "checkpoint.pt").read_bytes()
    assert cli.main(["train", *TINY, "--out", str(out)]) == 1  # in-process: the same main()
    err = capsys.readouterr().err
    assert "already exists" in err and "--resume" in err and "--overwrite" in err
    assert (out / "checkpoint.pt").read_bytes() == before

    # --resume continues the saved run (its objective and seed) to the new --steps
    r = run("train", "--out", str(out), "--resume", "--steps", "6", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "hinge on ring8: step 6 (2 this run" in r.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 6

    # ganfast sample: .npy and .png
    assert cli.main(["sample", "--ckpt", str(out), "--n", "25", "--out", str(tmp_path / "s.npy")]) == 0
    assert "wrote 25 samples" in capsys.readouterr().out
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (25, 2) and np.isfinite(x).all()
    assert cli.main(["sample", "--ckpt", str(out / "checkpoint.pt"), "--n", "10", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["sample", "--ckpt", str(out), "--n", "10", "--out", str(tmp_path / "s.txt")]) == 1
    assert ".png or .npy" in capsys.readouterr().err


def test_config_file_and_overwrite(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nobjective = "least_squares"\nsteps = 3\nwidth = 16\nbatch_size = 16\n'
                   'eval_samples = 100\nprogress = false\n')
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(cfg), "--out", str(out), "--seed", "5"]) == 0
    assert "least_squares on ring8: step 3" in capsys.readouterr().out
    assert cli.main(["train", "--config", str(cfg), "--out", str(out), "--overwrite", "--steps", "2"]) == 0
    assert "least_squares on ring8: step 2" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["seed"] == 0  # --overwrite: a new run


@pytest.mark.parametrize("args, code, message", [
    (["train", "--objective", "wgan-qp"], 2, "invalid choice: 'wgan-qp' (choose from 'nonsaturating', 'minimax'"),
    (["train", "--data", "mnist"], 2, "unknown data set 'mnist'; choose one of ring8, grid25, digits, digits-bold, folder:PATH"),
    (["train", "--stepz", "3"], 2, "unrecognized argument(s): --stepz 3\nvalid flags for 'ganfast train': --amp,"),
    (["train", "--steps", "0"], 2, "expected a positive integer; got 0"),
    (["train", "--backend", "tpu"], 2, "invalid choice: 'tpu'"),
    (["sample", "--n", "3"], 2, "the following arguments are required: --ckpt, --out"),
    (["bogus"], 2, "invalid choice: 'bogus'"),
])
def test_cli_errors(args, code, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == code
    assert message in capsys.readouterr().err


def test_cli_runtime_errors(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "x"), "--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(tmp_path / "missing.toml")]) == 1
    assert "config file not found" in capsys.readouterr().err
    assert cli.main(["sample", "--ckpt", str(tmp_path / "none"), "--out", str(tmp_path / "a.npy")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_train_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    parser = cli.build_parser()
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    flags = [a for a in train._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 40
    for action in flags:
        assert action.help and len(action.help) > 10, action.option_strings
        assert action.option_strings[0] in text
    from ganfast.train import TrainConfig
    # every configuration field has a flag (config is the file flag itself)
    dests = {a.dest for a in flags}
    assert set(TrainConfig.field_names()) <= dests | {"resume", "overwrite"}


def test_subcommands_registry_and_console_script():
    assert {"train", "sample"} <= set(cli.COMMANDS)
    try:
        import tomllib
    except ImportError:  # pragma: no cover
        import tomli as tomllib
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["ganfast"].split(":")
    import importlib

    assert getattr(importlib.import_module(module), func) is cli.main


# ---- damaged checkpoints: the plain message, on --resume and on ganfast sample -----------------------

def _damage(kind, good: Path, path: Path):
    """Write into `path` the checkpoint `good` damaged as `kind` says."""
    import torch

    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "flipped bytes":  # the zip's central directory at the end overwritten
        path.write_bytes(data[:-200] + bytes(200))
    elif kind == "a text file":
        path.write_text("not a checkpoint\n")
    elif kind == "a tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "another format":
        torch.save({"format": "something/2", "weights": {}}, path)
    elif kind == "missing parts":
        ck = torch.load(good, weights_only=False)
        del ck["G_ema"], ck["opt_d"]
        torch.save(ck, path)
    elif kind == "weights of another model":
        ck = torch.load(good, weights_only=False)
        ck["G_ema"] = {k: torch.cat([v, v]) if v.dim() else v for k, v in ck["G_ema"].items()}
        ck["G"] = ck["G_ema"]
        torch.save(ck, path)
    else:
        raise AssertionError(kind)


DAMAGE = {  # kind -> what the message says after "is not a ganfast checkpoint or is damaged: "
    "truncated": "torch.load cannot read its",
    "empty": "the file is empty",
    "flipped bytes": "torch.load cannot read its",
    "a text file": "torch.load cannot read its",
    "a tensor": "it holds a Tensor, not a ganfast training checkpoint",
    "another format": "it has format 'something/2', not a 'ganfast.train/1' record",
    "missing parts": "it lacks opt_d, G_ema",
    "weights of another model": "its G does not fit the model its configuration describes (RuntimeError: Error(s) "
                                "in loading state_dict",
}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "run"
    assert cli.main(["train", *TINY, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_plainly_by_resume_and_sample(kind, good_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(good_run, run_dir)
    _damage(kind, good_run / "checkpoint.pt", run_dir / "checkpoint.pt")
    capsys.readouterr()
    expected = f"{run_dir / 'checkpoint.pt'} is not a ganfast checkpoint or is damaged: "
    assert cli.main(["sample", "--ckpt", str(run_dir), "--n", "4", "--out", str(tmp_path / "s.npy")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ganfast sample: error: ganfast.train: " + expected), err
    message = DAMAGE[kind].replace("its G does", "its G_ema does")
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "s.npy").exists()
    before = (run_dir / "checkpoint.pt").read_bytes()
    assert cli.main(["train", "--out", str(run_dir), "--resume", "--steps", "6", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ganfast train: error: ganfast.train: " + expected), err
    assert DAMAGE[kind] in err
    assert (run_dir / "checkpoint.pt").read_bytes() == before  # nothing written over it


# ---- ganfast --version / ganfast.show_config() -------------------------------------------------------

def test_version_prints_the_install_for_bug_reports():
    import ganfast
    import torch

    for argv in (["-m", "ganfast", "--version"], ["-m", "ganfast.cli", "--version"]):
        r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, GANFAST_BACKEND="cpu"))
        assert r.returncode == 0, r.stderr
        text = r.stdout
        assert text.startswith(f"ganfast {ganfast.__version__}: ")
        assert f"\n  torch         {torch.__version__} (CUDA " in text
        info = ganfast._C._build_info()
        assert f"built with\n  torch         {info['torch']}" in text
        if info["cuda"]:
            assert f"for TORCH_CUDA_ARCH_LIST={info['cuda_archs']}" in text
        else:
            assert f"CUDA kernels  not compiled: {info['cuda_skipped']}" in text
        for name in ("auto", "cuda", "triton", "cpu", "reference"):
            assert f"\n  {name:<13} " in text
        assert "GANFAST_BACKEND=cpu" in text


def test_show_config_is_the_same_report_and_its_dict_is_json():
    import io

    import ganfast
    from ganfast import buildinfo

    buf = io.StringIO()
    ganfast.show_config(file=buf)
    info = buildinfo.config()
    json.dumps(info)
    assert buf.getvalue().strip() == buildinfo.format_config(info)
    assert info["backends"]["cpu"]["available"] and info["built"]["python"]
    assert info["cpu"]["cores"] >= 1


def test_version_is_the_package_metadata():
    import importlib.metadata

    import ganfast

    assert importlib.metadata.version("ganfast") == ganfast.__version__


@pytest.mark.parametrize("archs, capability, runs_as", [
    ("8.0;9.0+PTX", (8, 0), "sm_80"),
    ("8.0;9.0+PTX", (8, 6), "sm_80"),            # same major: sm_80 machine code runs on sm_86
    ("8.0;9.0+PTX", (9, 0), "sm_90"),
    ("8.0;9.0+PTX", (10, 0), "PTX 9.0 (JIT-compiled at first launch)"),
    ("8.0;9.0", (10, 0), None),                    # no PTX: a newer major has nothing to run
    ("8.0;9.0+PTX", (7, 5), None),
    ("8.6 9.0a", (9, 0), "sm_90"),
])
def test_which_compiled_architecture_a_gpu_runs(archs, capability, runs_as):
    from ganfast.buildinfo import arch_runs_on

    assert arch_runs_on(archs, capability) == runs_as
