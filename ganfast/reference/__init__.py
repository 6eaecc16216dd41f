"""Pure-PyTorch twins of every ganfast op: the test oracle and the `reference` backend."""
from . import cycle_loss, losses  # noqa: F401
