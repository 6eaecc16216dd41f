"""CycleGAN's pieces that need no kernel: the image pool and the embedded digits-bold domain."""
import pytest
import torch

from ganfast.train.data import digits, digits_bold, unpaired_halves
from ganfast.train.pool import ImagePool


def test_the_pool_fills_then_swaps_half_the_time_and_resumes_exactly():
    pool = ImagePool(size=4, seed=1)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    torch.testing.assert_close(pool.query(first), first)  # filling: the new images come back
    state = pool.state_dict()
    batches = [torch.full((6, 1, 1, 1), 10.0 + i) + torch.arange(6.0).view(6, 1, 1, 1) / 10 for i in range(50)]
    outs = [pool.query(b) for b in batches]
    old = sum(int((o < 10).sum()) for o in outs[:1])
    assert old >= 1  # some stored images were handed out
    from_pool = sum(int((o != b).view(-1).sum()) for o, b in zip(outs, batches))
    assert 0.35 < from_pool / (50 * 6) < 0.65  # about half of the queries answered from the pool
    again = ImagePool(size=4, seed=99)
    again.load_state_dict(state)
    for b, o in zip(batches, outs):
        torch.testing.assert_close(again.query(b), o)
    assert len(pool.images) == 4
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    assert not ImagePool(0).query(x).requires_grad
    with pytest.raises(ValueError, match="size must be an integer >= 0"):
        ImagePool(-1)
    with pytest.raises(ValueError, match="a pool of size 4 cannot load into one of size 5"):
        ImagePool(5).load_state_dict(state)


def test_digits_bold_is_dilated_inverted_digits_and_the_halves_are_disjoint():
    a, b = digits(32), digits_bold(32)
    assert b.points.shape == a.points.shape and torch.equal(a.labels, b.labels)
    torch.testing.assert_close(b.points, -torch.nn.functional.max_pool2d(a.points, 3, 1, 1))
    assert (-b.points >= a.points).all()  # thicker strokes, then inverted
    ia, ib = unpaired_halves(len(a.points), seed=0)
    assert len(set(ia.tolist()) & set(ib.tolist())) == 0 and len(ia) + len(ib) == len(a.points)
    ja, _ = unpaired_halves(len(a.points), seed=0)
    assert torch.equal(ia, ja)
