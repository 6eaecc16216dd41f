"""CycleGAN: the models (ganfast.nn.ResnetGenerator / PatchDiscriminator) against the reference
code's layers written in torch.nn, the two-domain data, the engine (--model cyclegan), its
checkpoints and resume, and `ganfast translate`."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ganfast
import ganfast.nn as gnn
# the reference code's layers in torch.nn, shared with the benchmark's CycleGAN step
from ganfast.bench.cases import copy_conv_weights, torch_patch_discriminator, torch_resnet_generator


# tiny models: one intra-op thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the models against torch.nn ------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_models_match_the_reference_layers_in_float64(backend):
    torch.manual_seed(0)
    G = gnn.ResnetGenerator(1, 3, ngf=4, n_blocks=2).double()
    D = gnn.PatchDiscriminator(3, ndf=4, n_layers=3).double()
    with torch.no_grad():  # a non-zero bias, so that the BiasAct copy is checked
        next(m for m in D.modules() if isinstance(m, gnn.BiasAct)).bias.uniform_(-0.5, 0.5)
    tG, tD = torch_resnet_generator(1, 3, 4, 2).double(), torch_patch_discriminator(3, 4, 3).double()
    copy_conv_weights(G, tG)
    copy_conv_weights(D, tD)
    x = torch.randn(3, 1, 28, 36, dtype=torch.float64, requires_grad=True)
    with ganfast.use_backend(backend):
        y = D(G(x))
    y_ref = tD(tG(x))
    assert y.shape == (3, 1, 1, 2)
    torch.testing.assert_close(y, y_ref)
    grad = torch.randn_like(y)
    params = [x] + list(G.parameters())
    with ganfast.use_backend(backend):
        ours = torch.autograd.grad(D(G(x)), params, grad)
    theirs = torch.autograd.grad(y_ref, [x] + list(tG.parameters()), grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_model_layout_and_bad_input():
    G = gnn.ResnetGenerator(3, 3, ngf=8, n_blocks=6)
    assert sum(isinstance(m, gnn.cyclegan.ResnetBlock) for m in G.modules()) == 6
    assert G(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    D = gnn.PatchDiscriminator(3, ndf=8)
    assert D.min_size() == 24 and D(torch.randn(2, 3, 24, 24)).shape == (2, 1, 1, 1)
    assert D(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\); got \(2, 1, 32, 32\)"):
        G(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="H and W must be positive multiples of 4"):
        G(torch.randn(2, 3, 30, 32))
    with pytest.raises(ValueError, match=r"images of at least 24x24 for n_layers=3; got \(16, 16\)"):
        D(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="n_blocks must be an int >= 0"):
        gnn.ResnetGenerator(n_blocks=-1)
    with pytest.raises(ValueError, match="ngf"):
        gnn.ResnetGenerator(ngf=0)


# ---- the data --------------------------------------------------------------------------------------

def test_cycle_data_embedded_pair_is_unpaired_with_held_out_labelled_images():
    from ganfast.train.data import digits, load_cycle_data

    data = load_cycle_data("cycle:digits,digits-bold")
    n = len(digits())
    assert len(data.a) + len(data.a_test) + len(data.b) + len(data.b_test) == n
    assert data.a_test.shape[0] == data.b_test.shape[0] == int(n // 2 * 0.1)
    # B is the bold version of digits no image of A comes from: undo the inversion and compare
    a_all = torch.cat([data.a.points, data.a_test]).flatten(1)
    b_src = -torch.cat([data.b.points, data.b_test])
    dilated_a = F.max_pool2d(torch.cat([data.a.points, data.a_test]), 3, stride=1, padding=1).flatten(1)
    assert torch.cdist(dilated_a, b_src.flatten(1)).min() > 0
    assert a_all.min() >= -1 and b_src.max() <= 1
    assert data.a_test_labels.shape[0] == data.a_test.shape[0] and data.b.labels is not None


@pytest.mark.parametrize("spec, match", [
    ("cycle:digits", "expected cycle:A,B with two domains"),
    ("cycle:digits,ring8", "domain 'ring8' is not an image data set"),
    ("cycle:digits,digits,digits", "two domains separated by one comma"),
])
def test_cycle_spec_errors(spec, match):
    from ganfast.train.data import load_cycle_data

    with pytest.raises(ValueError, match=match):
        load_cycle_data(spec)


# ---- the engine ------------------------------------------------------------------------------------

TINY_CYCLE = dict(data="cycle:digits,digits-bold", model="cyclegan", steps=4, batch_size=2, ngf=2, ndf=2, n_blocks=1,
                  pool_size=3, identity_weight=0.5, eval_every=2, progress=False, log_every=1)


def test_cyclegan_trains_evaluates_translates_and_resumes_exactly(tmp_path):
    from ganfast.train import TrainConfig, Trainer, load_checkpoint
    from ganfast.train.cyclegan import CycleGANTrainer

    whole = Trainer(TrainConfig(out=str(tmp_path / "whole"), **TINY_CYCLE))
    assert isinstance(whole, CycleGANTrainer)
    summary = whole.fit()
    m = summary["metrics"]
    assert {"cycle_l1_a", "cycle_l1_b", "content_ab", "content_ba"} <= set(m)
    assert 0 <= m["content_ab"] <= 1 and m["cycle_l1_a"] > 0
    assert m["fd_ab"] > 0 and m["fd_ba"] > 0 and m["fd_features"] == "digits-cnn"  # translations vs the target domain
    cfg = json.loads(json.dumps(load_checkpoint(tmp_path / "whole")["config"]))
    assert cfg["objective"] == "least_squares" and cfg["lr_d"] == 2e-4 and cfg["betas"] == [0.5, 0.999]
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss_d" in r] == [1, 2, 3, 4]
    assert all(r["identity"] > 0 and r["cycle"] > 0 for r in rows)
    from PIL import Image
    assert Image.open(tmp_path / "whole" / "translations.png").size == (8 * 34 + 2, 6 * 34 + 2)
    assert (tmp_path / "whole" / "samples" / "step_000002.png").is_file()

    # interrupted after step 2 (checkpointed there), then resumed without --model: the same run
    part = tmp_path / "part"
    Trainer(TrainConfig(out=str(part), **TINY_CYCLE)).fit(until=2)
    Trainer(TrainConfig(out=str(part), resume=True, progress=False)).fit()
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(part)
    for key in ("G_AB", "G_BA", "D_A", "D_B"):
        for name, t in a[key].items():
            torch.testing.assert_close(t, b[key][name], rtol=0, atol=0, msg=f"{key}.{name}")
    assert len(a["pool_a"]["images"]) == 3


def test_cyclegan_translate_npy_folder_and_image(tmp_path, capsys):
    from PIL import Image

    from ganfast import cli

    run = tmp_path / "run"
    args = ["train", "--model", "cyclegan", "--data", "cycle:digits,digits-bold", "--steps", "1", "--batch-size",
            "2", "--ngf", "2", "--ndf", "2", "--n-blocks", "0", "--no-progress", "--out", str(run)]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "content preserved A->B" in text and "translations.png" in text and "ganfast translate" in text

    x = np.random.default_rng(0).integers(0, 256, size=(3, 20, 20), dtype=np.uint8)
    np.save(tmp_path / "in.npy", x)
    assert cli.main(["translate", "--ckpt", str(run), "--input", str(tmp_path / "in.npy"),
                     "--out", str(tmp_path / "out.npy")]) == 0
    y = np.load(tmp_path / "out.npy")
    assert y.shape == (3, 1, 32, 32) and y.dtype == np.float32 and np.abs(y).max() <= 1
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(x[0]).save(folder / "a.png")
    Image.fromarray(np.stack([x[1]] * 3, -1)).save(folder / "sub" / "b.jpg")
    assert cli.main(["translate", "--ckpt", str(run), "--input", str(folder), "--out", str(tmp_path / "o"),
                     "--direction", "BtoA"]) == 0
    assert sorted(p.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").rglob("*.png")) == \
        ["a.png", "sub/b.png"]
    assert Image.open(tmp_path / "o" / "a.png").size == (32, 32)
    assert cli.main(["translate", "--ckpt", str(run), "--input", str(folder / "a.png"),
                     "--out", str(tmp_path / "one.png")]) == 0
    # translating from a folder with the generator matches translate() on the array itself
    from ganfast.train import load_translator
    from ganfast.train.translate import translate
    G = load_translator(run, "AtoB")
    z = translate(G, torch.from_numpy(np.load(tmp_path / "out.npy")))
    assert z.shape == (3, 1, 32, 32)
    capsys.readouterr()

    # the errors, each naming what is wrong
    for argv, match in [
        (["--input", str(tmp_path / "in.npy"), "--out", str(tmp_path / "o.png")], "must end in .npy"),
        (["--input", str(folder / "a.png"), "--out", str(tmp_path / "o.npy")], "must end in .png, .jpg or .jpeg"),
        (["--input", str(tmp_path / "nothing")], "--input not found"),
        (["--input", str(tmp_path / "run" / "config.toml")], "must be a .npy file, a PNG/JPEG image or a folder"),
    ]:
        full = ["translate", "--ckpt", str(run)] + argv + ([] if "--out" in argv else ["--out", str(tmp_path / "z")])
        assert cli.main(full) == 1
        assert match in capsys.readouterr().err
    assert cli.main(["sample", "--ckpt", str(run), "--n", "4", "--out", str(tmp_path / "s.png")]) == 1
    assert "is a CycleGAN run" in capsys.readouterr().err
    dc = tmp_path / "dc"
    assert cli.main(["train", "--steps", "1", "--width", "8", "--depth", "1", "--batch-size", "8",
                     "--eval-samples", "20", "--no-progress", "--out", str(dc)]) == 0
    capsys.readouterr()
    assert cli.main(["translate", "--ckpt", str(dc), "--input", str(tmp_path / "in.npy"),
                     "--out", str(tmp_path / "d.npy")]) == 1
    assert "is a mlp run, not a CycleGAN one" in capsys.readouterr().err


@pytest.mark.parametrize("kw, match", [
    (dict(data="digits"), "data must be cycle:A,B"),
    (dict(data="cycle:digits,digits-bold", model="dcgan"), "is a pair of domains: train it with model 'cyclegan'"),
    (dict(objective="wgan-gp"), "no gradient penalty"),
    (dict(d_steps=2), "once per generator step"),
    (dict(cycle_weight=-1.0), "cycle_weight must be a finite number >= 0"),
    (dict(pool_size=-1), "pool_size must be an integer >= 0"),
    (dict(n_blocks=-1), "n_blocks must be an integer >= 0"),
])
def test_cyclegan_configuration_errors(kw, match):
    from ganfast.train import TrainConfig

    values = dict(data="cycle:digits,digits-bold", model="cyclegan")
    values.update(kw)
    with pytest.raises(ValueError, match=match):
        TrainConfig(**values).resolve()


def test_cyclegan_defaults_and_setup_errors(tmp_path):
    from ganfast.train import TrainConfig, Trainer
    from ganfast.train.config import CYCLEGAN_BATCH, CYCLEGAN_WIDTH, DEFAULT_CYCLEGAN_STEPS

    c = TrainConfig(data="cycle:digits,digits-bold", model="cyclegan").resolve()
    assert (c.objective, c.steps, c.batch_size, c.ngf, c.ndf) == (
        "least_squares", DEFAULT_CYCLEGAN_STEPS, CYCLEGAN_BATCH, CYCLEGAN_WIDTH, CYCLEGAN_WIDTH)
    assert TrainConfig(data="digits").resolve().objective == "nonsaturating"
    # the identity term: the reference's 0.5, but off on the embedded pair (an intensity inversion)
    assert c.identity_weight == 0.0
    assert TrainConfig(data="cycle:folder:x,folder:y", model="cyclegan").resolve().identity_weight == 0.5
    assert TrainConfig(data="cycle:digits,digits-bold", model="cyclegan", identity_weight=0.25).resolve() \
        .identity_weight == 0.25
    rgb = tmp_path / "rgb.npy"
    np.save(rgb, np.random.default_rng(0).random((30, 32, 32, 3), dtype=np.float32))
    cfg = TrainConfig(data=f"cycle:digits,npy:{rgb}", model="cyclegan", steps=1, out=str(tmp_path / "x"),
                      progress=False)  # identity 0.5 by default on a user's domains
    with pytest.raises(ValueError, match="both domains need the same channels; got A 1, B 3"):
        Trainer(cfg).fit()
    with pytest.raises(ValueError, match="is a pair of domains for CycleGAN"):
        ganfast.train.load_dataset("cycle:digits,digits-bold")
