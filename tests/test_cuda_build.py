"""The CUDA kernels: built into this install where they can be, and every one of them compiles
for sm_80 and sm_90 with no warning and no spill (`ptxas -v`), through ganfast.bench.gpu_report
(the static GPU report). Needs nvcc and a CUDA build of torch, not a GPU; the parser and the
spill / warning checks are tested on a hand-written ptxas log without either."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

import ganfast
from ganfast.bench import gpu_report as G

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def _nvcc():
    if torch.version.cuda is None:
        pytest.skip("this torch is not a CUDA build")
    try:
        return G.find_nvcc()
    except RuntimeError as e:  # no toolkit on this machine
        pytest.skip(str(e))


def assert_clean(rows, ccs=G.CCS):
    """Fails naming every compile error, warning, kernel without a resource report and spilling
    kernel in cuda_report rows; and when ptxas compiled no kernel for some sm."""
    errors = [r["message"] for r in rows if r["kind"] == "error"]
    assert not errors, "nvcc failed:\n" + "\n".join(m[-6000:] for m in errors)
    warnings = [f"{r['source']}: {r['message']}" for r in rows if r["kind"] == "warning"]
    assert not warnings, "nvcc/ptxas warnings:\n" + "\n".join(warnings[:20])
    kernels = [r for r in rows if r["kind"] == "kernel"]
    assert {r["sm"] for r in kernels} == {f"sm_{cc}" for cc in ccs}, "ptxas reported no kernels for some sm"
    unreported = [f"{r['sm']} {r['kernel']}" for r in kernels if not r["ok"]]
    assert not unreported, "kernels without a ptxas resource report:\n" + "\n".join(unreported[:20])
    spilling = [r for r in kernels if G.spilled(r)]
    assert not spilling, f"{len(spilling)} kernels spill:\n" + "\n".join(
        f"  {r['sm']} {r['kernel']}: {r['spill_stores']} B spill stores, {r['spill_loads']} B spill loads, "
        f"{r['stack_bytes']} B stack, {r['registers']} registers" for r in spilling[:20])


def test_cuda_kernels_are_built_when_a_toolkit_is_present():
    _nvcc()
    if os.environ.get("GANFAST_CUDA") == "0":
        pytest.skip("GANFAST_CUDA=0: this install was asked to skip the CUDA kernels")
    assert ganfast.backend.cuda_kernels_built(), (
        "torch is a CUDA build and nvcc is present, so `pip install` should have compiled the CUDA "
        "kernels; ganfast.available_backends()['cuda'] says: "
        + ganfast.available_backends()["cuda"].detail)


@pytest.mark.slow
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_kernels_compile_without_warnings_or_spills(source):
    _nvcc()
    rows = G.cuda_report(G.CCS, sources=[source])
    assert_clean(rows)
    print("\n" + G.markdown(None, rows))


# ---- the parser and the checks, on a hand-written log (no compiler) ------------------------------

LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z9clean_kerPfS_i' for 'sm_80'
ptxas info    : Function properties for _Z9clean_kerPfS_i
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 1024 bytes smem, 372 bytes cmem[0]
ptxas info    : Function properties for _Z6helperv
    16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Compiling entry function '_Z10spill_kernPf' for 'sm_90'
ptxas info    : Function properties for _Z10spill_kernPf
    984 bytes stack frame, 1756 bytes spill stores, 1984 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers, 984 bytes cumulative stack size
ptxas info    : Compile time = 381.324 ms
ptxas warning : Registers are spilled to local memory in function '_Z10spill_kernPf', 1756 bytes spill stores, 1984 bytes spill loads
ptxas info    : Compiling entry function '_Z9truncatedv' for 'sm_90'
"""


def test_ptxas_log_parser():
    clean, spill, truncated = G.parse_ptxas_log(LOG)
    assert clean == dict(name="_Z9clean_kerPfS_i", sm="sm_80", registers=32, barriers=1, smem_bytes=1024,
                         cmem_bytes=372, stack_bytes=0, spill_stores=0, spill_loads=0)
    # the device function's frame (another name) is not the entry's
    assert spill == dict(name="_Z10spill_kernPf", sm="sm_90", registers=255, barriers=0, smem_bytes=0,
                         cmem_bytes=None, stack_bytes=984, spill_stores=1756, spill_loads=1984)
    assert truncated["registers"] is None and truncated["spill_stores"] is None
    assert G.warnings_in(LOG) == [LOG.splitlines()[-2].strip()]


