"""SAGAN and BigGAN in the training engine and the command line (issue 12): the per-model defaults,
labelled data (digits, folders of class subfolders, npy: with a .labels.npy sidecar), a few steps of
each model end to end, exact resume, orthogonal regularization, the class-agreement metric, and
`ganfast sample --class / --truncation`. Tiny widths and a handful of steps: seconds per test."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from ganfast import cli
from ganfast.train import TrainConfig, Trainer, class_agreement, load_checkpoint, load_dataset, load_generator
from ganfast.train import trainer as trainer_mod
from ganfast.train.data import DataSampler, digits, labels_path
from ganfast.train.sampling import class_rows, sample_with_labels


# tiny models: one intra-op thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(ngf=4, ndf=4, z_dim=8, batch_size=8, eval_samples=40, progress=False, log_every=1, eval_every=1000)
TINY_CLI = ["--ngf", "4", "--ndf", "4", "--z-dim", "8", "--batch-size", "8", "--eval-samples", "40",
            "--no-progress", "--log-every", "1"]


def tiny(tmp_path, name="run", **kw) -> TrainConfig:
    values = dict(TINY, data="digits", model="sagan", steps=4, out=str(tmp_path / name))
    values.update(kw)
    return TrainConfig(**values)


def rows_of(out) -> list:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def loss_rows(out) -> list:
    keys = ("step", "loss_d", "loss_g", "d_real", "d_fake", "penalty")
    return [{k: r[k] for k in keys if k in r} for r in rows_of(out) if "loss_d" in r]


def class_folder(root, classes=("cat", "ant", "bee"), per_class=5, nested=False):
    """PNG files in one subfolder per class; each class a different pattern (a bright row band at its
    own height), so the images differ by class. The classes are deliberately not in sorted order."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        d = root / name / ("deeper" if nested else "")
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = (rng.random((12, 12)) * 60).astype(np.uint8)
            a[4 * k: 4 * k + 4] = 255
            Image.fromarray(a, "L").save(d / f"{i}.png")
    return root


# ---- configuration ------------------------------------------------------------------------------


def test_per_model_defaults_and_explicit_values_win():
    s = TrainConfig(model="sagan", data="digits").resolve()
    assert (s.objective, s.lr_d, s.lr_g, s.betas, s.d_steps, s.ortho_reg, s.attn_res) == \
        ("hinge", 4e-4, 2e-4, (0.0, 0.9), 1, 0.0, (16,))
    assert (s.steps, s.ngf, s.ndf, s.z_dim, s.ema, s.batch_size, s.lr_decay) == (3000, 8, 8, 128, 0.999, 32, False)
    b = TrainConfig(model="biggan", data="digits").resolve()
    assert (b.objective, b.lr_d, b.lr_g, b.betas, b.d_steps, b.ortho_reg, b.z_dim) == \
        ("hinge", 2e-4, 2e-4, (0.0, 0.999), 2, 5e-5, 120)
    assert (b.steps, b.batch_size, b.lr_decay) == (1400, 32, False)
    c = TrainConfig(model="biggan", data="digits", lr_d=1e-3, betas=(0.5, 0.99), d_steps=1, ortho_reg=0.0,
                    attn_res=(), objective="nonsaturating").resolve()
    assert (c.objective, c.lr_d, c.lr_g, c.betas, c.d_steps, c.ortho_reg, c.attn_res) == \
        ("nonsaturating", 1e-3, 2e-4, (0.5, 0.99), 1, 0.0, ())
    # the unconditional models are untouched
    d = TrainConfig(data="digits").resolve()
    assert (d.objective, d.lr_d, d.betas, d.ortho_reg, d.attn_res, d.ngf) == \
        ("nonsaturating", 2e-4, (0.5, 0.999), None, None, 64)


