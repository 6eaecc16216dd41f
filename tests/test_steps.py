"""The lean double backward (ganfast.ops.lean_double_backward) and the engine's discriminator
loss (ganfast.steps.discriminator_step_loss): the same values and gradients as the textbook
composition, in float64, on every implementation; fewer device operations."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ganfast
import ganfast.losses as L
import ganfast.penalty as P
import ganfast.steps as S
from ganfast.bench.dispatch import count_device_ops

from conftest import assert_close, family_fixtures, randn

impl, kernel_impl = family_fixtures("penalty", "bias_act", "losses")


def conv_critic(seed, channels=2, norm=False, act=nn.LeakyReLU):
    """A small DCGAN-style critic of torch.nn layers, fused by ganfast.nn.fuse: Conv2d (+ bias)
    -> LeakyReLU runs become FusedConv2d (a convolution then ganfast's bias_act with the bias)."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(channels, 4, 3, 2, 1), act(0.2), nn.Conv2d(4, 6, 3, 2, 1)]
    if norm:
        layers.append(nn.BatchNorm2d(6))
    layers += [act(0.2), nn.Flatten(), nn.Linear(6 * 2 * 2, 1)]
    return ganfast.nn.fuse(nn.Sequential(*layers).double())


def mlp_critic(seed):
    from ganfast.train.models import MLPDiscriminator

    torch.manual_seed(seed)
    return MLPDiscriminator(2, 8, 2, scale=2.0).double()


def grads(module):
    return {name: p.grad for name, p in module.named_parameters()}


def clear(module):
    for p in module.parameters():
        p.grad = None


# ---- the lean double backward ------------------------------------------------------------------


def test_lean_flag_is_thread_local_and_restored():
    assert not ganfast.ops.is_lean_double_backward()
    seen = []
    with ganfast.ops.lean_double_backward():
        assert ganfast.ops.is_lean_double_backward()
        t = threading.Thread(target=lambda: seen.append(ganfast.ops.is_lean_double_backward()))
        t.start()
        t.join()
        with ganfast.ops.lean_double_backward(False):
            assert not ganfast.ops.is_lean_double_backward()
        assert ganfast.ops.is_lean_double_backward()
    assert seen == [False]
    with pytest.raises(ZeroDivisionError):
        with ganfast.ops.lean_double_backward():
            1 / 0
    assert not ganfast.ops.is_lean_double_backward()


@pytest.mark.parametrize("bias", [False, True])
def test_lean_drops_only_the_exact_zero(kernel_impl, bias, rng):
    """The activation's double backward: u's gradient identical; x's (and b's, reached only
    through the zero edge) None under lean where the default gives zeros; no zeros_like."""
    name, device = kernel_impl
    x = randn((2, 3, 4, 5), torch.float64, device, rng, requires_grad=True)
    b = randn((3,), torch.float64, device, rng, requires_grad=True) if bias else None
    u = randn((2, 3, 4, 5), torch.float64, device, rng, requires_grad=True)
    w = randn((2, 3, 4, 5), torch.float64, device, rng)
    results = {}
    for lean in (False, True):
        def run():
            with ganfast.ops.lean_double_backward(lean):
                y = ganfast.ops.bias_act(x, b, 1, "lrelu", 0.2, 1.0)
            # the forward's choice holds for a backward run outside the block
            (g,) = torch.autograd.grad(y, x, u, create_graph=True)
            (g * w).sum().backward()
            out = (g.detach(), u.grad, x.grad, b.grad if bias else None)
            for t in (x, u) + ((b,) if bias else ()):
                t.grad = None
            return out
        results[lean] = run()
        counted = count_device_ops(run)
        results[lean, "zeros"] = counted.by_op["aten::zeros_like"]
    (g0, u0, x0, b0), (g1, u1, x1, b1) = results[False], results[True]
    assert_close(g1, g0, atol=0, rtol=0)
    assert_close(u1, u0, atol=0, rtol=0)
    assert torch.count_nonzero(x0) == 0 and x1 is None
    if bias:
        assert torch.count_nonzero(b0) == 0 and b1 is None
    assert results[True, "zeros"] == 0
    if name != "triton":  # the C++ autograd routes the zero straight to x's edge; Triton's too
        assert results[False, "zeros"] == 1


def test_lean_leaves_smooth_activations_alone(rng):
    x = randn((3, 4), torch.float64, gen=rng, requires_grad=True)
    u = randn((3, 4), torch.float64, gen=rng)
    with ganfast.ops.lean_double_backward():
        y = ganfast.ops.bias_act(x, None, 1, "elu", 1.0, 1.0)
        (g,) = torch.autograd.grad(y, x, u, create_graph=True)
    g.sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(F.elu(x_ref), x_ref, u, create_graph=True)
    g_ref.sum().backward()
    assert_close(x.grad, x_ref.grad)


def test_lean_gradient_penalty_same_parameter_gradients(impl, rng):
    """gradient_penalty(lean=True): every weight's gradient as eager's; the biases, which the
    penalty of a piecewise-linear critic reaches only through exact zeros, None instead of 0."""
    name, device = impl
    D = conv_critic(0).to(device)
    real = randn((3, 2, 8, 8), torch.float64, device, rng)
    fake = randn((3, 2, 8, 8), torch.float64, device, rng)
    eps = torch.rand(3, generator=rng, dtype=torch.float64).to(device)
    out = {}
    for lean in (False, True):
        P.gradient_penalty(D, real, fake, "wgan-gp", 10.0, eps=eps, lean=lean).backward()
        out[lean] = grads(D)
        clear(D)
    for pname, g in out[False].items():
        if pname == "5.bias":  # the head's bias: no part of the input gradient, None either way
            assert g is None and out[True][pname] is None
        elif name != "reference" and pname.endswith("bias"):
            assert torch.count_nonzero(g) == 0 and out[True][pname] is None, pname
        else:
            assert_close(out[True][pname], g, atol=1e-12, rtol=1e-10, name=pname)


# ---- ganfast.steps.discriminator_step_loss ------------------------------------------------------------


def textbook(D, real, fake, loss, gp_weight, r1_weight, eps):
    """The composition discriminator_step_loss replaces: separate passes, eager zeros."""
    total = L.discriminator_loss(D(real), D(fake), loss)
    if gp_weight:
        total = total + P.gradient_penalty(D, real, fake, "wgan-gp", gp_weight, eps=eps)
    if r1_weight:
        total = total + P.gradient_penalty(D, real, None, "r1", r1_weight)
    return total


@pytest.mark.parametrize("critic,loss,gp_weight,r1_weight,norm,joint", [
    ("conv", "wasserstein", 10.0, 0.0, False, "auto"),      # joint pass + lean interpolates
    ("conv", "nonsaturating", 0.0, 8.0, False, "auto"),     # joint pass + a lean R1 pass
    ("conv", "nonsaturating", 0.0, 8.0, False, False),      # the real pass shared with R1
    ("conv", "hinge", 0.0, 0.0, True, "auto"),              # BatchNorm in training: separate passes
    ("mlp", "wasserstein", 10.0, 0.0, False, False),
    ("mlp", "least_squares", 0.0, 2.0, False, "auto"),
])
def test_step_loss_equals_textbook(impl, critic, loss, gp_weight, r1_weight, norm, joint, rng):
    name, device = impl
    if norm and gp_weight + r1_weight:
        pytest.skip("a fused BatchNorm in training has no double backward")
    make = (lambda: conv_critic(1, norm=norm)) if critic == "conv" else (lambda: mlp_critic(1))
    D_ref, D = make().to(device), make().to(device)
    shape = (3, 2, 8, 8) if critic == "conv" else (5, 2)
    real = randn(shape, torch.float64, device, rng)
    fake = randn(shape, torch.float64, device, rng)
    eps = torch.rand(shape[0], generator=rng, dtype=torch.float64).to(device)
    ref = textbook(D_ref, real, fake, loss, gp_weight, r1_weight, eps)
    ref.backward()
    out = S.discriminator_step_loss(D, real, fake, loss, gp_weight=gp_weight, r1_weight=r1_weight, eps=eps,
                                    joint=joint)
    out.total.backward()
    assert_close(out.total, ref, atol=1e-12, rtol=1e-10, name="total")
    assert_close(out.adversarial, L.discriminator_loss(out.real_logits, out.fake_logits, loss), name="adversarial")
    assert (out.penalty is None) == (gp_weight + r1_weight == 0)
    assert out.real_logits.shape[0] == shape[0] and out.fake_logits.shape[0] == shape[0]
    expected = grads(D_ref)
    for pname, g in grads(D).items():
        assert_close(g, expected[pname], atol=1e-12, rtol=1e-9, name=f"gradient of {pname}")


def test_step_loss_fewer_operations_than_textbook(rng):
    """The joint pass and the lean interpolates: fewer device operations than the textbook step
    on the same critic (the bench cases measure it at the real sizes)."""
    D = mlp_critic(2)
    real, fake = randn((16, 2), torch.float64, gen=rng), randn((16, 2), torch.float64, gen=rng)
    eps = torch.rand(16, generator=rng, dtype=torch.float64)

    def run(fn):
        def step():
            fn().backward()
            clear(D)
        return count_device_ops(step)

    ops_ref = run(lambda: textbook(D, real, fake, "wasserstein", 10.0, 0.0, eps))
    ops = run(lambda: S.discriminator_step_loss(D, real, fake, "wasserstein", gp_weight=10.0, eps=eps).total)
    assert ops.by_op["aten::zeros_like"] == 0 < ops_ref.by_op["aten::zeros_like"]
    assert ops.by_op["aten::addmm"] == ops_ref.by_op["aten::addmm"] * 2 // 3  # 2 passes of D, not 3
    assert ops.ops < ops_ref.ops - 20


def test_batch_coupled():
    assert not S.batch_coupled(conv_critic(0))
    bn = conv_critic(0, norm=True)
    assert S.batch_coupled(bn)
    assert not S.batch_coupled(bn.eval())          # running statistics: per sample
    raw = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    assert S.batch_coupled(raw) and not S.batch_coupled(raw.eval())
    assert S.batch_coupled(lambda x: x.sum(1))    # not inspectable
    custom = mlp_critic(0)
    custom.couples_batch = True
    assert S.batch_coupled(custom)


def test_joint_choice_and_errors(rng):
    D = conv_critic(3, norm=True)
    real, fake = randn((2, 2, 8, 8), torch.float64, gen=rng), randn((2, 2, 8, 8), torch.float64, gen=rng)
    with pytest.raises(ValueError, match="couples the samples"):
        S.discriminator_step_loss(D, real, fake, "hinge", joint=True)
    with pytest.raises(ValueError, match="joint must be"):
        S.discriminator_step_loss(D, real, fake, "hinge", joint="yes")
    with pytest.raises(ValueError, match="gp_weight must be >= 0"):
        S.discriminator_step_loss(D, real, fake, "hinge", gp_weight=-1.0)
    with pytest.raises(ValueError, match="kind 'hinge' takes no labels"):
        S.discriminator_step_loss(D, real, fake, "hinge", real_label=0.9)
    with pytest.raises(TypeError, match="real must be a tensor"):
        S.discriminator_step_loss(D, [1.0], fake, "hinge")
    # separate passes through a batch-coupled D: its BatchNorm saw real and fake apart
    out = S.discriminator_step_loss(D, real, fake, "hinge")
    assert D[3].num_batches_tracked.item() == 2
    D2 = conv_critic(3)
    calls = []
    D2.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    S.discriminator_step_loss(D2, real, fake, "hinge")
    S.discriminator_step_loss(D2, real, fake, "hinge", joint=False)
    assert calls == [4, 2, 2]
    assert out.total.requires_grad


@pytest.mark.parametrize("act,alpha", [("lrelu", 0.2), ("relu", 0.0)])
def test_lean_gradgradcheck(kernel_impl, act, alpha, rng):
    """bias_act's derivatives under lean, checked numerically: the second derivative through
    grad_output and b is unchanged, and the dropped edge was exactly zero (gradgradcheck sees
    x's second derivative as 0 either way)."""
    name, device = kernel_impl
    x = randn((2, 3, 3), torch.float64, device, rng, requires_grad=True)
    b = randn((3,), torch.float64, device, rng, requires_grad=True)

    def f(x, b):
        with ganfast.ops.lean_double_backward():
            return ganfast.ops.bias_act(x, b, 1, act, alpha, 1.3)
    # keep samples away from the kink, where finite differences are not the derivative
    with torch.no_grad():
        x.add_(torch.where(x + b.view(1, -1, 1) >= 0, 0.1, -0.1))
    assert torch.autograd.gradcheck(f, (x, b))
    assert torch.autograd.gradgradcheck(f, (x, b))
