"""The benchmark suite's machinery (ganfast/bench/harness.py, ganfast/bench/suite.py) and one real
`ganfast bench --quick` run, as CI runs it. Nothing here asserts a speed: the run's numbers are
its output, not a test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ganfast
from ganfast.bench import harness as H
from ganfast.bench import suite as S

ROOT = Path(__file__).resolve().parents[1]


# ---- the harness -------------------------------------------------------------------------------------

def test_percentiles_interpolate_linearly():
    samples_ns = [5000, 1000, 4000, 2000, 3000]  # 1..5 us, unsorted
    med, p20, p80 = H.percentiles_us(samples_ns)
    assert (med, p20, p80) == pytest.approx((3.0, 1.8, 4.2))


def test_compare_accepts_agreement_and_reports_the_worst_relative_error():
    e = torch.tensor([1.0, -2.0, 4.0])
    worst = H.compare("x", [("loss", e + torch.tensor([0.0, 0.0, 4e-6]))], [("loss", e)], rtol=1e-5, atol_scale=1e-6)
    assert worst == pytest.approx(1e-6, rel=0.1)  # 4 + 4e-6 rounded to float32


def test_compare_names_the_disagreeing_output():
    e = [("loss", torch.tensor(1.0)), ("grad w", torch.ones(3))]
    got = [("loss", torch.tensor(1.0)), ("grad w", torch.tensor([1.0, 1.1, 1.0]))]
    with pytest.raises(H.Disagreement, match="grad w"):
        H.compare("ganfast[cpu]", got, e, rtol=1e-5, atol_scale=1e-6)
    with pytest.raises(H.Disagreement, match="missing"):
        H.compare("ganfast[cpu]", [("loss", torch.tensor(1.0)), ("grad w", None)], e, 1e-5, 1e-6)
    with pytest.raises(H.Disagreement, match="2 outputs"):
        H.compare("c", e, e[:1], 1e-5, 1e-6)


def test_check_against_float64_takes_eager_float32_noise_as_the_bar():
    torch.manual_seed(0)
    e64 = [("loss", torch.tensor(2.0, dtype=torch.float64)), ("grad", torch.randn(100, dtype=torch.float64))]
    noisy = [(w, (t * (1 + 1e-4 * torch.randn_like(t))).float()) for w, t in e64]  # eager float32's level
    eager_devs = H.deviations(noisy, e64)
    assert max(d for _, d in eager_devs) < 3e-4
    # 5x eager's noise passes; a wrong formula (a gradient off by 10%) does not
    five = [(w, (t * (1 + 5e-4 * torch.randn_like(t))).float()) for w, t in e64]
    assert H.check_against_float64("c", five, e64, eager_devs) < 3e-3
    wrong = [e64[0], ("grad", (e64[1][1] * 1.1).float())]
    with pytest.raises(H.Disagreement, match="grad: deviation from float64"):
        H.check_against_float64("c", wrong, e64, eager_devs)
    with pytest.raises(H.Disagreement, match="missing"):
        H.check_against_float64("c", [e64[0], ("grad", None)], e64, eager_devs)


def test_one_line_keeps_the_first_line_and_cuts():
    exc = RuntimeError("first line\nsecond line")
    assert H.one_line(exc) == "RuntimeError: first line"
    assert len(H.one_line(RuntimeError("x" * 500), limit=50)) == 50


def test_time_cpu_times_every_contender_with_enough_steps():
    calls = {"a": 0, "b": 0}

    def step(name):
        def f():
            calls[name] += 1
        return f

    cs = [H.Contender("a"), H.Contender("b")]
    H.time_cpu(cs, {"a": step("a"), "b": step("b")}, target_s=0.01, warmup_s=0.0, min_iters=6, rounds=3,
               warmup_n=2)
    for c in cs:
        assert c.iterations >= 6 and len(c.samples_ns) == c.iterations
        med, p20, p80 = c.stats_us
        assert 0 < p20 <= med <= p80
        assert calls[c.name] == c.iterations + 2  # warm-up steps are not samples


def _fake_do_bench(samples_ms, calls, has_all=True):
    """triton.testing.do_bench's interface on any machine: runs the step once, returns fixed times."""
    def do_bench(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, return_mode="mean"):
        calls.append(dict(warmup=warmup, rep=rep, quantiles=quantiles, return_mode=return_mode))
        if quantiles is None and return_mode == "all" and not has_all:
            raise AssertionError  # older tritons assert on an unknown return_mode
        fn()
        if quantiles is not None:
            s = sorted(samples_ms)
            return [s[len(s) // 2], s[1], s[-2]]  # what such a triton returns for [0.5, 0.2, 0.8]
        assert return_mode == "all"
        return list(samples_ms)
    return do_bench


def test_time_cuda_computes_percentiles_from_every_do_bench_sample(monkeypatch):
    """The GPU path (no GPU needed): do_bench's per-step times in ms become the same median / p20 /
    p80 in us that the CPU path computes, with the real iteration count and the warm-up passed on."""
    import triton.testing
    calls, ran = [], []
    monkeypatch.setattr(triton.testing, "do_bench", _fake_do_bench([1.0, 5.0, 2.0, 4.0, 3.0], calls))
    c = H.Contender("ganfast[cuda]", note="compiled")
    H.time_cuda([c], {"ganfast[cuda]": lambda: ran.append(1)}, rep_ms=100, warmup_ms=25)
    assert calls == [dict(warmup=25, rep=100, quantiles=None, return_mode="all")] and ran == [1]
    assert c.stats_us == pytest.approx((3000.0, 1800.0, 4200.0))
    assert c.iterations == 5 and len(c.samples_ns) == 5 and c.note == "compiled; do_bench"


def test_time_cuda_falls_back_to_do_bench_quantiles_on_an_older_triton(monkeypatch):
    import triton.testing
    calls = []
    monkeypatch.setattr(triton.testing, "do_bench", _fake_do_bench([1.0, 2.0, 3.0, 4.0, 5.0], calls, has_all=False))
    c = H.Contender("eager")
    H.time_cuda([c], {"eager": lambda: None}, rep_ms=50, warmup_ms=10)
    assert [k["quantiles"] for k in calls] == [None, [0.5, 0.2, 0.8]]
    assert c.stats_us == pytest.approx((3000.0, 2000.0, 4000.0))
    assert c.iterations == 50 // 3 and c.note == "do_bench"


def test_environment_names_the_device_and_versions():
    env = H.environment(torch.device("cpu"))
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["device_name"]
    assert "loadavg" in env["load_before"] or env["load_before"]


def test_copy_bandwidth_is_positive():
    assert H.copy_bandwidth_gbs(torch.device("cpu"), nbytes=1 << 20, quick=True) > 0


# ---- the runner on hand-made cases ------------------------------------------------------------------

def _toy_case(wrong_ganfast=False, compile_refuses=False):
    cases = S.load_cases_module()

    def make_step(impl):
        x = torch.linspace(-1, 1, 64, requires_grad=True)
        if impl == "compile" and compile_refuses:
            def step():
                raise RuntimeError("torch.compile with aot_autograd does not currently support double backward")
            return step

        def step():
            y = (x * 2).sum() + (1e-3 if impl == "ganfast" and wrong_ganfast else 0.0)
            y.backward()
            out = [("y", y.detach()), ("grad", x.grad)]
            x.grad = None
            return out
        return step

    return cases.Case("toy", "2x sum", "64", "y = (2x).sum()", make_step)


def test_run_case_verifies_times_and_counts_every_contender():
    res = S.run_case(_toy_case(), torch.device("cpu"), ["reference"], use_compile=False, quick=True, count=True)
    assert not res["failures"]
    rows = {r["contender"]: r for r in res["rows"]}
    assert set(rows) == {"eager", "ganfast[reference]"}
    for r in rows.values():
        assert r["error"] is None and r["median_us"] > 0 and r["iterations"] >= 3
        assert r["ops"] > 0 and r["bytes_read"] > 0 and r["bytes_written"] > 0
    assert rows["eager"]["speedup_vs_eager"] == pytest.approx(1.0)


def test_run_case_refuses_to_time_a_contender_that_disagrees():
    res = S.run_case(_toy_case(wrong_ganfast=True), torch.device("cpu"), ["reference"], use_compile=False,
                     quick=True, count=False)
    assert len(res["failures"]) == 1 and "y" in res["failures"][0]
    row = next(r for r in res["rows"] if r["contender"] == "ganfast[reference]")
    assert row["median_us"] is None and "DISAGREES" in row["error"]


def test_run_case_records_a_compile_refusal_as_its_row():
    res = S.run_case(_toy_case(compile_refuses=True), torch.device("cpu"), [], use_compile=True, quick=True,
                     count=False)
    row = next(r for r in res["rows"] if r["contender"] == "torch.compile")
    assert row["median_us"] is None and row["error"].startswith("refused: RuntimeError: torch.compile")
    assert not res["failures"]
    text = S.markdown({"quick": True, "device": "cpu", "device_name": "cpu", "torch": "t", "torch_cuda": None,
                       "triton": "t", "ganfast": "g", "python": "p", "torch_num_threads": 1, "command": "c",
                       "started": "s", "wall_s": 1.0, "timing": "x", "backends": [], "backends_skipped": {},
                       "load_before": "", "load_after": ""}, [res])
    assert "refused: RuntimeError: torch.compile" in text and "| toy | 2x sum | 64 | eager |" in text


def test_select_filters_by_family_or_name_and_rejects_unknown_words():
    cases = S.load_cases_module().cases(torch.device("cpu"), quick=True)
    assert {c.family for c in S.select(cases, "penalty")} == {"penalty"}
    assert all("WGAN-GP" in c.name for c in S.select(cases, "wgan-gp"))
    assert S.select(cases, None) == cases
    with pytest.raises(ValueError, match="matches no case; families: bias_act, block, cycle_loss, instance_norm_act, losses, "
                                         "orthogonal_regularization, penalty, spectral_norm, step"):
        S.select(cases, "nothing-like-this")


def test_the_suite_covers_every_family_and_the_eight_training_steps():
    for quick in (True, False):
        cases = S.load_cases_module().cases(torch.device("cpu"), quick=quick)
        assert {c.family for c in cases} == {"losses", "cycle_loss", "orthogonal_regularization", "penalty", "bias_act",
                                            "block", "instance_norm_act", "spectral_norm", "step"}
        steps = {c.name for c in cases if c.family == "step"}
        assert steps == {"DCGAN non-saturating step", "DCGAN WGAN-GP step", "DCGAN lazy R1 step",
                         "MLP WGAN-GP step on ring8", "InfoGAN step", "CycleGAN step", "SAGAN D step",
                         "SAGAN G step"}
    assert {c.size for c in S.select(cases, "infogan step,cyclegan step")} == {
        "B=64, 1x32x32, width 64, 10 cat + 2 cont codes", "B=8 per domain, 1x32x32, width 32, 6 blocks"}
    assert {c.size for c in S.select(cases, "sagan")} == {"B=64, 1x32x32, ch 32, 10 classes, attention 16"}


def test_the_cases_ship_in_the_package_so_any_install_has_the_suite():
    from ganfast.bench import cases

    assert S.load_cases_module() is cases
    assert Path(cases.__file__).parent == Path(ganfast.__file__).parent / "bench"


def test_a_suite_directory_of_ones_own_is_loaded_and_a_missing_one_named(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no benchmark cases at .*cases.py.*built into ganfast"):
        S.load_cases_module(str(tmp_path))
    (tmp_path / "cases.py").write_text(
        "from ganfast.bench.cases import Case\n"
        "def cases(device, quick=False):\n"
        "    return [Case('mine', 'my op', '1', 'detail', lambda impl, **kw: (lambda: []))]\n")
    mine = S.load_cases_module(str(tmp_path))
    assert [c.family for c in mine.cases(torch.device("cpu"))] == ["mine"]
    monkeypatch.setenv("GANFAST_BENCHMARKS", str(tmp_path))
    assert S.load_cases_module().cases(torch.device("cpu"))[0].name == "my op"


def test_results_go_to_ganfast_bench_in_the_current_directory_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert S.main(["--quick", "--only", "losses", "--device", "cpu", "--no-compile", "--no-count"]) == 0
    report = json.loads((tmp_path / "ganfast-bench" / "suite-quick.json").read_text())
    assert {r["family"] for r in report["results"]} == {"losses"}  # the GAN losses and info_loss
    assert sorted(p.name for p in (tmp_path / "ganfast-bench").iterdir()) == [
        "suite-quick.json", "suite-quick.md", "suite-quick.png"]


# ---- `ganfast bench --quick`, as CI runs it ------------------------------------------------------------

def _run_bench_quick(out_dir, device):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # a user's run: triton is timed on a GPU only
    proc = subprocess.run([sys.executable, "-m", "ganfast.cli", "bench", "--quick", "--device", device,
                           "--out", str(out_dir)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)  # cold: 4.6 min on 2 quiet cores (2 of them compiling the SAGAN steps), 6.5 loaded
    assert proc.returncode == 0, f"ganfast bench --quick failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"


def _check_quick_report(out_dir, device, ganfast_rows):
    """The report of one `ganfast bench --quick` run: every family, every contender verified, timed
    and counted, torch.compile's double-backward refusals as their rows. Returns the metadata."""
    report = json.loads((out_dir / "suite-quick.json").read_text())
    assert (out_dir / "suite-quick.png").stat().st_size > 10_000
    md = (out_dir / "suite-quick.md").read_text()
    meta, results = report["meta"], report["results"]
    assert meta["device"] == device and meta["torch"] == torch.__version__ and meta["copy_gbs"] > 0
    assert {r["family"] for r in results} == {"losses", "cycle_loss", "orthogonal_regularization", "penalty", "bias_act",
                                              "block", "instance_norm_act", "spectral_norm", "step"}
    for res in results:
        rows = {r["contender"]: r for r in res["rows"]}
        assert not res["failures"], res["failures"]
        for name in ("eager", *ganfast_rows):
            r = rows[name]
            assert r["error"] is None and r["median_us"] > 0, (res["case"], name, r)
            assert r["p20_us"] <= r["median_us"] <= r["p80_us"] and r["iterations"] >= 1
            assert r["ops"] > 0 and r["bytes_read"] + r["bytes_written"] > 0, (res["case"], name, r)
        c = rows["torch.compile"]
        double_backward = "double backward" in res["name"] or (
            res["family"] == "step" and ("WGAN-GP" in res["name"] or "R1" in res["name"]))
        if double_backward:  # torch.compile refuses the penalty's double backward: its error is the row
            assert c["median_us"] is None and "double backward" in c["error"], c
        elif res["family"] == "spectral_norm":  # torch 2.14.1's compiled parametrization disagrees with eager
            assert c["median_us"] is None and "disagrees with eager" in c["error"], c
        else:
            assert c["error"] is None and c["median_us"] > 0, (res["case"], c)
        assert res["name"] in md
        if res["name"] in ("InfoGAN step", "CycleGAN step"):  # the fused ops replace eager's
            assert 0 < rows[ganfast_rows[0]]["ops"] < rows["eager"]["ops"], res["case"]
    return meta


@pytest.mark.slow
def test_ganfast_bench_quick_runs_verifies_and_writes_its_report(tmp_path):
    _run_bench_quick(tmp_path, "cpu")
    meta = _check_quick_report(tmp_path, "cpu", ["ganfast[cpu]"])
    print(f"\nganfast bench --quick: {meta['wall_s']:.0f} s")


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: times the CUDA and Triton backends with CUDA events")
def test_ganfast_bench_quick_on_a_gpu_times_cuda_and_triton_with_do_bench(tmp_path):
    _run_bench_quick(tmp_path, "cuda")
    info = ganfast.available_backends()
    expected = [f"ganfast[{b}]" for b in ("cuda", "triton") if info[b].available]
    assert expected, "a GPU is visible but neither the CUDA nor the Triton backend is available"
    meta = _check_quick_report(tmp_path, "cuda", expected)
    assert meta["gpu"] and "CUDA events" in meta["timing"]
    report = json.loads((tmp_path / "suite-quick.json").read_text())
    for res in report["results"]:
        for r in res["rows"]:
            if r["median_us"] is not None:
                assert "do_bench" in (r["note"] or ""), (res["case"], r)
                assert r["iterations"] >= 1
            if r["achieved_gbs"] is not None:
                assert r["achieved_gbs"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no GPU is visible")
def test_ganfast_bench_on_cuda_without_a_gpu_says_so(capsys, tmp_path):
    assert S.main(["--device", "cuda", "--quick", "--out", str(tmp_path)]) == 2
    assert "no GPU is visible" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_sagan_step_cases_use_the_engines_sagan_optimizer_settings():
    from ganfast.train.config import MODEL_DEFAULTS
    C = S.load_cases_module()
    d = MODEL_DEFAULTS["sagan"]
    assert (C.SAGAN_LR_D, C.SAGAN_LR_G, C.SAGAN_BETAS) == (d["lr_d"], d["lr_g"], d["betas"])
