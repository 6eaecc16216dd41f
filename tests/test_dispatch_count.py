"""ganfast.bench.dispatch: the device-operation and memory-traffic counter. Exact op counts and
bytes on small hand-checked programs, ganfast's fused ops counted once per call, autograd and
optimizer ops recorded, results unchanged under the mode, no state left behind."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

import ganfast
import ganfast.losses as L
from conftest import family_fixtures
from ganfast.bench import dispatch
from ganfast.bench.dispatch import (DeviceOpCount, DeviceOpCounter, OpRecord, compare_counts, compare_many,
                                    count_device_ops, format_bytes, markdown_table, touched_elements)

impl, kernel_impl = family_fixtures("bias_act", "losses", "penalty")

F32 = 4  # bytes per float32 element


def names(count: DeviceOpCount) -> list[str]:
    return [r.name for r in count.records]


def rec(count: DeviceOpCount, name: str) -> OpRecord:
    found = [r for r in count.records if r.name == name]
    assert len(found) == 1, f"{name}: {names(count)}"
    return found[0]


def x57():
    return torch.randn(5, 7, generator=torch.Generator().manual_seed(0))


# ---- hand-checked programs --------------------------------------------------------------------


def test_pointwise_chain_exact():
    x = x57()
    c = count_device_ops(lambda: (x * 2 + 1).sum())
    assert names(c) == ["aten::mul.Tensor", "aten::add.Tensor", "aten::sum"]
    n = 35 * F32
    assert [(r.bytes_read, r.bytes_written) for r in c.records] == [(n, n), (n, n), (n, F32)]
    assert (c.ops, c.bytes_read, c.bytes_written, c.total_bytes, c.host_syncs) == (3, 3 * n, 2 * n + 4, 5 * n + 4, 0)
    assert not c.excluded
    torch.testing.assert_close(c.result, (x * 2 + 1).sum(), rtol=0, atol=0)
    assert c.by_op == {"aten::mul.Tensor": 1, "aten::add.Tensor": 1, "aten::sum": 1}


def test_dtype_sets_bytes():
    x = x57().double()
    c = count_device_ops(lambda: x.half().neg())
    assert [(r.name, r.bytes_read, r.bytes_written) for r in c.records] == [
        ("aten::_to_copy", 35 * 8, 35 * 2), ("aten::neg", 35 * 2, 35 * 2)]


def test_broadcast_input_counted_once():
    x, b = x57(), torch.randn(7)
    for fn in (lambda: x + b.expand(5, 7), lambda: x + b, lambda: b.view(1, 7).expand(5, 7) * x):
        c = count_device_ops(fn)
        assert c.ops == 1
        assert (c.bytes_read, c.bytes_written) == (35 * F32 + 7 * F32, 35 * F32)
    s = torch.tensor(3.0)
    c = count_device_ops(lambda: x * s)  # a 0-dim tensor is one element
    assert (c.ops, c.bytes_read, c.bytes_written) == (1, 36 * F32, 35 * F32)
    c = count_device_ops(lambda: x * x)  # the same memory twice: read once
    assert (c.bytes_read, c.bytes_written) == (35 * F32, 35 * F32)
    c = count_device_ops(lambda: x * x.clone())
    assert c.ops == 2 and rec(c, "aten::mul.Tensor").bytes_read == 70 * F32


def test_touched_elements():
    x = torch.arange(10.0)
    assert touched_elements(x) == 10
    assert touched_elements(x[:0]) == 0
    assert touched_elements(torch.tensor(1.0)) == 1
    assert touched_elements(x.view(2, 5).t()) == 10
    assert touched_elements(x[::3]) == 4
    assert touched_elements(x[:1].expand(4, 6)) == 1
    # overlapping windows (unfold-style): 3 windows of 3 over 5 distinct elements
    assert touched_elements(x.as_strided((3, 3), (1, 1))) == 5
    assert dispatch.tensor_bytes(x.double()[:4]) == 32


def test_views_and_metadata_excluded():
    x = x57()

    def views():
        y = x.view(35).view(5, 7).t().transpose(0, 1).unsqueeze(0).squeeze(0).detach()
        y = y.expand(2, 5, 7)[1].narrow(1, 0, 3).select(0, 2)
        y = torch.ops.aten.alias(y)
        z = torch.ops.aten._unsafe_view(x, [7, 5])  # schema says it is not an alias: checked at run time
        w = x.permute(1, 0).reshape(35)  # not viewable: a real copy
        x.as_strided((2, 2), (1, 1)).unbind(0)
        x.split(2)
        v = x.clone()
        v.t_()
        v.unsqueeze_(0)
        return y, z, w

    c = count_device_ops(views)
    assert names(c) == ["aten::clone", "aten::clone"]  # the reshape's copy and x.clone()
    reasons = {reason for reason, _ in c.excluded}
    assert reasons == {"view", "metadata"}
    for op in ("aten::view", "aten::t", "aten::transpose.int", "aten::unsqueeze", "aten::detach", "aten::expand",
               "aten::select.int", "aten::alias", "aten::_unsafe_view", "aten::as_strided", "aten::split.Tensor",
               "aten::unbind.int"):
        assert c.excluded[("view", op)] >= 1, (op, c.excluded)
    assert c.excluded[("metadata", "aten::t_")] == 1 and c.excluded[("metadata", "aten::unsqueeze_")] == 1
    assert c.result[1].data_ptr() == x.data_ptr()


def test_allocations_excluded_fills_counted():
    x = x57()

    def alloc():
        torch.empty(5, 7)
        torch.empty_like(x)
        x.new_empty((3,))
        torch.empty_strided((2, 3), (1, 2))
        return torch.empty(5, 7).zero_()

    c = count_device_ops(alloc)
    assert [(r.name, r.bytes_read, r.bytes_written) for r in c.records] == [("aten::zero_", 0, 35 * F32)]
    assert {reason for reason, _ in c.excluded} == {"allocation"}
    assert sum(c.excluded.values()) == 5

    c = count_device_ops(lambda: (torch.zeros(3, 4), torch.ones_like(x), torch.full((2,), 1.5), x.new_zeros(6)))
    assert c.ops == 4
    assert c.bytes_read == 0  # ones_like / new_zeros take x for its shape only
    assert c.bytes_written == (12 + 35 + 2 + 6) * F32


def test_inplace_out_and_overwrite_rules():
    x = x57()
    y = x.clone()
    n = 35 * F32
    cases = [
        (lambda: y.add_(x), (2 * n, n)),           # reads y and x, writes y
        (lambda: y.mul_(2.0), (n, n)),             # reads and writes y
        (lambda: y.zero_(), (0, n)),               # pure overwrite
        (lambda: y.fill_(1.5), (0, n)),
        (lambda: y.copy_(x), (n, n)),              # reads x only
        (lambda: y.normal_(), (0, n)),
        (lambda: torch.add(x, x, out=y), (n, n)),  # out= is written, not read; x read once
        (lambda: torch.mul(x, 3.0, out=y), (n, n)),
    ]
    for fn, expected in cases:
        c = count_device_ops(fn)
        assert c.ops == 1, names(c)
        assert (c.bytes_read, c.bytes_written) == expected, names(c)
        assert c.result is y
    c = count_device_ops(lambda: torch.max(x, dim=1))  # two outputs: values float32, indices int64
    assert (c.ops, c.bytes_read, c.bytes_written) == (1, n, 5 * 4 + 5 * 8)


def test_item_is_a_host_sync():
    x = x57()
    c = count_device_ops(lambda: x.sum().item())
    assert names(c) == ["aten::sum", "aten::_local_scalar_dense"]
    assert c.host_syncs == 1 and rec(c, "aten::_local_scalar_dense").host_sync
    assert (rec(c, "aten::_local_scalar_dense").bytes_read, rec(c, "aten::_local_scalar_dense").bytes_written) == (4, 0)
    assert c.result == pytest.approx(x.sum().item())
    c = count_device_ops(lambda: (torch.equal(x, x.clone()), x.nonzero()))
    assert c.host_syncs == 2 and c.ops == 3


def test_backward_recorded():
    x = x57()
    w = torch.randn(7, requires_grad=True)

    def step():
        loss = (x * w).sum()
        loss.backward()
        return loss

    c = count_device_ops(step)
    # forward mul, sum; backward: the seed ones_like, sum's backward (an expand: a view),
    # mul's backward grad * x then its reduction to w's shape; AccumulateGrad steals the result.
    assert names(c) == ["aten::mul.Tensor", "aten::sum", "aten::ones_like", "aten::mul.Tensor", "aten::sum.dim_IntList"]
    torch.testing.assert_close(w.grad, x.sum(0), rtol=0, atol=0)
    grad_mul = c.records[3]
    assert (grad_mul.bytes_read, grad_mul.bytes_written) == (F32 + 35 * F32, 35 * F32)  # expanded seed: 1 element
    # a second backward accumulates into w.grad in place
    c = count_device_ops(step)
    assert names(c)[-1] == "aten::add_.Tensor"
    torch.testing.assert_close(w.grad, 2 * x.sum(0), rtol=0, atol=0)


def test_autograd_grad_with_create_graph_recorded():
    x = torch.randn(4, 3, requires_grad=True)

    def penalty():
        (g,) = torch.autograd.grad((x ** 3).sum(), x, create_graph=True)
        p = g.square().sum()
        p.backward()
        return p

    c = count_device_ops(penalty)
    assert c.ops >= 8  # pow; the first derivative's ops; the second derivative's ops
    torch.testing.assert_close(x.grad, 36 * x.detach() ** 3)
    assert "aten::pow.Tensor_Scalar" in c.by_op


def test_optimizer_foreach_ops_recorded():
    p1, p2 = torch.randn(7, requires_grad=True), torch.randn(3, requires_grad=True)
    p1.grad, p2.grad = torch.ones(7), torch.ones(3)
    before = (p1.detach().clone(), p2.detach().clone())
    opt = torch.optim.SGD([p1, p2], lr=0.5, foreach=True)
    c = count_device_ops(opt.step)
    # one _foreach_add_(params, grads, alpha=-lr): reads both lists, writes the params
    assert names(c) == ["aten::_foreach_add_.List"]
    assert (c.bytes_read, c.bytes_written) == (2 * 10 * F32, 10 * F32)
    assert {reason for reason, _ in c.excluded} <= {"profiler", "view"}
    torch.testing.assert_close(p1.detach(), before[0] - 0.5)

    opt = torch.optim.Adam([p1, p2], lr=0.1, foreach=True)
    opt.step()  # lazy state initialisation
    c = count_device_ops(opt.step)
    assert c.ops > 0 and all(n.startswith("aten::_foreach_") or n == "aten::_local_scalar_dense" for n in names(c))
    assert "aten::_foreach_addcdiv_.ScalarList" in c.by_op
    assert c.host_syncs == c.by_op["aten::_local_scalar_dense"] > 0  # Adam's CPU step counters


# ---- ganfast's fused ops: one op per call, whatever they launch inside ---------------------------


def _fused_names(count, ns):
    return [n for n in names(count) if n.startswith(ns + "::")]


def test_fused_bias_act_counted_once(kernel_impl):
    name, device = kernel_impl
    ns = "ganfast_triton" if name == "triton" else "ganfast"
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=gen).to(device).requires_grad_(True)
    u = torch.randn(4, 6, generator=gen).to(device)
    act = ganfast.nn.LeakyReLU(0.2)

    def step():
        y = act(x)
        (y * u).sum().backward()
        return y

    c = count_device_ops(step)
    assert names(c) == [f"{ns}::bias_act", "aten::mul.Tensor", "aten::sum", "aten::ones_like", "aten::mul.Tensor",
                        f"{ns}::bias_act_backward"]
    n = 24 * F32
    fwd, bwd = rec(c, f"{ns}::bias_act"), rec(c, f"{ns}::bias_act_backward")
    assert (fwd.bytes_read, fwd.bytes_written) == (n, n)
    # leaky ReLU's backward reads the upstream gradient and y (x is not kept), writes dx
    assert (bwd.bytes_read, bwd.bytes_written) == (2 * n, n)
    # the kernels' own allocations, made while the op runs, never reach the mode
    assert all(reason == "view" for reason, _ in c.excluded), c.excluded
    expected = torch.nn.functional.leaky_relu(x.detach(), 0.2)
    torch.testing.assert_close(c.result.detach(), expected)
    torch.testing.assert_close(x.grad, torch.where(x.detach() > 0, u, 0.2 * u))


def test_fused_losses_counted_once(kernel_impl):
    name, device = kernel_impl
    ns = "ganfast_triton" if name == "triton" else "ganfast"
    gen = torch.Generator().manual_seed(2)
    real = torch.randn(5, generator=gen).to(device).requires_grad_(True)
    fake = torch.randn(3, generator=gen).to(device).requires_grad_(True)
    c = count_device_ops(lambda: L.discriminator_loss(real, fake).backward())
    assert names(c) == [f"{ns}::gan_d_loss", "aten::ones_like", f"{ns}::gan_d_loss_backward"]
    assert (rec(c, f"{ns}::gan_d_loss").bytes_read, rec(c, f"{ns}::gan_d_loss").bytes_written) == (8 * F32, F32)
    assert rec(c, f"{ns}::gan_d_loss_backward").bytes_written == 8 * F32

    g = torch.randn(4, 3, 2, 2, generator=gen).to(device).requires_grad_(True)
    c = count_device_ops(lambda: ganfast.penalty.penalty_from_grad(g).backward())
    assert _fused_names(c, ns) == [f"{ns}::penalty_from_grad", f"{ns}::penalty_from_grad_backward"]
    # besides the fused ops only the backward's seed (and, on Triton, custom_op's zero gradient for
    # the unused norms output) run
    assert set(names(c)) - set(_fused_names(c, ns)) <= {"aten::ones_like", "aten::zeros"}
    fwd = rec(c, f"{ns}::penalty_from_grad")
    assert (fwd.bytes_read, fwd.bytes_written) == (48 * F32, F32 + 4 * F32)  # reads g, writes penalty and norms


def test_reference_backend_is_many_ops():
    """The same loss on the pure-PyTorch reference: the counter sees every op it is made of."""
    gen = torch.Generator().manual_seed(3)
    real = torch.randn(5, generator=gen, requires_grad=True)
    fake = torch.randn(3, generator=gen, requires_grad=True)
    with ganfast.use_backend("cpu"):
        fused = count_device_ops(lambda: L.discriminator_loss(real, fake))
    with ganfast.use_backend("reference"):
        ref = count_device_ops(lambda: L.discriminator_loss(real, fake))
    assert fused.ops == 1 and ref.ops > 5
    torch.testing.assert_close(fused.result, ref.result)


# ---- the mode: results unchanged, no state left behind ---------------------------------------------


def _mlp_step(model, x):
    model.zero_grad(set_to_none=True)
    loss = L.generator_loss(model(x))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_results_unchanged_under_the_mode():
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), ganfast.nn.LeakyReLU(0.2), torch.nn.Linear(8, 1),
                                torch.nn.Flatten(0))
    x = torch.randn(6, 3)
    with ganfast.use_backend("cpu"):
        plain = _mlp_step(model, x)
        counted = count_device_ops(_mlp_step, model, x)
    assert counted.ops > 0 and "ganfast::bias_act" in counted.by_op
    torch.testing.assert_close(counted.result[0], plain[0], rtol=0, atol=0)
    for a, b in zip(counted.result[1], plain[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nested_counters_and_exceptions_leave_no_state():
    x = x57()
    assert _get_current_dispatch_mode() is None
    with DeviceOpCounter() as outer:
        x + 1
        inner = count_device_ops(lambda: x * 2)
        x - 1
    assert names(inner) == ["aten::mul.Tensor"]
    assert names(outer.count) == ["aten::add.Tensor", "aten::mul.Tensor", "aten::sub.Tensor"]  # sees the inner ops too
    assert _get_current_dispatch_mode() is None

    def boom():
        x + 1
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        count_device_ops(boom)
    assert _get_current_dispatch_mode() is None
    with pytest.raises(RuntimeError):  # an op that fails inside the mode
        count_device_ops(lambda: x @ x)
    assert _get_current_dispatch_mode() is None
    assert count_device_ops(lambda: x + 1).ops == 1  # and the next count starts from zero


# ---- tables ---------------------------------------------------------------------------------------


def _count(*records):
    return DeviceOpCount(records=[OpRecord(*r, device="cpu") for r in records])


def test_compare_counts_rows_and_markdown():
    eager = _count(("aten::mul.Tensor", 400, 200, False), ("aten::add.Tensor", 400, 200, False),
                   ("aten::_local_scalar_dense", 4, 0, True), ("aten::sum", 200, 4, False))
    fused = _count(("ganfast::bias_act", 200, 200, False))
    rows = compare_counts(eager, fused)
    assert [r["metric"] for r in rows] == ["device ops", "host syncs", "bytes read", "bytes written", "total traffic"]
    assert [(r["eager"], r["ganfast"]) for r in rows] == [(4, 1), (1, 0), (1004, 200), (404, 200), (1408, 400)]
    assert rows[0]["ganfast / eager"] == pytest.approx(0.25)
    assert rows[1]["ganfast / eager"] == 0.0
    assert rows[4]["ganfast / eager"] == pytest.approx(400 / 1408)
    table = markdown_table(rows)
    lines = table.splitlines()
    assert lines[0] == "| metric | eager | ganfast | ganfast / eager |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| device ops | 4 | 1 | 0.250 |"
    assert lines[4] == "| bytes read | 1004 B | 200 B | 0.199 |"
    assert len(lines) == 7 and "_unit" not in table
    zero = compare_many({"a": _count(), "b": fused})
    assert zero[0]["b / a"] == float("inf") and zero[1]["b / a"] is None
    assert "| host syncs | 0 | 0 | - |" in markdown_table(zero)
    with pytest.raises(ValueError, match="baseline"):
        compare_many({"a": fused}, baseline="eager")
    with pytest.raises(ValueError, match="names"):
        compare_counts(eager, fused, names=("x", "x"))


def test_breakdown_and_format():
    c = _count(("aten::mul.Tensor", 4096, 2048, False), ("aten::mul.Tensor", 4096, 2048, False),
               ("aten::sum", 100, 4, False))
    rows = c.breakdown()
    assert rows[0] == {"op": "aten::mul.Tensor", "calls": 2, "bytes read": 8192, "bytes written": 4096,
                       "total bytes": 12288}
    assert c.top(1, by="calls")[0]["op"] == "aten::mul.Tensor"
    text = c.format_top(1)
    assert "| aten::mul.Tensor | 2 | 8.00 KiB | 4.00 KiB | 12.00 KiB |" in text
    assert "3 device ops (1 in ops not listed)" in text
    assert c.summary()["by op"] == {"aten::mul.Tensor": 2, "aten::sum": 1}
    assert format_bytes(1023) == "1023 B" and format_bytes(3 * 1024 ** 2) == "3.00 MiB"
    assert markdown_table([]) == ""
    assert c.on_device("cuda").ops == 0 and c.on_device("cpu").ops == 3


def test_filter_gemm_and_conv():
    torch.manual_seed(5)
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)

    def step():
        out = torch.relu(lin(x)).sum()
        out.backward()
        return out

    c = count_device_ops(step)
    assert c.by_op["aten::addmm"] == 1 and c.by_op["aten::mm"] == 1  # forward; weight gradient
    rest = c.filter(lambda r: r.name not in dispatch.GEMM_AND_CONV_OPS)
    assert rest.ops == c.ops - 2
    assert not set(rest.by_op) & dispatch.GEMM_AND_CONV_OPS
    gemm = c.filter(lambda r: r.name in dispatch.GEMM_AND_CONV_OPS)
    assert gemm.total_bytes + rest.total_bytes == c.total_bytes