@pytest.mark.parametrize("kw, match", [
    (dict(model="dcgan", ortho_reg=1e-4), "ortho_reg applies to the sagan and biggan"),
    (dict(model="biggan", ortho_reg=-1.0), "ortho_reg must be a finite number >= 0"),
    (dict(model="sagan", attn_res=(12,)), "attn_res must be a list of powers of two"),
    (dict(model="sagan", image_size=128), "sagan trains 32x32 or 64x64"),
])
def test_bad_conditional_config(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(data="digits", **kw).validate()


def test_help_and_config_toml_show_the_defaults(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("sagan (Zhang et al.", "biggan (Brock et al.", "--ortho-reg BETA", "--attn-res",
                  "sagan D 0.0004 / G 0.0002 with betas (0.0, 0.9)", "biggan D 0.0002 / G 0.0002 with (0.0, 0.999)",
                  "sagan 1, biggan 2", "biggan 5e-05 = its 1e-4", "sagan: 3,000; biggan: 1,400",
                  "hinge for sagan and biggan", "sagan / biggan: G's ch, 8", "32 for sagan and biggan",
                  "except for --model infogan, sagan and biggan"):
        assert words in text, words
    out = tmp_path / "run"
    assert cli.main(["train", "--model", "biggan", "--data", "digits", "--steps", "1", *TINY_CLI,
                     "--out", str(out)]) == 0
    toml = (out / "config.toml").read_text()
    for line in ('model = "biggan"', 'objective = "hinge"', "betas = [0.0, 0.999]", "d_steps = 2",
                 "lr_d = 0.0002", "lr_g = 0.0002", "lr_decay = false", "ortho_reg = 5e-05", "attn_res = [16]",
                 "ema = 0.999"):
        assert line in toml.splitlines(), line
    # the written file is a configuration that trains the same run
    cfg = TrainConfig.from_toml(out / "config.toml")
    assert (cfg.model, cfg.attn_res, cfg.ortho_reg) == ("biggan", (16,), 5e-5)


# ---- labelled data ------------------------------------------------------------------------------


def test_folder_of_class_subfolders_is_labelled_and_a_flat_one_is_not(tmp_path):
    root = class_folder(tmp_path / "classes", nested=True)  # images deeper inside the class folders count
    ds = load_dataset(f"folder:{root}", 32)
    assert ds.class_names == ["ant", "bee", "cat"] and ds.n_classes == 3
    assert ds.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    # the label is the folder the image came from: "cat" images have the band at rows 0..3 (of 12)
    cat = ds.points[ds.labels == 2]
    assert (cat[:, :, :8].mean() > cat[:, :, 16:].mean() + 0.5)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, p in enumerate(sorted((root / "ant").rglob("*.png"))):
        p.rename(flat / f"{i}.png")
    assert load_dataset(f"folder:{flat}", 32).labels is None
    # an image directly in the folder as well: not ImageFolder's layout, so unlabelled
    mixed = class_folder(tmp_path / "mixed")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "stray.png")
    assert load_dataset(f"folder:{mixed}", 32).labels is None


def test_npy_labels_sidecar(tmp_path):
    x = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert load_dataset(f"npy:{tmp_path / 'x.npy'}", 32).labels is None
    assert labels_path(tmp_path / "x.npy") == tmp_path / "x.labels.npy"
    np.save(tmp_path / "x.labels.npy", np.array([0, 1, 2, 0, 1, 3]))
    ds = load_dataset(f"npy:{tmp_path / 'x.npy'}", 32)
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 3] and ds.n_classes == 4
    np.save(tmp_path / "x.labels.npy", np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"x.labels.npy: expected \(6,\) integers >= 0"):
        load_dataset(f"npy:{tmp_path / 'x.npy'}", 32)
    np.save(tmp_path / "x.labels.npy", np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="expected"):
        load_dataset(f"npy:{tmp_path / 'x.npy'}", 32)


def test_labelled_batches_are_the_unlabelled_stream():
    """next_labelled draws exactly what next() draws (one randint of the sampler's generator), so the
    unconditional runs' batches are unchanged, and each label is its image's."""
    ds = digits(32)
    a, b = DataSampler(ds, 16, 5, torch.device("cpu")), DataSampler(ds, 16, 5, torch.device("cpu"))
    for _ in range(3):
        x = a.next()
        xb, yb = b.next_labelled()
        assert torch.equal(x, xb)
        for img, y in zip(xb, yb):
            matches = (ds.points == img).flatten(1).all(1).nonzero().flatten()
            assert y.item() in ds.labels[matches].tolist()
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


