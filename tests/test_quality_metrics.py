"""The sample-quality metrics of issue 16: Fréchet distance (against scipy), k-NN precision and recall
(against a brute-force k-NN), the 2-D recall and mode KL, the digits CNN's cache, and the engine's
reports of them."""
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ganfast.train import TrainConfig, Trainer, load_dataset
from ganfast.train import features as feat
from ganfast.train.metrics import (DigitFeatures, digit_cnn, feature_network, frechet_distance, mode_kl,
                                   mode_metrics, precision_recall, sample_quality)


# tiny models: one intra-op thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian(n, d, gen, scale=1.0, shift=0.0):
    a = torch.randn(d, d, generator=gen, dtype=torch.float64) * scale
    return torch.randn(n, d, generator=gen, dtype=torch.float64) @ a + shift


def scipy_fd(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


# ---- Fréchet distance ------------------------------------------------------------------------------


@pytest.mark.parametrize("n_real,n_fake,d", [(400, 300, 8), (200, 500, 32), (50, 60, 3)])
def test_fd_matches_scipy(rng, n_real, n_fake, d):
    x = gaussian(n_real, d, rng)
    y = gaussian(n_fake, d, rng, scale=0.7, shift=0.5)
    ours, ref = frechet_distance(x, y), scipy_fd(x, y)
    assert ours == pytest.approx(ref, rel=1e-8, abs=1e-8)
    assert ours > 0.1


def test_fd_of_identical_sets_is_zero(rng):
    x = gaussian(300, 16, rng)
    assert abs(frechet_distance(x, x)) < 1e-8
    assert abs(frechet_distance(x, x[torch.randperm(300, generator=rng)])) < 1e-8


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # dead ReLU units: a singular covariance for sqrtm
def test_fd_with_a_feature_module_matches_scipy_on_its_features(rng):
    net = DigitFeatures()
    real = load_dataset("digits").points[:300]
    fake = (real[:200] + 0.3 * torch.randn(200, 1, 32, 32, generator=rng)).clamp(-1, 1)
    ours = frechet_distance(real, fake, feature=net)
    assert ours == pytest.approx(scipy_fd(net(real), net(fake)), rel=1e-6)
    assert frechet_distance(real, fake) == pytest.approx(ours, rel=1e-12)  # 4-D inputs: the digits CNN by default


def test_fd_bad_inputs(rng):
    with pytest.raises(ValueError, match="same feature dimension"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="fake needs at least 2 samples"):
        frechet_distance(torch.randn(10, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"real: expected features of shape \(N, d\)"):
        frechet_distance(torch.randn(10), torch.randn(10, 3))
    with pytest.raises(ValueError, match="images"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 3), feature=DigitFeatures())


# ---- precision and recall --------------------------------------------------------------------------


def brute_force_pr(real, fake, k):
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

    def radii(s):
        out = []
        for i in range(len(s)):
            d = sorted(float(np.sqrt(((s[i] - s[j]) ** 2).sum())) for j in range(len(s)) if j != i)
            out.append(d[k - 1])
        return out

    def inside(points, centres, rad):
        return [any(np.sqrt(((p - c) ** 2).sum()) <= r for c, r in zip(centres, rad)) for p in points]

    return {"precision": float(np.mean(inside(fake, real, radii(real)))),
            "recall": float(np.mean(inside(real, fake, radii(fake))))}


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_matches_brute_force(rng, k):
    real = gaussian(120, 4, rng)
    fake = gaussian(90, 4, rng, scale=0.6, shift=0.4)
    ours = precision_recall(real, fake, k)
    ref = brute_force_pr(real, fake, k)
    assert ours == ref
    assert 0 < ours["precision"] < 1 and 0 < ours["recall"] < 1


def test_precision_recall_mode_collapse(rng):
    # real: 4 well separated clusters; fake: all of its samples in one of them
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], dtype=torch.float64)
    real = centres.repeat_interleave(40, 0) + 0.5 * torch.randn(160, 2, generator=rng, dtype=torch.float64)
    fake = centres[:1] + 0.5 * torch.randn(100, 2, generator=rng, dtype=torch.float64)
    ours = precision_recall(real, fake, 3)
    assert ours == brute_force_pr(real, fake, 3)
    assert ours["precision"] > 0.9 and ours["recall"] <= 0.25  # good samples, one mode in four
    # every fake sample the same point: precision 1 or 0, recall only for real points at that point
    collapsed = real[:1].repeat(10, 1)
    pr = precision_recall(real, collapsed, 3)
    assert pr == brute_force_pr(real, collapsed, 3) == {"precision": 1.0, "recall": 1 / 160}
    assert precision_recall(real, real, 3) == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_bad_inputs():
    with pytest.raises(ValueError, match=r"fake_feats needs at least k \+ 1 = 4 samples"):
        precision_recall(torch.randn(10, 2), torch.randn(3, 2), k=3)
    with pytest.raises(ValueError, match="same feature dimension"):
        precision_recall(torch.randn(10, 2), torch.randn(10, 3))
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        precision_recall(torch.randn(10, 2), torch.randn(10, 2), k=0)
    with pytest.raises(ValueError, match=r"real_feats: expected features of shape \(N, d\)"):
        precision_recall(torch.randn(10, 2, 1), torch.randn(10, 2))


