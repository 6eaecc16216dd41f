"""SAGAN / BigGAN models (ganfast.nn.sagan) and their self-attention block (ganfast.nn.attention):
shapes, the projection head, spectral norm everywhere, the hierarchical z, training steps, the
attention against an eager bmm + softmax transcription (values, gradients, double backward), and
argument errors."""
import pytest
import torch
import torch.nn.functional as F

import ganfast.nn as gnn
from ganfast.nn import _standins

GENERATORS = (gnn.SAGANGenerator, gnn.BigGANGenerator)
DISCRIMINATORS = (gnn.SAGANDiscriminator, gnn.BigGANDiscriminator)


@pytest.mark.parametrize("cls", GENERATORS)
@pytest.mark.parametrize("resolution,channels", [(32, 1), (32, 3), (64, 1), (64, 3)])
def test_generator_shapes(cls, resolution, channels):
    torch.manual_seed(0)
    G = cls(7, ch=8, resolution=resolution, channels=channels)
    z = torch.randn(3, G.z_dim)
    out = G(z, torch.tensor([0, 6, 2]))
    assert out.shape == (3, channels, resolution, resolution)
    assert out.abs().max() <= 1 and torch.isfinite(out).all() and out.std() > 0
    assert (G.n_classes, G.resolution, G.channels) == (7, resolution, channels)
    G2 = cls(**G.spec())
    assert G2.spec() == G.spec()
    G2.load_state_dict(G.state_dict())


@pytest.mark.parametrize("cls", DISCRIMINATORS)
@pytest.mark.parametrize("resolution,channels", [(32, 1), (32, 3), (64, 1), (64, 3)])
def test_discriminator_shapes(cls, resolution, channels):
    torch.manual_seed(0)
    D = cls(7, ch=8, resolution=resolution, channels=channels)
    out = D(torch.randn(2, channels, resolution, resolution), torch.tensor([1, 5]))
    assert out.shape == (2,) and torch.isfinite(out).all()
