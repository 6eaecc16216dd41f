"""Synchronised BatchNorm in ganfast's modules (torch.nn.SyncBatchNorm's semantics, issue 15).

One piece of machinery: convert_sync_batchnorm marks each BatchNorm that ganfast runs itself with
the process group to synchronise over (an attribute on the BatchNorm module: no parameter, buffer or
state_dict key changes), and every fused call site asks batch_norm_process_group(bn) for it and hands
it to ganfast.ops.batch_norm_act(process_group=...), which owns the synchronised autograd path (and
decides whether a collective runs at all: training, a group of more than one process).

Which BatchNorms ganfast runs: modules whose type sets `_ganfast_batchnorm = True` (ConditionalBatchNorm2d,
fuse's BatchNorm2dParams), and the children named in a module type's `_ganfast_batchnorm_children`
(the blocks' `bn`, the SAGAN / BigGAN generators' `output_bn`: plain nn.BatchNorm*d modules whose
forward ganfast never calls). Any other torch BatchNorm*d is converted to torch.nn.SyncBatchNorm as
torch.nn.SyncBatchNorm.convert_sync_batchnorm does.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.batch_norm_act import check_process_group

_ATTR = "_ganfast_sync_bn"
# convert_sync_batchnorm(process_group=None): the default group, looked up at forward time (it may not
# exist yet when the model is converted). A string, so that deepcopy / pickle of the model keep it.
_WORLD = "WORLD"


def _check_group(process_group, op: str) -> None:
    check_process_group(process_group, op, "the default group, torch.distributed.group.WORLD")


def batch_norm_process_group(bn):
    """The process group that BatchNorm-like module `bn` (or None) synchronises its statistics over:
    None where convert_sync_batchnorm did not mark it, or marked it for the default group while
    torch.distributed is not initialised. The group goes to ganfast.ops.batch_norm_act(process_group=)."""
    group = getattr(bn, _ATTR, None) if bn is not None else None
    if isinstance(group, str):  # _WORLD
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None
        return torch.distributed.group.WORLD
    return group


def _fused_batchnorms(module: nn.Module) -> dict:
    """id -> module of every BatchNorm-like module inside `module` (itself included) that ganfast runs."""
    found = {}
    for m in module.modules():
        if getattr(type(m), "_ganfast_batchnorm", False):
            found[id(m)] = m
        for name in getattr(type(m), "_ganfast_batchnorm_children", ()):
            child = getattr(m, name, None)
            if child is not None:
                found[id(child)] = child
    return found


def _convert_plain(module: nn.Module, fused: dict, process_group) -> nn.Module:
    """torch.nn.SyncBatchNorm.convert_sync_batchnorm over the tree, skipping the BatchNorms ganfast runs."""
    if isinstance(module, nn.SyncBatchNorm):
        module.process_group = process_group
        return module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and id(module) not in fused:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        new = _convert_plain(child, fused, process_group)
        if new is not child:
            module._modules[name] = new
    return module


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Synchronise every BatchNorm in `module` over `process_group` (None: the default group,
    torch.distributed.group.WORLD, looked up at each forward), in place; returns `module`.

    ganfast's fused BatchNorms (the blocks, fuse's fused modules, ConditionalBatchNorm2d, the SAGAN /
    BigGAN generators) are marked: in training, with more than one process, they compute the batch
    statistics over the group's global batch in ganfast.ops.batch_norm_act (values and gradients of
    torch.nn.SyncBatchNorm; running statistics from the global batch). Every other torch BatchNorm*d
    is replaced by a torch.nn.SyncBatchNorm as torch.nn.SyncBatchNorm.convert_sync_batchnorm does (a
    `module` that is itself such a BatchNorm is returned converted). State_dict keys do not change;
    converting again is harmless (the last process_group wins). Eval, a group of one process, or
    torch.distributed not initialised: exactly the unsynchronised forward, no collective.
    Note torch.nn.SyncBatchNorm itself runs on GPU tensors only (it raises on CPU ones in training);
    ganfast's synchronised BatchNorm runs on every backend.
    """
    op = "ganfast.nn.convert_sync_batchnorm"
    if not isinstance(module, nn.Module):
        raise TypeError(f"{op}: module must be a torch.nn.Module; got {type(module).__name__}")
    _check_group(process_group, op)
    fused = _fused_batchnorms(module)
    marker = _WORLD if process_group is None else process_group
    for bn in fused.values():
        setattr(bn, _ATTR, marker)
    return _convert_plain(module, fused, process_group)