# ---- 2-D mixtures: recall and mode KL ------------------------------------------------------------


def test_mode_kl():
    assert mode_kl([5, 5, 5, 5]) == pytest.approx(0.0, abs=1e-15)
    assert mode_kl([7, 0, 0, 0]) == pytest.approx(math.log(4))   # one mode: zero counts add nothing
    assert mode_kl([0, 0, 0]) == pytest.approx(math.log(3))      # no high-quality sample at all
    assert mode_kl([3, 1, 0, 0]) == pytest.approx(0.75 * math.log(3) + 0.25 * math.log(1))
    with pytest.raises(ValueError, match="per_mode"):
        mode_kl([1, -1])


def test_2d_recall_and_kl_on_constructed_cases(rng):
    ds = load_dataset("ring8")
    n = 320
    real = ds.sample(n, torch.Generator().manual_seed(5))
    # the data distribution itself: every mode, recall near 1, KL near 0
    m = mode_metrics(ds.sample(n, rng), ds.modes, ds.mode_std)
    assert m["modes"] == 8 and m["recall"] > 0.9 and m["mode_kl"] < 0.02
    # the same samples as the real ones: recall exactly 1
    assert mode_metrics(real, ds.modes, ds.mode_std, real=real)["recall"] == 1.0
    # collapsed on two modes of eight: recall about 2/8, KL = log 8 - log 2 = log 4
    two = ds.modes[torch.arange(n) % 2] + ds.mode_std * torch.randn(n, 2, generator=rng)
    m = mode_metrics(two, ds.modes, ds.mode_std, real=real)
    assert m["modes"] == 2 and m["mode_kl"] == pytest.approx(math.log(4), abs=1e-3)  # a few beyond 3 std
    c = np.array(m["per_mode"], np.float64)
    p = c[c > 0] / c.sum()
    assert m["mode_kl"] == pytest.approx(float(np.sum(p * np.log(p * 8))), rel=1e-12)
    assert m["recall"] == pytest.approx(brute_force_pr(real, two, 3)["recall"])
    assert 0.1 < m["recall"] < 0.4
    # the default real samples: seeded draws of the mixture, as many as samples
    assert mode_metrics(two, ds.modes, ds.mode_std)["recall"] == mode_metrics(two, ds.modes, ds.mode_std)["recall"]
    # too few samples for the k-NN: no recall, and no samples at all: the extreme KL
    assert mode_metrics(two[:3], ds.modes, ds.mode_std)["recall"] is None
    assert mode_metrics(two[:0], ds.modes, ds.mode_std)["mode_kl"] == pytest.approx(math.log(8))


# ---- the digits CNN and its cache ------------------------------------------------------------------


def test_digit_cnn_cache(tmp_path, monkeypatch):
    cheap = dict(feat.DIGIT_CNN_RECIPE, epochs=1, channels=[8, 16, 16])
    first = digit_cnn(cheap, tmp_path)
    assert first.trained_now and 0 <= first.accuracy["digits"] <= 1
    files = sorted(tmp_path.glob("digit-cnn-*.pt"))
    assert [f.name for f in files] == [f"digit-cnn-{feat.recipe_hash(cheap)}.pt"]
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left over

    # a new process (the memory cache cleared) loads the file, never trains
    monkeypatch.setattr(feat, "_LOADED", {})
    monkeypatch.setattr(feat, "_train_digit_cnn", lambda recipe: pytest.fail("retrained"))
    second = digit_cnn(cheap, tmp_path)
    assert not second.trained_now and second.accuracy == first.accuracy
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    monkeypatch.undo()

    # a change of recipe retrains, into a file of its own
    changed = dict(cheap, lr=1e-3)
    third = digit_cnn(changed, tmp_path)
    assert third.trained_now and len(list(tmp_path.glob("digit-cnn-*.pt"))) == 2


