"""The lean double backward: a gradient penalty's graph without the exact zeros eager sends back.

    with ganfast.ops.lean_double_backward():
        out = D(x)                                  # the forward is recorded lean ...
        (g,) = torch.autograd.grad(out, x, ones, create_graph=True)   # ... and so is its backward
    penalty_from_grad(g).backward()

The derivative of a piecewise-linear activation's backward (relu, leaky_relu, linear) with
respect to the activation's input is exactly 0. Eager PyTorch materialises it: leaky_relu_backward's
own backward returns zeros_like(input), and autograd then runs a whole backward pass over those
zeros through the forward graph -- a bias_act_backward, a bias-gradient sum and a convolution
backward per layer, each adding zeros into the parameters' gradients. A ganfast.ops.bias_act
recorded while lean is on leaves that edge out of the graph of its backward: nothing flows there,
every gradient that does flow is the same number, and a tensor reached *only* through that edge
keeps grad None where eager gives zeros (the input x above, or a bias whose only use is in the
penalty's pass). ganfast.penalty.gradient_penalty(lean=True) and the training engine use it;
elsewhere ganfast keeps eager's zeros.

The switch is thread-local and is read when a bias_act is recorded; its backward carries the
flag with it, so the autograd engine's worker threads (CUDA) follow the forward's choice.
Smooth activations (their second derivative is not 0) are unaffected.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from .. import _C as _library

__all__ = ["is_lean_double_backward", "lean_double_backward"]


def is_lean_double_backward() -> bool:
    """Whether bias_act ops recorded now on this thread are lean."""
    return _library._lean_double_backward()


def set_lean_double_backward(enabled: bool) -> bool:
    """Set this thread's flag; returns the previous value (prefer the context manager)."""
    return _library._set_lean_double_backward(bool(enabled))


@contextlib.contextmanager
def lean_double_backward(enabled: bool = True) -> Iterator[None]:
    """Record bias_act ops lean (or not, enabled=False) inside the block; restores the previous
    setting on exit, exceptions included."""
    previous = set_lean_double_backward(enabled)
    try:
        yield
    finally:
        set_lean_double_backward(previous)