def _rows_from(log):
    return G.cuda_rows_from_log("k.cu", 0, log, ccs=(80, 90))


def test_checks_fail_on_a_spill_a_warning_and_a_missing_report():
    """assert_clean (the compile test's check) is not vacuous: the spilling entry of LOG fails it,
    as do its warning and its truncated entry; the clean entry alone passes."""
    rows = _rows_from(LOG)
    clean = [r for r in rows if r.get("mangled") == "_Z9clean_kerPfS_i"]
    assert_clean(clean, ccs=(80,))
    spill = [r for r in rows if r.get("mangled") == "_Z10spill_kernPf"]
    with pytest.raises(AssertionError, match=r"1 kernels spill:\n.*spill_kern.*: 1756 B spill stores"):
        assert_clean(clean + spill, ccs=(80, 90))
    with pytest.raises(AssertionError, match="warnings"):
        assert_clean(rows, ccs=(80, 90))
    truncated = [r for r in rows if r.get("mangled") == "_Z9truncatedv"]
    with pytest.raises(AssertionError, match="without a ptxas resource report"):
        assert_clean(clean + truncated, ccs=(80, 90))
    found = G.problems(rows)
    assert any(p.startswith("spills: cuda sm_90 ") and "spill_kern" in p for p in found)
    assert any(p.startswith("warning: k.cu") for p in found)
    assert any(p.startswith("does not compile: ") and "truncated" in p for p in found)


def test_summary_and_report_files(tmp_path):
    rows = _rows_from(LOG)
    triton = [dict(backend="triton", kind="kernel", kernel="m._k", family="m._k", config=f"m._k[float32](B={b})",
                   cc=cc, sm=f"sm_{cc}", ok=True, registers=r, shared_bytes=0, stack_bytes=0, spill_stores=0,
                   spill_loads=0, spill_bytes=0) for b, r in ((1, 40), (2, 64)) for cc in (80, 90)]
    triton.append(dict(backend="triton", kind="missing", kernel="m._other", family="m._other", config=None,
                       cc=None, sm=None, ok=False, error="no launch configuration"))
    summary = {(s["family"], s["sm"]): s for s in G.summarize(triton + rows)}
    assert summary["m._k", "sm_80"]["configs"] == 2
    assert (summary["m._k", "sm_80"]["registers_min"], summary["m._k", "sm_80"]["registers_max"]) == (40, 64)
    family = {r["mangled"]: r["family"] for r in rows if r["kind"] == "kernel"}
    if G.demangle(["_Z10spill_kernPf"]) != ["_Z10spill_kernPf"]:  # c++filt present
        assert family["_Z10spill_kernPf"] == "k.cu: spill_kern"
    s = summary[family["_Z10spill_kernPf"], "sm_90"]
    assert (s["spill_max"], s["stack_max"], s["spilling"]) == (3740, 984, 1)
    assert summary[family["_Z9truncatedv"], "sm_90"]["failed"] == 1
    assert G.cuda_family("bias_act.cu", "void ganfast::cuda::(anonymous namespace)::bias_act_kernel<float, 3, "
                         "(ganfast::Act)2>(ganfast::cuda::Args<float>, long)") == "bias_act.cu: bias_act_kernel"

    paths = G.write_report(triton, rows, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["triton"] == triton and data["cuda"] == rows and "torch" in data["versions"]
    md = paths["md"].read_text()
    assert "## Triton kernels" in md and "## CUDA kernels" in md and "| m._k | sm_80 | 2 | 40–64 |" in md
    assert "m._other" in md and "spill_kern" in md and "- spills: 1 kernel compilations (configuration x sm) spill, 3740 bytes" in md


def test_main_without_compiling(tmp_path, capsys):
    assert G.main(["--skip-triton", "--skip-cuda", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "gpu_report.json").exists() and "# Static GPU resource report" in capsys.readouterr().out


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
