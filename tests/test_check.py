"""`ganfast check`: its case list, its comparison, and the command, on this machine's CPU backends.

The check's own correctness is shown by planting bugs (a wrong value, a wrong gradient, a wrong
second derivative, a non-deterministic result) in one backend and seeing the command fail, naming
the row and the fallback. The GPU runs the same cases under pytest in test_gpu_check.py.
"""
import dataclasses
import json
import re

import pytest
import torch

import ganfast
import ganfast.ops
from ganfast import check
from ganfast.cli import main

SMALL_OPS = ["gan_d_loss", "interpolate", "penalty_from_grad"]


def _run(*argv):
    return main(["check", *argv])


# ---- the case list ----------------------------------------------------------------------------


def test_cases_cover_every_op_at_small_and_production_shapes():
    for op in ganfast.ops.__all__:
        sizes = {c.size for c in check.CASES if c.op == op}
        assert {"small", "production"} <= sizes, f"{op}: sizes {sizes}"
    assert {c.op for c in check.CASES if c.size == "huge"}, "no case needs 64-bit indexing"
    assert all(math_prod(c.shape) > 2 ** 31 for c in check.CASES if c.size == "huge")
    promised = {c.op for c in check.CASES if c.double_backward}
    assert {"interpolate", "penalty_from_grad", "bias_act"} <= promised
    variants = {c.variant for c in check.CASES if c.op == "batch_norm_act"}
    assert any("train" in v for v in variants) and any("eval" in v for v in variants)
    assert len({c.key for c in check.CASES}) == len(check.CASES), "two cases share a key"


