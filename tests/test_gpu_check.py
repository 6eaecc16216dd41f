"""The GPU checks of the suite: `ganfast check`'s cases (ganfast.check.CASES), each backend that
runs CUDA tensors x float32/float16/bfloat16, under pytest. One case list serves both."""
import pytest
import torch

import ganfast
from ganfast import check

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (torch.cuda.is_available() "
                                                                       "is False); `ganfast check` runs the same "
                                                                       "cases on one")

GPU_BACKENDS = ("cuda", "triton", "reference")


@pytest.fixture(scope="module")
def runner():
    # one runner: the float64 reference of a case is computed once for its three backends
    with check.exact_convolutions():
        yield check.Runner(torch.device("cuda"))


# backends vary fastest: the three share the float64 reference of a (case, dtype), which the
# runner keeps one at a time
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", check.DTYPES, ids=check.dtype_name)
@pytest.mark.parametrize("case", check.CASES, ids=lambda c: c.key.replace(" ", "-"))
def test_gpu_check(runner, case, dtype, backend):
    info = ganfast.available_backends()[backend]
    if not info.available:
        pytest.skip(f"{backend}: {info.detail}")
    reason = check.skip_reason(case, backend, dtype, torch.device("cuda"), quick=False)
    if reason:
        pytest.skip(reason)
    row = runner.run(case, backend, dtype)
    assert not row.failed, f"{case.key} on {backend}, {check.dtype_name(dtype)}: {row.detail}"