@pytest.mark.parametrize("model", ["sagan", "biggan"])
def test_unlabelled_data_is_a_clear_error(tmp_path, model, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(flat / f"{i}.png")
    assert cli.main(["train", "--model", model, "--data", f"folder:{flat}", "--steps", "1", *TINY_CLI,
                     "--out", str(tmp_path / "r")]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"model '{model}' is class-conditional and needs labelled images" in err
    assert "one subfolder per class" in err and "X.labels.npy" in err
    with pytest.raises(ValueError, match=f"model '{model}' trains on images"):
        Trainer(TrainConfig(model=model, data="ring8", steps=1, out=str(tmp_path / "p"), progress=False)).fit()


# ---- training ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["sagan", "biggan"])
def test_trains_end_to_end_on_class_folders_and_samples_per_class(tmp_path, model, capsys):
    root = class_folder(tmp_path / "data", per_class=3)
    out = tmp_path / "run"
    assert cli.main(["train", "--model", model, "--data", f"folder:{root}", "--steps", "3", *TINY_CLI,
                     "--eval-every", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"ganfast train: hinge on folder:{root}: step 3" in text and "requested class agreement" in text
    for name in ("config.toml", "checkpoint.pt", "metrics.jsonl", "samples.png", "training.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metrics_ema"]
    assert m["n_classes"] == 3 and 0 <= m["class_agreement"] <= 1 and len(m["class_agreement_per_class"]) == 3
    # samples.png: one row per class (3 rows of 32x32 tiles with 2-pixel gaps)
    assert Image.open(out / "samples.png").size[1] == 3 * 34 + 2
    # the checkpoint rebuilds G from its spec, without the data
    spec = load_checkpoint(out)["model"]
    assert spec["kind"] == model and spec["n_classes"] == 3 and spec["ch"] == 4 and spec["z_dim"] == 8
    G = load_generator(out)
    assert (G.n_classes, G.z_dim, G.resolution, G.channels) == (3, 8, 32, 1)

    png = tmp_path / "s.png"
    assert cli.main(["sample", "--ckpt", str(out), "--n", "7", "--out", str(png)]) == 0
    w, h = Image.open(png).size
    assert h == 3 * 34 + 2  # a row per class, however many of each were drawn
    npy = tmp_path / "s.npy"
    assert cli.main(["sample", "--ckpt", str(out), "--n", "9", "--out", str(npy), "--class", "2",
                     "--truncation", "0.5"]) == 0
    assert np.load(npy).shape == (9, 1, 32, 32)
    assert np.load(tmp_path / "s.labels.npy").tolist() == [2] * 9


def test_sagan_and_biggan_on_digits_the_metric_and_the_ortho_reg(tmp_path, monkeypatch):
    calls = []
    real = trainer_mod.orthogonal_regularization_

    def spy(params, beta):
        calls.append((list(params), beta))
        real(params, beta)

    monkeypatch.setattr(trainer_mod, "orthogonal_regularization_", spy)
    t = Trainer(tiny(tmp_path, "b", model="biggan", steps=2, eval_every=2))
    s = t.fit()
    assert len(calls) == 2 and all(beta == 5e-5 for _, beta in calls)
    shared = {id(p) for p in t.G.shared.parameters()}
    params = calls[0][0]
    assert params and all(p.dim() >= 2 and id(p) not in shared for p in params)
    assert {id(p) for p in params} == {id(p) for p in t.G.parameters() if p.dim() >= 2 and id(p) not in shared}
    m = s["metrics_ema"]
    assert m["n_classes"] == 10 and len(m["class_agreement_per_class"]) == 10
    # SAGAN: no orthogonal regularization by default
    calls.clear()
    Trainer(tiny(tmp_path, "s", steps=2)).fit()
    assert calls == []


def test_ortho_reg_is_the_gradient_added_before_the_step(tmp_path):
    """One G step with ortho_reg = beta against one without: G's Adam saw gradients that differ by
    exactly 4 beta (W W^T (1 - I)) W on each regularised weight."""
    grads = {}
    for name, beta in (("off", 0.0), ("on", 0.01)):
        t = Trainer(tiny(tmp_path, name, model="biggan", steps=1, ortho_reg=beta, lr_decay=False))
        seen = {}
        orig_step = t.__class__._train_step

        def capture(self, seen=seen):
            step = self.opt_g.step

            def recording_step(*a, **k):
                seen.update({n: p.grad.clone() for n, p in self.G.named_parameters() if p.grad is not None})
                seen["_weights"] = {n: p.detach().clone() for n, p in self.G.named_parameters()}
                return step(*a, **k)

            self.opt_g.step = recording_step
            try:
                orig_step(self)
            finally:
                del self.opt_g.step

        t._train_step = capture.__get__(t)
        t.fit()
        grads[name] = seen
    on, off, w = grads["on"], grads["off"], grads["on"]["_weights"]
    checked = 0
    for n, g in off.items():
        if n == "_weights":
            continue
        diff = on[n] - g
        p = w[n]
        if p.dim() < 2 or n.startswith("shared."):
            torch.testing.assert_close(diff, torch.zeros_like(diff), msg=n)
            continue
        W = p.reshape(p.shape[0], -1).double()
        M = W @ W.T
        M.fill_diagonal_(0)
        torch.testing.assert_close(diff.double(), (4 * 0.01 * M @ W).reshape(p.shape), rtol=1e-4, atol=1e-7,
                                   msg=n)
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("model, kw", [("sagan", dict(ema=0.9)), ("biggan", dict(objective="r1", r1_every=3))])
def test_resume_equals_uninterrupted(tmp_path, model, kw):
    full = tiny(tmp_path, "full", model=model, steps=6, ckpt_every=2, eval_every=3, **kw)
    Trainer(full).fit()
    part = tiny(tmp_path, "part", model=model, steps=6, ckpt_every=2, eval_every=3, **kw)
    Trainer(part).fit(until=3)
    assert load_checkpoint(part.out)["step"] == 3
    torch.manual_seed(12345)
    np.random.seed(1)
    random.seed(2)
    Trainer(TrainConfig(out=part.out, resume=True, progress=False)).fit()
    from pathlib import Path
    a, b = loss_rows(Path(full.out)), loss_rows(Path(part.out))
    assert [r["step"] for r in a] == list(range(1, 7))
    assert a == b  # bit-exact after resuming
    ea = [r["eval"] for r in rows_of(Path(full.out)) if "eval" in r]
    eb = [r["eval"] for r in rows_of(Path(part.out)) if "eval" in r]
    assert ea == eb and len(ea) == 2
    ga, gb = load_generator(full.out), load_generator(part.out)
    for (n, p), q in zip(ga.state_dict().items(), gb.state_dict().values()):
        assert torch.equal(p, q), n


# ---- sample --class / --truncation --------------------------------------------------------------


@pytest.fixture(scope="module")
def sagan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sagan") / "run"
    Trainer(TrainConfig(**dict(TINY, data="digits", model="sagan", steps=1, out=str(out)))).fit()
    return out


@pytest.fixture(scope="module")
def dcgan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dcgan") / "run"
    Trainer(TrainConfig(data="digits", steps=1, ngf=4, ndf=4, z_dim=8, batch_size=8, eval_samples=20,
                        progress=False, out=str(out))).fit()
    return out


@pytest.mark.parametrize("which, args, message", [
    ("dcgan", ["--class", "1"], "--class fixes the class of a class-conditional run (--model sagan or biggan); "
                                "this run's model 'dcgan' is unconditional"),
    ("sagan", ["--class", "10"], r"--class must be in [0, 10) for this run (10 classes); got 10"),
    ("sagan", ["--class", "-1"], r"--class must be in [0, 10)"),
    ("sagan", ["--truncation", "0"], "--truncation must be a number > 0"),
    ("sagan", ["--truncation", "-0.5"], "--truncation must be a number > 0"),
    ("dcgan", ["--truncation", "nan"], "--truncation must be a number > 0"),
])
def test_sample_errors(which, args, message, sagan_run, dcgan_run, tmp_path, capsys):
    run = sagan_run if which == "sagan" else dcgan_run
    out = tmp_path / "x.png"
    assert cli.main(["sample", "--ckpt", str(run), "--n", "4", "--out", str(out), *args]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_sample_class_and_truncation(sagan_run):
    G = load_generator(sagan_run)
    seen = []
    G.register_forward_pre_hook(lambda m, a: seen.append([t.clone() for t in a]))
    x, y = sample_with_labels(G, 300, seed=3, batch=100)
    z = torch.cat([s[0] for s in seen])
    assert x.shape == (300, 1, 32, 32) and torch.equal(torch.cat([s[1] for s in seen]), y)
    counts = torch.bincount(y, minlength=10)
    assert (counts > 10).all()  # uniform over the classes
    assert z.abs().max() > 2  # untruncated N(0, 1)
    seen.clear()
    x, y = sample_with_labels(G, 300, seed=3, cls=4, truncation=0.5)
    z = seen[0][0]
    assert y.tolist() == [4] * 300 and torch.equal(seen[0][1], y)
    assert z.abs().max() <= 0.5
    # redrawn, not clipped: no mass piled at +-psi, and the truncated normal's spread (std ~0.28 < U's 0.29)
    assert (z.abs() == 0.5).sum() == 0 and 0.25 < z.std() < 0.3
    # the same seed, the same untruncated entries
    seen.clear()
    sample_with_labels(G, 300, seed=3, cls=4)
    z0 = seen[0][0]
    keep = z0.abs() <= 0.5
    assert torch.equal(z[keep], z0[keep])


def test_class_rows_layout():
    x = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 1, 2, 2)
    y = torch.tensor([2, 0, 2, 2, 0])
    tiles, cols = class_rows(x, y, 3)
    assert cols == 3 and tiles.shape == (9, 1, 2, 2)
    assert tiles[:, 0, 0, 0].tolist() == [1, 4, -1, -1, -1, -1, 0, 2, 3]


def test_class_agreement_known_answer():
    m = class_agreement(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 0, 0]), 4)
    assert m["class_agreement"] == pytest.approx(0.5)
    assert m["class_agreement_per_class"] == [0.5, 1.0, 0.0, None]
    with pytest.raises(ValueError, match="same length"):
        class_agreement(np.zeros(3), np.zeros(4), 2)