def test_digit_cnn_deterministic(tmp_path):
    cheap = dict(feat.DIGIT_CNN_RECIPE, epochs=1, channels=[8, 16, 16])
    a = feat._train_digit_cnn(cheap)
    state = torch.get_rng_state()
    b = feat._train_digit_cnn(cheap)
    assert torch.equal(state, torch.get_rng_state())  # the global stream untouched
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_default_digit_cnn_and_feature_network(ganfast_cache):
    net = feature_network("digits")
    assert net.name == "digits-cnn" and net.num_features == 128
    cnn = digit_cnn()
    assert cnn.accuracy["digits"] > 0.95 and cnn.accuracy["digits-bold"] > 0.95
    assert list(ganfast_cache.glob("digit-cnn-*.pt"))
    x = load_dataset("digits").points[:5]
    f = net(x)
    assert f.shape == (5, 128) and f.dtype == torch.float64
    # RGB and other sizes: greyscaled and resized
    assert torch.allclose(net(x.expand(-1, 3, -1, -1)), f)
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 128)


def test_folder_without_torchvision_weights_falls_back(monkeypatch):
    monkeypatch.setattr(feat, "_inception_weights_file", lambda: None)
    net = feature_network("folder:/somewhere")
    assert net.name == "digits-cnn" and "not found" in net.fallback


# ---- Inception v3 for image folders (optional: torchvision and cached weights) -----------------------


def _hub_weights(monkeypatch, tmp_path, url, state_dict):
    """Put `state_dict` where the torch hub cache keeps the weights file of `url` (a temporary hub)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    torch.save(state_dict, path)
    return path


def _expected_input(images):
    """What the Inception network must receive for images in [-1, 1] (before its transform_input):
    RGB, 299x299, ImageNet-normalised."""
    x = torch.nn.functional.interpolate(images.float().expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear",
                                        align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


class _FakeInception(torch.nn.Module):
    """Stands in for torchvision's Inception3 where torchvision is not installed: records how it was
    built and what it was given; 2,048 'pool features' from a fixed projection of the channel means."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs, self.inputs = kwargs, []
        self.proj = torch.nn.Linear(3, 2048)
        self.fc = torch.nn.Linear(2048, 1000)

    def forward(self, x):
        self.inputs.append(x)
        return self.fc(self.proj(x.mean((2, 3))))


