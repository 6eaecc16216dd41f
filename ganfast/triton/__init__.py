"""Triton kernels and their launchers, one module per op family (losses.py).

The launchers are plain functions with the C++ ops' names and argument order; ganfast.ops wraps
them in torch.library custom ops. On CPU tensors they run under the Triton interpreter, which
needs TRITON_INTERPRET=1 set before triton is first imported.
"""
