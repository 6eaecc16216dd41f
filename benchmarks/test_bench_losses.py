"""pytest-benchmark micro benchmark: non-saturating D + G loss step, eager vs ganfast[cpu].

Collected only when pytest is pointed here (the project's testpaths is tests/):

    pytest benchmarks --benchmark-only

Not a timed test: nothing here asserts a speed. The full side-by-side comparison (torch.compile,
every backend, hinge, percentiles, machine header) is benchmarks/bench_losses.py.
"""
import pytest

pytest.importorskip("pytest_benchmark")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ganfast  # noqa: E402
import ganfast.losses as L  # noqa: E402


def eager(real, fake, fake_g):
    loss_d = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
              + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    loss_g = F.binary_cross_entropy_with_logits(fake_g, torch.ones_like(fake_g))
    return loss_d, loss_g


def fused(real, fake, fake_g):
    return L.discriminator_loss(real, fake, "nonsaturating"), L.generator_loss(fake_g, "nonsaturating")


CONTENDERS = {"eager": (eager, None), "ganfast-cpu": (fused, "cpu")}


def _leaves(batch):
    g = torch.Generator().manual_seed(batch)
    return [(torch.randn(batch, 1, generator=g) * 2 + shift).requires_grad_() for shift in (1.0, -1.0, -1.0)]


def _run(fn, leaves):
    loss_d, loss_g = fn(*leaves)
    torch.autograd.backward([loss_d, loss_g])
    grads = [t.grad for t in leaves]
    for t in leaves:
        t.grad = None
    return [loss_d.detach(), loss_g.detach()] + grads


@pytest.mark.parametrize("batch", [64, 65536])
@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_nonsaturating_d_plus_g_step(benchmark, contender, batch):
    if contender == "ganfast-cpu" and not ganfast.available_backends()["cpu"].available:
        pytest.skip("ganfast was built without its CPU kernels")
    fn, backend = CONTENDERS[contender]
    leaves = _leaves(batch)
    benchmark.group = f"nonsaturating D+G fwd+bwd, B={batch}"
    with ganfast.use_backend(backend or "auto"):
        # Same numbers as eager before the timing means anything.
        for got, want in zip(_run(fn, leaves), _run(eager, leaves)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
        benchmark(_run, fn, leaves)