def test_inception_features_glue(monkeypatch, tmp_path):
    # feature_network finds cached weights, builds the network as torchvision's weights builder does,
    # loads them, drops the classifier, and feeds it the preprocessed images in batches of 100
    import sys
    import types

    import torchmetrics.image.fid  # noqa: F401  (imported before the fake torchvision exists)

    url = "https://download.example/models/inception_v3_fake.pth"
    built = []

    def inception_v3(**kwargs):
        built.append(_FakeInception(**kwargs))
        return built[-1]

    models = types.ModuleType("torchvision.models")
    models.inception_v3 = inception_v3
    models.Inception_V3_Weights = types.SimpleNamespace(IMAGENET1K_V1=types.SimpleNamespace(url=url))
    tv = types.ModuleType("torchvision")
    tv.models = models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.delenv("GANFAST_FD_FEATURES", raising=False)
    saved = _FakeInception().state_dict()
    _hub_weights(monkeypatch, tmp_path, url, saved)

    net = feature_network("folder:/somewhere")
    assert net.name == "inception-v3" and net.num_features == 2048 and not getattr(net, "fallback", None)
    inner = built[-1]
    assert inner.kwargs == dict(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    assert all(torch.equal(inner.state_dict()[k], v) for k, v in saved.items() if not k.startswith("fc."))
    assert isinstance(inner.fc, torch.nn.Identity) and not any(p.requires_grad for p in inner.parameters())

    images = torch.rand(150, 1, 20, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f = net(images)
    assert f.shape == (150, 2048) and f.dtype == torch.float64
    assert [x.shape[0] for x in inner.inputs] == [100, 50]
    torch.testing.assert_close(torch.cat(inner.inputs), _expected_input(images))
    assert net(images[:0]).shape == (0, 2048)
    m = sample_quality(net(images[:60]), images[60:120], net, k=3)
    assert m["fd_features"] == "inception-v3" and "fd_features_note" not in m and m["fd"] > 0

    # GANFAST_FD_FEATURES: digits-cnn forces the digits CNN for a folder; inception-v3 forces Inception
    monkeypatch.setenv("GANFAST_FD_FEATURES", "digits-cnn")
    assert feature_network("folder:/somewhere").name == "digits-cnn"
    monkeypatch.setenv("GANFAST_FD_FEATURES", "inception-v3")
    assert feature_network("digits").name == "inception-v3"


def test_inception_features_with_torchvision(monkeypatch, tmp_path):
    # the real torchvision Inception v3 (random weights in the layout of the ImageNet file: nothing can
    # be downloaded here): its first convolution sees the images on the [-1, 1] scale those ported
    # weights were trained on, which is what transform_input=True restores from the ImageNet normalisation
    models = pytest.importorskip("torchvision.models")
    url = models.Inception_V3_Weights.IMAGENET1K_V1.url
    reference = models.inception_v3(weights=None, aux_logits=True, init_weights=False, num_classes=1000)
    _hub_weights(monkeypatch, tmp_path, url, reference.state_dict())
    monkeypatch.delenv("GANFAST_FD_FEATURES", raising=False)

    net = feature_network("folder:/somewhere")
    assert net.name == "inception-v3"
    seen = []
    net.net.Conv2d_1a_3x3.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f = net(images)
    assert f.shape == (2, 2048) and f.dtype == torch.float64 and torch.isfinite(f).all()
    scaled = torch.nn.functional.interpolate(images.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear",
                                             align_corners=False)
    torch.testing.assert_close(seen[0], scaled, atol=1e-5, rtol=1e-5)
    # the pool features are the reference network's, with its classifier removed
    reference.fc = torch.nn.Identity()
    reference.transform_input = True
    torch.testing.assert_close(f, reference.eval()(_expected_input(images)).double(), atol=1e-5, rtol=1e-5)


# ---- the engine reports them -----------------------------------------------------------------------


TINY = dict(width=16, depth=2, batch_size=16, progress=False, steps=2, eval_every=2)


def test_engine_digits_reports_quality(tmp_path):
    cfg = TrainConfig(data="digits", ngf=8, ndf=8, eval_samples=120, out=str(tmp_path / "d"), **TINY)
    summary = Trainer(cfg).fit()
    for key in ("metrics_ema", "metrics_raw"):
        m = summary[key]
        assert {"fd", "precision", "recall", "fd_features", "classes", "kl_uniform"} <= set(m)
        assert m["fd"] > 0 and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
        assert m["fd_features"] == "digits-cnn"
    on_disk = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert on_disk["metrics_ema"]["fd"] == summary["metrics_ema"]["fd"]
    rows = [json.loads(line) for line in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert any("fd" in r.get("eval", {}) for r in rows)


def test_engine_ring8_reports_recall_and_kl(tmp_path):
    cfg = TrainConfig(data="ring8", eval_samples=200, out=str(tmp_path / "r"), **TINY)
    summary = Trainer(cfg).fit()
    m = summary["metrics_ema"]
    assert {"modes", "high_quality", "recall", "mode_kl"} <= set(m)
    assert 0 <= m["recall"] <= 1 and 0 <= m["mode_kl"] <= math.log(8) + 1e-12


def test_real_digits_noise_floor_and_noise():
    # two disjoint halves of the real digits are close; uniform noise is far
    x = load_dataset("digits").points
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    a, b = x[perm[:800]], x[perm[800:1600]]
    floor = frechet_distance(a, b)
    noise = frechet_distance(a, torch.rand(800, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    assert floor < 0.05 * noise
    pr = precision_recall(DigitFeatures()(a), DigitFeatures()(b))
    assert pr["precision"] > 0.8 and pr["recall"] > 0.8


def test_engine_npy_images_and_points_report_quality(tmp_path):
    # unlabelled images (no class metrics): the quality metrics alone; 2-D points without modes: precision
    # and recall on the raw points
    g = torch.Generator().manual_seed(0)
    np.save(tmp_path / "img.npy", (torch.rand(40, 16, 16, generator=g) * 255).to(torch.uint8).numpy())
    np.save(tmp_path / "pts.npy", torch.randn(300, 2, generator=g).numpy())
    cfg = TrainConfig(data=f"npy:{tmp_path / 'img.npy'}", ngf=8, ndf=8, eval_samples=100, out=str(tmp_path / "i"),
                      **TINY)
    m = Trainer(cfg).fit()["metrics_ema"]
    assert set(m) == {"fd", "precision", "recall", "fd_features"} and m["fd_features"] == "digits-cnn"
    cfg = TrainConfig(data=f"npy:{tmp_path / 'pts.npy'}", eval_samples=100, out=str(tmp_path / "p"), **TINY)
    m = Trainer(cfg).fit()["metrics_ema"]
    assert set(m) == {"precision", "recall"} and 0 <= m["recall"] <= 1
