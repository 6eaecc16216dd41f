"""Pure-PyTorch twins of every ganfast op: the test oracle and the `reference` backend."""
from . import losses  # noqa: F401