def math_prod(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def test_skip_reasons_on_cpu():
    huge = next(c for c in check.CASES if c.size == "huge")
    production = next(c for c in check.CASES if c.size == "production")
    cpu = torch.device("cpu")
    assert "GPU" in check.skip_reason(huge, "cuda", torch.float16, cpu, quick=False)
    assert "--quick" in check.skip_reason(huge, "cuda", torch.float16, cpu, quick=True)
    assert "interpreter" in check.skip_reason(production, "triton", torch.float32, cpu, quick=False)
    assert check.skip_reason(production, "cpu", torch.float32, cpu, quick=True) is None
    assert "float16 only" in check.skip_reason(huge, "cuda", torch.float32, cpu, quick=False)


# ---- the comparison ----------------------------------------------------------------------------


def test_compare_scales_atol_with_the_tensor_and_rounds_the_reference_once():
    e = torch.tensor([1e-6, -2e-6, 3e-6], dtype=torch.float64)
    got = e.float()
    assert check.compare(got, e)[0] == 0.0  # rounded to float32 first: the same numbers
    # 1e-10 off on values of 1e-6: atol x max|e| is 3e-12, rtol x |e| 1e-11 -> too far
    error, tol, rule = check.compare(got + torch.tensor([0.0, 1e-10, 0.0]), e)
    assert error > tol and rule == "element"
    big = torch.tensor([1e3, 1e-3], dtype=torch.float64)
    # an error of 5e-4 beside a value of 1e3 is within atol x 1e3 = 1e-3
    error, tol, _ = check.compare(big.float() + torch.tensor([0.0, 5e-4]), big)
    assert error <= tol


def test_compare_half_subnormals_and_nan():
    e = torch.tensor([3e-7, 1.0], dtype=torch.float64)  # 3e-7 is subnormal in float16
    one_ulp = torch.tensor([torch.finfo(torch.float16).tiny * torch.finfo(torch.float16).eps, 0.0])
    error, tol, _ = check.compare((e.half().float() + one_ulp).half(), e)
    assert 0 < error <= tol
    nan = torch.tensor([float("nan"), 1.0], dtype=torch.float64)
    assert check.compare(nan.float(), nan)[0] == 0.0  # nan where the reference has nan
    error, tol, _ = check.compare(torch.tensor([float("nan"), 1.0]), torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert error > tol


def test_compare_in_chunks_agrees_with_one_pass(monkeypatch):
    """The 2^31-element sizes are compared in chunks; chunks of 7 give the same answer as one."""
    gen = torch.Generator().manual_seed(0)
    e = torch.randn(1000, generator=gen, dtype=torch.float64)
    got = (e * (1 + 1e-6 * torch.randn(1000, generator=gen, dtype=torch.float64))).float()
    got[613] = float("nan")
    whole = check.compare(got, e), check.compare(got, e, torch_error=1.0)
    monkeypatch.setattr(check, "CHUNK", 7)
    assert (check.compare(got, e), check.compare(got, e, torch_error=1.0)) == whole
    assert whole[0][0] == float("inf")  # the nan is found whichever chunk holds it


def test_compare_falls_back_to_the_whole_tensor_and_twice_torchs_own_error():
    e = torch.tensor([0.0, 1.0], dtype=torch.float64)
    got = torch.tensor([1e-3, 1.0])  # 1e-3 where the reference is 0: far outside the element rule
    assert check.compare(got, e)[2] == "element"
    # rtol x max|e| + 2 x PyTorch's own error in float32
    error, tol, rule = check.compare(got, e, torch_error=6e-4)
    assert rule == "tensor" and error <= tol == pytest.approx(1e-5 + 1.2e-3)
    error, tol, rule = check.compare(got, e, torch_error=4e-4)
    assert error > tol and rule == "element"
    # a result whose scale is another's (the conv bias's gradient under BatchNorm)
    error, tol, rule = check.compare(got, e, scale=2e3)
    assert error <= tol and rule == "element"


# ---- running cases through the Python API ------------------------------------------------------


def test_small_cases_pass_on_the_cpu_and_reference_backends():
    rows = check.run_check("cpu", backends=["cpu", "reference"], sizes=["small"])
    assert {r.backend for r in rows} == {"cpu", "reference"}
    assert {r.dtype for r in rows} == {"float32", "float16", "bfloat16"}
    assert {r.op for r in rows} == {c.name for c in check.CASES if c.size == "small"}
    failed = [f"{r.op} {r.backend} {r.dtype}: {r.detail}" for r in rows if r.failed]
    assert not failed, "\n".join(failed)
    skipped = {(r.op, r.dtype) for r in rows if r.status == "skip"}
    assert skipped == {(f"conv_transpose_block[relu,{m}]", d) for m in ("train", "eval")
                       for d in ("float16", "bfloat16")}
    for r in rows:
        if r.status == "skip":
            assert "ReLU" in r.detail
            continue
        assert r.error <= r.tolerance and r.seconds > 0
        reduces = next(c for c in check.CASES if c.name == r.op and c.size == r.size).reduces
        assert r.repeatable is (True if reduces else None)
    bias = next(r for r in rows if r.op == "bias_act[swish]" and r.backend == "cpu" and r.dtype == "float32")
    assert {"y", "d/dx", "d/db", "d2/dx", "d2/db", "d2/d(up y)"} <= set(bias.results)
    bn = next(r for r in rows if r.op == "batch_norm_act[relu,train]" and r.backend == "cpu")
    assert {"out", "running_mean", "running_var", "d/dx", "d/dweight", "d/dbias"} <= set(bn.results)


def test_small_cases_pass_on_the_triton_interpreter():
    if not ganfast.available_backends()["triton"].available:
        pytest.skip(f"triton: {ganfast.available_backends()['triton'].detail}")
    rows = check.run_check("cpu", backends=["triton"], ops=["gan_d_loss", "bias_act"], dtypes=["float32"],
                           sizes=["small"])
    # gan_d_loss; bias_act lrelu (first order: the fused bias gradient), lrelu and swish
    assert len(rows) == 4 and not [r.detail for r in rows if r.failed]


# ---- the command ---------------------------------------------------------------------------------


def test_command_prints_the_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "check.json"
    assert _run("--quick", "--ops", ",".join(SMALL_OPS), "--backends", "cpu,reference", "--dtypes",
                "float32,bfloat16", "--sizes", "small", "--json", str(path)) == 0
    out = capsys.readouterr().out
    assert "max error" in out and "repeatable" in out
    assert re.search(r"penalty_from_grad\[wgan-gp\] +cpu +float32 +small +3x3x5x7 ", out) and "0 failed" in out
    data = json.loads(path.read_text())
    assert data["failed"] == 0 and data["quick"] is True
    env = data["environment"]
    assert env["torch"] == torch.__version__ and "triton" in env and env["device"] == "cpu"
    assert set(env["backends"]) >= {"cpu", "cuda", "triton", "reference"}
    rows = data["rows"]
    assert len(rows) == 3 * 2 * 2  # ops x backends x dtypes
    row = rows[0]
    assert {"op", "backend", "dtype", "shape", "error", "tolerance", "repeatable", "seconds", "status",
            "results"} <= set(row)
    assert all(r["status"] == "ok" for r in rows)


def _plant(monkeypatch, op, wrong, backend="cpu"):
    """ganfast.ops.<op> computes `wrong(result, *args)` when `backend` is selected."""
    right = getattr(ganfast.ops, op)

    def planted(*args, **kwargs):
        out = right(*args, **kwargs)
        return wrong(out, *args) if ganfast.get_backend() == backend else out

    monkeypatch.setattr(ganfast.ops, op, planted)


def _expect_failure(capsys, *argv, names):
    assert _run("--quick", "--backends", "cpu,reference", "--dtypes", "float32", "--sizes", "small", *argv) == 1
    captured = capsys.readouterr()
    for name in names:
        assert name in captured.err, f"{name!r} not in:\n{captured.err}"
    assert "GANFAST_BACKEND=reference" in captured.err and "report" in captured.err
    return captured


def test_wrong_value_fails_and_names_the_row_and_the_fallback(monkeypatch, capsys, tmp_path):
    _plant(monkeypatch, "gan_g_loss", lambda out, *a: out * 1.001)
    path = tmp_path / "fail.json"
    captured = _expect_failure(capsys, "--ops", "gan_g_loss", "--json", str(path),
                               names=["gan_g_loss[nonsaturating] on cpu, float32", "loss: max error"])
    assert "GANFAST_BACKEND=cpu" not in captured.err  # the failing backend is no fallback
    data = json.loads(path.read_text())
    assert data["failed"] == 1
    assert [(r["backend"], r["status"]) for r in data["rows"]] == [("cpu", "FAIL"), ("reference", "ok")]


def test_wrong_gradient_fails(monkeypatch, capsys):
    # the same value, a gradient 1% off
    _plant(monkeypatch, "bias_act", lambda y, x, *a: y + 0.01 * (x - x.detach()))
    _expect_failure(capsys, "--ops", "bias_act", names=["bias_act[lrelu] on cpu", "d/dx: max error"])


def test_wrong_second_derivative_fails(monkeypatch, capsys):
    # value and first derivative unchanged at this point, the second derivative off
    def wrong(out, grad, *a):
        penalty, norms = out
        return penalty + 0.01 * ((grad - grad.detach()) ** 2).sum(), norms

    _plant(monkeypatch, "penalty_from_grad", wrong)
    _expect_failure(capsys, "--ops", "penalty_from_grad", names=["penalty_from_grad[wgan-gp] on cpu", "d2/dgrad"])


def test_non_repeatable_reduction_fails(monkeypatch, capsys):
    calls = []

    def wobble(loss, *a):  # one unit in the last place more on every other call: within tolerance
        calls.append(1)
        return torch.nextafter(loss, torch.full_like(loss, 2.0)) if len(calls) % 2 == 0 else loss

    _plant(monkeypatch, "gan_d_loss", wobble)
    captured = _expect_failure(capsys, "--ops", "gan_d_loss", names=["not repeatable", "loss"])
    assert " NO " in captured.out


def test_exact_convolutions_sets_and_restores_cudnns_flags():
    # On a GPU cuDNN's default transposed-convolution backward is not bit-repeatable (seen on an
    # H200), and TF32 would round float32 operands: the check turns both off, and puts them back.
    cudnn = torch.backends.cudnn
    before = (cudnn.deterministic, cudnn.benchmark, cudnn.conv.fp32_precision)
    cudnn.deterministic, cudnn.benchmark = False, True
    try:
        with check.exact_convolutions():
            assert (cudnn.deterministic, cudnn.benchmark, cudnn.conv.fp32_precision) == (True, False, "ieee")
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
        assert cudnn.conv.fp32_precision == before[2]
    finally:
        cudnn.deterministic, cudnn.benchmark = before[:2]


def test_bad_arguments_are_clear_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        _run("--device", "tpu")
    assert exc.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err
    assert _run("--backends", "cpu,fast") == 2
    err = capsys.readouterr().err
    assert "unknown backend 'fast'" in err and "reference" in err
    assert _run("--ops", "softmax") == 2
    err = capsys.readouterr().err
    assert "unknown op 'softmax'" in err and "bias_act" in err
    assert _run("--dtypes", "float64") == 2
    assert "unknown dtype 'float64'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert _run("--device", "cuda") == 2
        assert "no GPU is visible" in capsys.readouterr().err


def test_gpu_failure_names_the_fallbacks_that_passed():
    rows = [check.Row("bias_act[lrelu]", "bias_act", "cuda", "bfloat16", "production", "64x128x16x16", status="FAIL",
                      detail="d/db: max error 1 > tolerance 0.1"),
            check.Row("bias_act[lrelu]", "bias_act", "triton", "bfloat16", "production", "64x128x16x16"),
            check.Row("bias_act[lrelu]", "bias_act", "reference", "bfloat16", "production", "64x128x16x16")]
    text = check.failure_report(rows, torch.device("cuda"))
    assert "bias_act[lrelu] on cuda, bfloat16, production 64x128x16x16: d/db" in text
    assert "GANFAST_BACKEND=triton or GANFAST_BACKEND=reference" in text
    assert "GANFAST_BACKEND=cuda" not in text and "GANFAST_BACKEND=cpu" not in text
    assert "--json" in text and "GPU" in text and "issue tracker" in text


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_the_64_bit_cases_at_a_small_size(backend):
    """The huge cases as they run on a GPU (float16, float32 oracle), at a size this machine runs."""
    for case in (c for c in check.CASES if c.size == "huge"):
        small = dataclasses.replace(case, shape=(4097,) if len(case.shape) == 1 else (2, 5, 7, 9))
        row = check.Runner(torch.device("cpu")).run(small, backend, torch.float16)
        assert row.status == "ok" and row.repeatable, f"{small.key}: {row.detail}"
        assert row.results and all(r["error"] <= r["tolerance"] for r in row.results.values())
