"""SAGAN / BigGAN models (ganfast.nn.sagan) and their self-attention block (ganfast.nn.attention):
the models against an eager torch transcription in float64 (values, gradients, R1's double
backward), the attention block against BigGAN-PyTorch's bmm + softmax form, shapes, the projection
head, spectral norm everywhere, the hierarchical z, hinge-loss training steps, argument errors, and
the conditional BatchNorm / orthogonal regularization as the models use them."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

import ganfast
import ganfast.losses as L
import ganfast.nn as gnn
from ganfast.nn import attention as attention_mod
from ganfast.penalty import orthogonal_regularization_

GENERATORS = (gnn.SAGANGenerator, gnn.BigGANGenerator)
DISCRIMINATORS = (gnn.SAGANDiscriminator, gnn.BigGANDiscriminator)
BACKENDS = ("cpu", "reference")


# ---- eager transcriptions ------------------------------------------------------------------------

def eager_attention(m, x):
    """BigGAN-PyTorch's layers.Attention, op for op: bmm, softmax, bmm (no 1/sqrt(d) scale)."""
    n, c, h, w = x.shape
    theta = F.conv2d(x, m.theta.weight).view(n, c // 8, h * w)
    phi = F.max_pool2d(F.conv2d(x, m.phi.weight), 2).view(n, c // 8, h * w // 4)
    g = F.max_pool2d(F.conv2d(x, m.g.weight), 2).view(n, c // 2, h * w // 4)
    beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
    o = F.conv2d(torch.bmm(g, beta.transpose(1, 2)).view(n, c // 2, h, w), m.o.weight)
    return m.gamma * o + x


def _cbn(bn, h, cond):
    h = F.batch_norm(h, None, None, None, None, True, 0.1, bn.eps)
    return F.relu(h * (1 + F.linear(cond, bn.gain.weight))[..., None, None] + F.linear(cond, bn.bias.weight)[..., None, None])


def eager_generator(G, z, y):
    if isinstance(G, gnn.BigGANGenerator):
        e = F.embedding(y, G.shared.weight)
        if G.hier:
            zs = torch.split(z, G.z_chunks, 1)
            z0, conds = zs[0], [torch.cat([e, c], 1) for c in zs[1:]]
        else:
            z0, conds = z, [e] * len(G.blocks)
    else:
        z0, conds = z, [F.one_hot(y, G.n_classes).to(z.dtype)] * len(G.blocks)
    h = F.linear(z0, G.linear.weight, G.linear.bias).view(z.size(0), -1, 4, 4)
    for i, b in enumerate(G.blocks):
        t = F.interpolate(_cbn(b.bn1, h, conds[i]), scale_factor=2)
        t = F.conv2d(t, b.conv1.weight, b.conv1.bias, padding=1)
        t = F.conv2d(_cbn(b.bn2, t, conds[i]), b.conv2.weight, b.conv2.bias, padding=1)
        h = t + F.conv2d(F.interpolate(h, scale_factor=2), b.conv_sc.weight, b.conv_sc.bias)
        res = str(h.size(-1))
        if res in G.attention:
            h = eager_attention(G.attention[res], h)
    bn = G.output_bn
    h = F.relu(F.batch_norm(h, None, None, bn.weight, bn.bias, True, 0.1, bn.eps))
    return torch.tanh(F.conv2d(h, G.output_conv.weight, G.output_conv.bias, padding=1))


def eager_features(D, x):
    h = x
    for i, b in enumerate(D.blocks):
        t = F.relu(h) if b.preactivation else h
        t = F.relu(F.conv2d(t, b.conv1.weight, b.conv1.bias, padding=1))
        t = F.conv2d(t, b.conv2.weight, b.conv2.bias, padding=1)
        s = h
        if b.downsample:
            t = F.avg_pool2d(t, 2)
        if b.conv_sc is not None:
            if b.preactivation:
                s = F.conv2d(s, b.conv_sc.weight, b.conv_sc.bias)
                s = F.avg_pool2d(s, 2) if b.downsample else s
            else:
                s = F.avg_pool2d(s, 2) if b.downsample else s
                s = F.conv2d(s, b.conv_sc.weight, b.conv_sc.bias)
        h = t + s
        key = D._attn_after.get(i)
        if key is not None:
            h = eager_attention(D.attention[key], h)
    return F.relu(h).sum((2, 3))


def eager_discriminator(D, x, y):
    h = eager_features(D, x)
    return F.linear(h, D.linear.weight, D.linear.bias).squeeze(1) + (D.embed.weight[y] * h).sum(1)


# ---- helpers --------------------------------------------------------------------------------------

def freeze_spectral_norm(model):
    """Power iteration off (the parametrizations in eval mode): every read of a weight gives the
    same tensor, so the model and its transcription use the same weights; BatchNorm stays in
    training mode."""
    for m in model.modules():
        if "SpectralNorm" in type(m).__name__:
            m.eval()
    return model


def perturb(model):
    """Non-trivial values where initialisation leaves identities: attention's gamma, the output
    BatchNorm's affine parameters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, gnn.SelfAttention2d):
                m.gamma.fill_(0.7)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ---- SelfAttention2d -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 8, 4, 6), (3, 16, 8, 8), (1, 24, 2, 2)])
@pytest.mark.parametrize("create_graph", [None, True, False])
def test_attention_matches_bmm_softmax(shape, create_graph):
    torch.manual_seed(0)
    m = freeze_spectral_norm(perturb(gnn.SelfAttention2d(shape[1]).double()))
    x = torch.randn(shape, dtype=torch.float64)
    up = torch.randn(shape, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = m(xa, create_graph), eager_attention(m, xb)
    torch.testing.assert_close(ya, yb)
    assert not torch.allclose(ya, x)  # gamma != 0: the attention branch contributes
    ga = torch.autograd.grad(ya, [xa] + list(m.parameters()), up)
    gb = torch.autograd.grad(yb, [xb] + list(m.parameters()), up)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


def test_attention_gradcheck_and_gradgradcheck():
    torch.manual_seed(0)
    m = perturb(gnn.SelfAttention2d(8, sn=False).double())
    x = torch.randn(1, 8, 2, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda x, gamma, w: torch.func.functional_call(m, {"gamma": gamma, "theta.weight": w}, (x,))
    args = (x, m.gamma.detach().clone().requires_grad_(), m.theta.weight.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=True)


def test_attention_starts_as_identity_and_is_spectrally_normalised():
    m = gnn.SelfAttention2d(16)
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(m(x), x)
    assert m.gamma.item() == 0.0
    for name in ("theta", "phi", "g", "o"):
        assert parametrize.is_parametrized(getattr(m, name), "weight")
        assert getattr(m, name).bias is None
    assert [getattr(m, n).weight.shape[0] for n in ("theta", "phi", "g", "o")] == [2, 2, 8, 16]
    assert not any(parametrize.is_parametrized(getattr(gnn.SelfAttention2d(16, sn=False), n)) for n in ("theta", "o"))


def test_attention_rejects_bad_input():
    m = gnn.SelfAttention2d(8)
    with pytest.raises(ValueError, match="H and W must be even"):
        m(torch.randn(2, 8, 5, 4))
    with pytest.raises(ValueError, match="H and W must be even"):
        m(torch.randn(2, 8, 4, 3))
    with pytest.raises(ValueError, match=r"expected input \(N, 8, H, W\)"):
        m(torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match="channels must be an int >= 8"):
        gnn.SelfAttention2d(4)


def test_attention_picks_the_math_backend_when_a_second_derivative_may_follow(monkeypatch):
    """The models ask for SDPA's math backend exactly when their input requires grad (a penalty
    differentiates through them with create_graph=True); otherwise the fused kernels may run."""
    calls = []
    real = attention_mod._attention_math_backend

    def spy():
        calls.append(1)
        return real()

    monkeypatch.setattr(attention_mod, "_attention_math_backend", spy)
    D = gnn.SAGANDiscriminator(3, ch=4, resolution=32, channels=1)
    x, y = torch.randn(2, 1, 32, 32), torch.tensor([0, 2])
    D(x, y).sum().backward()
    assert calls == []
    with torch.no_grad():
        D(x.requires_grad_(), y)
    assert calls == []
    D(x, y)
    assert calls == [1]
    m = gnn.SelfAttention2d(8)
    m(torch.randn(2, 8, 4, 4, requires_grad=True), False)
    assert calls == [1]
    m.double_backward = True
    m(torch.randn(2, 8, 4, 4))
    assert calls == [1, 1]


# ---- the models against their eager transcription --------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls,kwargs", [(gnn.SAGANGenerator, {}), (gnn.BigGANGenerator, {}),
                                        (gnn.BigGANGenerator, {"hier": False, "z_dim": 9, "shared_dim": 5})])
def test_generator_matches_eager(backend, cls, kwargs):
    torch.manual_seed(0)
    G = freeze_spectral_norm(perturb(cls(5, ch=4, resolution=32, channels=3, attn_res=(16,), **kwargs).double()))
    z = torch.randn(3, G.z_dim, dtype=torch.float64)
    y = torch.tensor([4, 0, 2])
    up = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with ganfast.use_backend(backend):
        out = G(z, y)
    ref = eager_generator(G, z, y)
    torch.testing.assert_close(out, ref)
    out.backward(up)
    ga = grads(G)
    G.zero_grad(set_to_none=True)
    ref.backward(up)
    gb = grads(G)
    assert ga.keys() == gb.keys() and len(ga) == len(list(G.parameters()))
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("resolution,attn_res", [(32, (16,)), (32, (8,)), (64, (16, 8))])
def test_discriminator_matches_eager_with_r1(backend, resolution, attn_res):
    """D(x, y), its parameter gradients, and the R1 penalty's gradients (double backward through
    the attention block, the fused ReLUs, the pools and the projection) equal the eager ones."""
    torch.manual_seed(0)
    D = freeze_spectral_norm(perturb(gnn.SAGANDiscriminator(5, ch=4,
                                                            resolution=resolution, channels=3,
                                                            attn_res=attn_res).double()))
    x = torch.randn(2, 3, resolution, resolution, dtype=torch.float64)
    y = torch.tensor([1, 4])
    results = []
    for fn in ("model", "eager"):
        xr = x.clone().requires_grad_()
        with ganfast.use_backend(backend):
            logits = D(xr, y) if fn == "model" else eager_discriminator(D, xr, y)
            g, = torch.autograd.grad(logits.sum(), xr, create_graph=True)
            r1 = g.square().sum((1, 2, 3)).mean()
            (r1 + logits.mean()).backward()
        results.append((logits.detach(), g.detach(), grads(D)))
        D.zero_grad(set_to_none=True)
    (la, ga, pa), (lb, gb, pb) = results
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(ga, gb)
    assert pa.keys() == pb.keys() and len(pa) == len(list(D.parameters()))
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], msg=k)


def test_projection_term():
    """logit = psi(h) + <embed(y), h>, h = sum over positions of ReLU(last features): changing the
    label moves the logit by exactly <embed(y) - embed(y'), h>."""
    torch.manual_seed(0)
    D = freeze_spectral_norm(gnn.BigGANDiscriminator(6, ch=4, resolution=32, channels=1).double())
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    y, y2 = torch.tensor([0, 1, 2, 5]), torch.tensor([3, 3, 0, 1])
    h = D.features(x)
    torch.testing.assert_close(h, eager_features(D, x))
    assert h.shape == (4, 16) and (h >= 0).all()
    emb = D.embed.weight
    torch.testing.assert_close(D(x, y), (h @ D.linear.weight.t() + D.linear.bias).squeeze(1) + (emb[y] * h).sum(1))
    torch.testing.assert_close(D(x, y) - D(x, y2), ((emb[y] - emb[y2]) * h).sum(1))


# ---- structure ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", GENERATORS)
@pytest.mark.parametrize("resolution,channels", [(32, 1), (32, 3), (64, 3)])
def test_generator_shapes(cls, resolution, channels):
    torch.manual_seed(0)
    G = cls(7, ch=4, resolution=resolution, channels=channels)
    out = G(torch.randn(2, G.z_dim), torch.tensor([0, 6]))
    assert out.shape == (2, channels, resolution, resolution)
    assert out.abs().max() <= 1 and torch.isfinite(out).all() and out.std() > 0
    assert (G.n_classes, G.resolution, G.channels) == (7, resolution, channels)
    G2 = cls(**G.spec())
    assert G2.spec() == G.spec()
    G2.load_state_dict(G.state_dict())
    G.eval()
    assert G(torch.randn(1, G.z_dim), torch.tensor([3])).shape == (1, channels, resolution, resolution)


@pytest.mark.parametrize("cls", DISCRIMINATORS)
@pytest.mark.parametrize("resolution,channels", [(32, 1), (32, 3), (64, 3)])
def test_discriminator_shapes(cls, resolution, channels):
    torch.manual_seed(0)
    D = cls(7, ch=4, resolution=resolution, channels=channels)
    out = D(torch.randn(2, channels, resolution, resolution), torch.tensor([1, 5]))
    assert out.shape == (2,) and torch.isfinite(out).all()
    assert D(torch.randn(0, channels, resolution, resolution), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_widths_follow_biggan_arch():
    G = gnn.SAGANGenerator(3, ch=2, resolution=64, attn_res=())
    assert [b.conv1.weight.shape[:2] for b in G.blocks] == [(32, 32), (16, 32), (8, 16), (4, 8)]
    assert G.linear.weight.shape == (32 * 16, 128)
    assert G.output_conv.weight.shape == (3, 4, 3, 3)
    D = gnn.SAGANDiscriminator(3, ch=2, resolution=64, channels=1, attn_res=())
    assert [tuple(b.conv1.weight.shape[:2]) for b in D.blocks] == [(2, 1), (4, 2), (8, 4), (16, 8), (32, 16)]
    assert [b.downsample for b in D.blocks] == [True, True, True, True, False]
    assert [b.preactivation for b in D.blocks] == [False, True, True, True, True]
    D = gnn.SAGANDiscriminator(3, ch=2, resolution=32, channels=1, attn_res=())
    assert [tuple(b.conv1.weight.shape[:2]) for b in D.blocks] == [(8, 1), (8, 8), (8, 8), (8, 8)]
    assert [b.conv_sc is not None for b in D.blocks] == [True, True, False, False]
    G = gnn.SAGANGenerator(3, ch=2, resolution=32, attn_res=())
    assert [tuple(b.conv1.weight.shape[:2]) for b in G.blocks] == [(8, 8)] * 3


@pytest.mark.parametrize("cls", GENERATORS + DISCRIMINATORS)
def test_spectral_norm_on_every_weight(cls):
    """Every conv, linear and embedding weight (the conditional BatchNorms' gain / bias maps
    included) is spectrally normalised, except BigGAN's shared class embedding; eps = 1e-6."""
    model = cls(4, ch=4, resolution=32, channels=1, attn_res=(16,))
    keys = model.state_dict().keys()
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding))]
    assert len(layers) > 10
    for name, m in layers:
        if name == "shared":
            assert not parametrize.is_parametrized(m)
            continue
        assert f"{name}.parametrizations.weight.original" in keys, name
        assert m.parametrizations.weight[0].eps == 1e-6
    assert any(n.endswith(".gain") for n, _ in layers) == (cls in GENERATORS)


def test_orthogonal_initialisation():
    G = gnn.BigGANGenerator(4, ch=8, resolution=32, channels=1)
    for w in (G.blocks[0].conv1.parametrizations.weight.original, G.linear.parametrizations.weight.original,
              G.shared.weight):
        w = w.detach().reshape(w.shape[0], -1)
        small = w if w.shape[0] <= w.shape[1] else w.t()
        torch.testing.assert_close(small @ small.t(), torch.eye(small.shape[0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("resolution,z_dim,chunks", [(32, 120, (30, 30, 30, 30)), (64, 120, (24,) * 5),
                                                     (32, 10, (4, 2, 2, 2)), (64, 5, (1,) * 5)])
def test_hierarchical_z(resolution, z_dim, chunks):
    torch.manual_seed(0)
    G = gnn.BigGANGenerator(3, z_dim=z_dim, ch=4, resolution=resolution, channels=1, shared_dim=6, attn_res=())
    assert G.z_chunks == chunks and sum(chunks) == z_dim
    assert G.linear.parametrizations.weight.original.shape[1] == chunks[0]
    seen = []
    for b in G.blocks:
        assert b.bn1.gain.parametrizations.weight.original.shape[1] == 6 + chunks[1]
        b.register_forward_pre_hook(lambda mod, args: seen.append(args[1]))
    z, y = torch.randn(2, z_dim), torch.tensor([2, 0])
    G(z, y)
    e = G.shared(y)
    starts = torch.tensor((0,) + chunks).cumsum(0)
    for i, cond in enumerate(seen):
        torch.testing.assert_close(cond, torch.cat([e, z[:, starts[i + 1]:starts[i + 2]]], 1))


def test_not_hierarchical():
    G = gnn.BigGANGenerator(3, z_dim=7, ch=4, channels=1, shared_dim=6, hier=False, attn_res=())
    assert G.z_chunks == (7,) and G.linear.parametrizations.weight.original.shape[1] == 7
    assert G.blocks[0].bn1.gain.parametrizations.weight.original.shape[1] == 6
    assert G(torch.randn(2, 7), torch.tensor([0, 1])).shape == (2, 1, 32, 32)


@pytest.mark.parametrize("G_cls,D_cls", [(gnn.SAGANGenerator, gnn.SAGANDiscriminator),
                                         (gnn.BigGANGenerator, gnn.BigGANDiscriminator)])
def test_hinge_training_steps(G_cls, D_cls):
    """A few D and G steps with the hinge loss (Adam, BigGAN's betas, orthogonal regularisation on
    G) move every parameter and keep everything finite."""
    torch.manual_seed(0)
    G = G_cls(4, ch=4, resolution=32, channels=1)
    D = D_cls(4, ch=4, resolution=32, channels=1)
    opt_g = torch.optim.Adam(G.parameters(), 1e-3, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 1e-3, betas=(0.0, 0.999))
    g0 = {n: p.detach().clone() for n, p in G.named_parameters()}
    d0 = {n: p.detach().clone() for n, p in D.named_parameters()}
    real = torch.rand(3, 1, 32, 32) * 2 - 1
    for _ in range(2):
        y = torch.randint(0, 4, (3,))
        z = torch.randn(3, G.z_dim)
        loss_d = L.discriminator_loss(D(real, y), D(G(z, y).detach(), y), kind="hinge")
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = L.generator_loss(D(G(z, y), y), kind="hinge")
        opt_g.zero_grad()
        loss_g.backward()
        orthogonal_regularization_(G, 1e-4)
        opt_g.step()
        assert torch.isfinite(loss_d) and torch.isfinite(loss_g)
    for model, before in ((G, g0), (D, d0)):
        for n, p in model.named_parameters():
            assert torch.isfinite(p).all(), n
            assert not torch.equal(p, before[n]), n


# ---- arguments ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", GENERATORS + DISCRIMINATORS)
def test_constructor_errors(cls):
    with pytest.raises(ValueError, match="resolution must be one of"):
        cls(3, resolution=48)
    with pytest.raises(ValueError, match="n_classes must be an int >= 1"):
        cls(0)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        cls(3, channels=2)
    with pytest.raises(ValueError, match="ch must be"):
        cls(3, ch=0)
    with pytest.raises(ValueError, match=r"attn_res \[7\] not available"):
        cls(3, ch=4, attn_res=(7,))
    with pytest.raises(ValueError, match="needs >= 8 channels"):
        cls(3, ch=1, attn_res=(16,))


def test_biggan_z_dim_too_small():
    with pytest.raises(ValueError, match="z_dim must be >= 4 with hier=True at resolution 32"):
        gnn.BigGANGenerator(3, z_dim=3)
    with pytest.raises(ValueError, match="z_dim must be >= 5"):
        gnn.BigGANGenerator(3, z_dim=4, resolution=64)
    gnn.BigGANGenerator(3, z_dim=3, ch=2, hier=False, attn_res=())


@pytest.mark.parametrize("cls", GENERATORS)
def test_generator_input_errors(cls):
    G = cls(3, ch=2, attn_res=())
    z = torch.randn(2, G.z_dim)
    with pytest.raises(ValueError, match=rf"z must be a floating \(N, z_dim={G.z_dim}\)"):
        G(torch.randn(2, G.z_dim + 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class labels y must lie in \\[0, 3\\); got values in \\[0, 3\\]"):
        G(z, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="got values in \\[-1, 1\\]"):
        G(z, torch.tensor([-1, 1]))
    with pytest.raises(ValueError, match=r"y must be a \(2,\) integer tensor"):
        G(z, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"y must be a \(2,\) integer tensor"):
        G(z, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("cls", DISCRIMINATORS)
def test_discriminator_input_errors(cls):
    D = cls(3, ch=2, channels=1, attn_res=())
    with pytest.raises(ValueError, match=r"x must be \(N, 1, 32, 32\)"):
        D(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"x must be \(N, 1, 32, 32\)"):
        D(torch.randn(2, 1, 64, 64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class labels y must lie in"):
        D(torch.randn(2, 1, 32, 32), torch.tensor([0, 5]))


# ---- the conditional BatchNorm and orthogonal regularization the models use ----------------------------------------------------------------------------------

def test_conditional_batch_norm_as_the_models_use_it():
    torch.manual_seed(0)
    bn = gnn.ConditionalBatchNorm2d(5, 3, act="lrelu").double()
    x = torch.randn(4, 5, 3, 2, dtype=torch.float64)
    c = torch.randn(4, 3, dtype=torch.float64)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    xhat = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
    t = xhat * (1 + c @ bn.gain.weight.t())[..., None, None] + (c @ bn.bias.weight.t())[..., None, None]
    torch.testing.assert_close(bn(x, c), F.leaky_relu(t, 0.2))
    torch.testing.assert_close(bn.running_mean, 0.1 * mean)
    assert int(bn.num_batches_tracked) == 1
    assert bn.gain.bias is None and bn.bias.bias is None
    assert set(bn.state_dict()) == {"running_mean", "running_var", "num_batches_tracked", "gain.weight",
                                     "bias.weight"}


def test_orthogonal_regularization_in_place_is_the_gradient_of_its_penalty():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4).double()
    conv = torch.nn.Conv2d(2, 3, 3).double()
    params = list(lin.parameters()) + list(conv.parameters())
    beta = 0.3
    expect = []
    for p in params:
        if p.dim() < 2:
            expect.append(None)
            continue
        w = p.detach().clone().requires_grad_()
        m = w.reshape(w.shape[0], -1)
        pen = beta * ((m @ m.t()) * (1 - torch.eye(m.shape[0], dtype=m.dtype))).square().sum()
        expect.append(torch.autograd.grad(pen, w)[0])
    lin.weight.grad = torch.ones_like(lin.weight)
    orthogonal_regularization_(params, beta)
    torch.testing.assert_close(lin.weight.grad, expect[0] + 1)
    torch.testing.assert_close(conv.weight.grad, expect[2])
    assert lin.bias.grad is None and conv.bias.grad is None
