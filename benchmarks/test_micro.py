"""pytest-benchmark micro benchmarks: the suite's op-family cases (ganfast/bench/cases.py, the
--quick sizes; the whole training steps are left to `ganfast bench`), each as eager PyTorch,
torch.compile and ganfast under its cpu backend.

Collected only when pytest is pointed here (the project's testpaths is tests/):

    pytest benchmarks --benchmark-only

Each implementation's first step runs before the clock (torch.compile compiles there) and is
compared with eager's first step within the case's tolerance: a disagreement fails the test.
Where torch.compile refuses a case (double backward), the test is skipped with its error. Not a
timed test: nothing here asserts a speed; the side-by-side tables, percentiles and machine header
come from `ganfast bench` and benchmarks/bench_*.py.
"""
import os
import re

# No compile-worker pool beside the timings (as `ganfast bench`); read at inductor's first use.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import ganfast  # noqa: E402
from ganfast.bench import cases as suite  # noqa: E402
from ganfast.bench import harness as H  # noqa: E402

CASES = [c for c in suite.cases(torch.device("cpu"), quick=True) if c.family != "step"]
# The implementations of cases.py, and the ganfast backend each runs under.
IMPLS = {"eager": None, "compile": None, "ganfast": "cpu"}


def _slug(case) -> str:
    return re.sub(r"[^A-Za-z0-9=.+]+", "_", f"{case.family}-{case.name}-{case.size}").strip("_")


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=[_slug(c) for c in CASES])
def test_op_family(benchmark, case, impl):
    backend = IMPLS[impl]
    if backend is not None and not ganfast.available_backends()[backend].available:
        pytest.skip(f"ganfast[{backend}] is not available here: {ganfast.available_backends()[backend].detail}")
    if impl == "compile":
        torch._dynamo.reset()  # a fresh graph per case
    benchmark.group = case.key
    step = case.make_step(impl)
    with ganfast.use_backend(backend or "auto"):
        try:
            got = step()  # compilation, warm-up: outside the timing
        except Exception as exc:  # noqa: BLE001
            if impl == "compile":
                pytest.skip(f"torch.compile refuses: {H.one_line(exc, 200)}")
            raise
        if impl != "eager":
            H.compare(f"{impl} [{case.key}]", got, case.make_step("eager")(), case.rtol, case.atol_scale)
        benchmark(step)
