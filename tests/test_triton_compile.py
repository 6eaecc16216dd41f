"""Ahead-of-time GPU compilation of every Triton kernel in ganfast/triton (losses.py, penalty.py,
bias_act.py, batch_norm_act.py, conv_block.py), through ganfast.bench.gpu_report (the static GPU
report, `ganfast bench --gpu-report`).

The Triton interpreter (how the kernels are tested on this GPU-less machine) accepts code that
the GPU compiler rejects, so every kernel is also compiled with triton.compile(ASTSource(...),
target=GPUTarget("cuda", cc, 32)) for sm_80 and sm_90, in every constexpr configuration its
launcher uses (gpu_report.configs(): each loss / GAN kind, reduction, upstream-gradient form,
weight mode; each penalty kind and reduction tile; each activation and derivative order; each
batch-norm tile; each convolution geometry, epilogue and tile; four dtypes; the runtime
specialisations Triton makes and their absence; int64 sizes). PTX and a cubin must come out,
ptxas -v (Triton's make_cubin rerun on the PTX, its cubin checked equal to Triton's) must report
the kernel, and no configuration may spill a register. The summary table prints with `pytest -s`.

The compilation runs in a subprocess without TRITON_INTERPRET, one worker per CPU; Triton's cache
(which also keeps the ptxas logs) makes reruns fast.
"""
import pytest

from ganfast.bench import gpu_report as G


def assert_no_spills(rows):
    """Fails naming every kernel configuration that spills (or whose spill report is missing)."""
    spilling = [r for r in rows if G.spilled(r)]
    assert not spilling, f"{len(spilling)} kernel configurations spill registers:\n" + "\n".join(
        f"  {r['sm']} {r.get('config') or r['kernel']}: {r['spill_stores']} B spill stores, "
        f"{r['spill_loads']} B spill loads, {r['stack_bytes']} B stack, {r['registers']} registers"
        for r in spilling[:20])


@pytest.fixture(scope="module")
def rows():
    pytest.importorskip("triton")
    if G.triton_ptxas() is None:
        pytest.skip("no ptxas: triton/backends/nvidia/bin/ptxas is missing and TRITON_PTXAS_PATH is unset")
    rows = G.triton_report(G.CCS)
    print("\n" + G.markdown(rows, None))
    return rows


@pytest.mark.slow
def test_every_triton_kernel_has_a_configuration(rows):
    missing = [r["kernel"] for r in rows if r["kind"] == "missing"]
    assert not missing, f"kernels with no AOT configuration in gpu_report.configs(): {missing}"
    assert {r["kernel"].split(".")[0] for r in rows} == set(G.MODULES)


@pytest.mark.slow
def test_triton_kernels_compile_for_sm80_and_sm90(rows):
    kernels = [r for r in rows if r["kind"] == "kernel"]
    failed = [r for r in kernels if not r["ok"]]
    assert not failed, f"{len(failed)} configurations do not compile for the GPU:\n" + "\n".join(
        f"  {r['sm']} {r['config']}: {r.get('error', '')[:500]}" for r in failed[:20])
    by_config = {}
    for r in kernels:
        by_config.setdefault(r["config"], set()).add(r["cc"])
    assert len(by_config) == len(G.configs()), "two configurations with one description"
    assert all(ccs == set(G.CCS) for ccs in by_config.values())
    assert {r["sm"] for r in kernels} == {"sm_80", "sm_90a"}
    assert all(r["log_matches_cubin"] and r["ptx_bytes"] > 0 and r["cubin_bytes"] > 0 for r in kernels)


@pytest.mark.slow
def test_no_triton_kernel_spills(rows):
    assert_no_spills([r for r in rows if r["kind"] == "kernel"])


def test_spill_check_fails_on_a_spilling_row():
    """The spill assertion above is not vacuous: a row with spills (or with no spill report) fails
    it, a clean one passes."""
    clean = dict(backend="triton", kind="kernel", kernel="m._k", config="m._k[float32]()", sm="sm_80", ok=True,
                 registers=40, stack_bytes=0, spill_stores=0, spill_loads=0, spill_bytes=0)
    assert_no_spills([clean])
    spill = dict(clean, config="m._k[float32](BIG=True)", registers=255, stack_bytes=984, spill_stores=1756,
                 spill_loads=1984, spill_bytes=3740)
    with pytest.raises(AssertionError, match=r"BIG=True.*1756 B spill stores"):
        assert_no_spills([clean, spill])
    unknown = dict(clean, spill_stores=None, spill_loads=None, spill_bytes=None)
    with pytest.raises(AssertionError):
        assert_no_spills([unknown])
    assert G.problems([spill]) and not G.problems([clean])
