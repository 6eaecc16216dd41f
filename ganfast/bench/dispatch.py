"""Device-operation and memory-traffic counter: how many operations a piece of PyTorch code asks the
device to run, and how many bytes those operations read and write.

    from ganfast.bench.dispatch import count_device_ops, compare_counts, markdown_table
    eager = count_device_ops(eager_step)        # runs eager_step() once under a TorchDispatchMode
    fused = count_device_ops(ganfast_step)
    print(markdown_table(compare_counts(eager, fused)))
    print(fused.format_top(10))                 # which ops, how often, how many bytes

The numbers depend only on the program, the shapes and the dtypes, not on the machine: a CPU run
gives the same counts as a GPU run of the same step (except where noted below), which makes them
the evidence of launch overhead and memory traffic saved that a machine without a GPU can give.

What reaches the counter
------------------------
Every call that reaches the Python dispatch key while the mode is active: the ops of the forward,
the ops the autograd engine runs for .backward() / torch.autograd.grad (the engine carries the
mode into its threads), and the optimizer's ops (torch._foreach_*, torch._fused_adam_, ...).
CompositeImplicitAutograd ops are decomposed before they get there (torch.nn.functional.linear
arrives as aten::t + aten::addmm, the view then the GEMM); every other op arrives as itself.
While an op runs, the mode is switched off (TorchDispatchMode pops itself around
__torch_dispatch__), so whatever an op does inside its own kernel -- the at::empty of a ganfast
C++ kernel, the torch.empty and Triton launches of a ganfast_triton op, the per-tensor loop of a
CPU _foreach_ op -- is not seen and not counted: an op is counted once at the level it was called.

What counts as one device operation
-----------------------------------
Every op that reaches the mode, except these, which do no device work and are listed apart under
DeviceOpCount.excluded with the reason:
  - "view": ops whose schema returns an alias of an input that is not written
    (OpOverload.is_view: view, t, transpose, expand, as_strided, unsqueeze, squeeze, select, slice,
    detach, alias, split, unbind, lift_fresh, ...), and -- checked after the op ran -- any op that
    mutates nothing and whose every returned tensor shares storage with an input (e.g.
    aten::_unsafe_view, whose schema does not say it aliases);
  - "metadata": ops tagged inplace_view (t_, transpose_, squeeze_, as_strided_, resize_, set_),
    and the size/stride queries (sym_size, sym_stride, sym_numel, sym_storage_offset, ...);
  - "allocation": empty, empty_like, empty_strided, empty_permuted, new_empty, new_empty_strided
    (memory is allocated, nothing is written);
  - "profiler": the profiler:: ops that torch.profiler.record_function emits (the optimizers'
    step() does), which mark a range and touch no tensor data.
Fills, zeros, copies, random draws, reductions, GEMMs and convolutions count, one each.
A ganfast custom op (namespace ganfast:: or ganfast_triton::) counts as one op however many
kernels it launches inside; so do _foreach_ ops and other ops that a GPU runs as several launches.
Host syncs: ops tagged data_dependent_output (aten::_local_scalar_dense, i.e. .item() / float(t);
aten::equal) or dynamic_output_shape (nonzero, masked_select, unique, ...), and aten::is_nonzero,
are counted as device ops and flagged in DeviceOpCount.host_syncs: on a GPU each one stops the host
until the device has caught up. A CPU run cannot tell a device tensor from a host one: an .item()
on a CPU-resident counter (e.g. Adam's non-capturable `step`) is flagged here although on a GPU
it would not wait for the device; OpRecord.device says where each op ran.

Bytes
-----
For each counted op:
  - read: every tensor argument the op reads (tensors inside lists, e.g. a _foreach_ op's
    TensorList, included; None skipped), each counted by the distinct elements it touches times
    its element size: a dimension of stride 0 (an expand / broadcast) counts once, a 0-dim tensor
    counts its one element, and overlapping strides are capped at the span of memory they cover.
    The same memory (same data pointer, dtype, sizes and strides) passed twice to one op
    (x * x) is read once.
  - written: every argument the schema marks as written (alias_info.is_write: in-place self,
    out= destinations, a _foreach_ op's mutated list, ganfast's running_mean/var), and every
    returned tensor that is not one of those (new outputs; a returned tensor that shares storage
    with an input is not counted again).
  - the simple rule for a written argument that is also read: it is read as well (in-place
    arithmetic: add_, mul_, _foreach_add_, an optimizer's state), except out= arguments
    (schema is_out) and the arguments of pure overwrites: fill_, zero_, copy_, random fills
    (uniform_, normal_, bernoulli_, random_, exponential_, geometric_, cauchy_, log_normal_),
    _foreach_zero_, _foreach_copy_. Factories that take a tensor only for its sizes (zeros_like,
    ones_like, full_like, rand_like, randn_like, new_zeros, new_ones, new_full) read nothing.
Limits
------
  - An op is not a kernel launch. The counter sees ops, on both sides of a comparison alike: an
    aten::convolution_backward computes grad_input, grad_weight and grad_bias (two to four kernels
    on a GPU; the bias gradient's reduction of grad_output is hidden inside it), a
    native_batch_norm_backward or a _foreach_ / _fused_adam_ op is several launches (a _foreach_ op
    is one launch per chunk of tensors on CUDA, a loop over the tensors on CPU), and a ganfast op
    is one or two. What the counter measures is the work dispatched as separate operations: each
    one a launch at least, and an intermediate result that went through memory.
  - Bytes are what each op's arguments and results span: the DRAM traffic of kernels that read
    each input and write each output exactly once. Caches (an L2 that still holds the previous
    op's output), a GEMM's or convolution's re-reads of its operands, a kernel that makes two
    passes over its input and workspace inside an op (cuDNN, split-K buffers, ganfast's
    intermediate per-sample norms) are not modelled; an op that writes part of a written argument
    (index_put_, scatter_, masked_fill_) counts the whole argument.
  - Counts are machine-independent only where the program is: the same step on CUDA may take other
    paths (cuDNN vs mkldnn convolutions are both one aten::convolution, but an optimizer's default
    is foreach on CUDA and a per-parameter loop on CPU: pass foreach= or fused= explicitly), and a
    backend choosing another memory layout (channels_last) changes which copies autograd makes.
  - Not for torch.compile'd code: Inductor's generated kernels do not go through the dispatcher
    (only its extern calls, such as mm, would reach the mode), so a compiled step cannot be counted
    this way.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "GEMM_AND_CONV_OPS",
    "DeviceOpCount",
    "DeviceOpCounter",
    "OpRecord",
    "compare_counts",
    "compare_many",
    "count_device_ops",
    "format_bytes",
    "markdown_table",
    "tensor_bytes",
    "touched_elements",
]

_ALLOCATIONS = frozenset({
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::empty_permuted",
    "aten::new_empty", "aten::new_empty_strided",
})
_METADATA = frozenset({
    "aten::sym_size", "aten::sym_stride", "aten::sym_numel", "aten::sym_storage_offset",
    "aten::size", "aten::stride", "aten::numel", "aten::dim", "aten::is_contiguous",
    "aten::is_same_size", "aten::storage_offset", "aten::_nnz", "aten::is_complex",
    "aten::is_floating_point", "aten::_has_compatible_shallow_copy_type",
})
# Ops that overwrite their written argument without reading it (in-place versions; name without
# the overload).
_OVERWRITES = frozenset({
    "aten::fill_", "aten::zero_", "aten::copy_", "aten::uniform_", "aten::normal_", "aten::bernoulli_",
    "aten::random_", "aten::exponential_", "aten::geometric_", "aten::cauchy_", "aten::log_normal_",
    "aten::_foreach_zero_", "aten::_foreach_copy_", "aten::_copy_from",
})
# Factories that take a tensor only for its sizes, dtype and device: the tensor is not read.
_FACTORIES_LIKE = frozenset({
    "aten::zeros_like", "aten::ones_like", "aten::full_like", "aten::rand_like", "aten::randn_like",
    "aten::randint_like", "aten::new_zeros", "aten::new_ones", "aten::new_full",
})
# Matrix products and convolutions (forward and backward), which ganfast leaves to PyTorch: filter
# them out to compare the elementwise / normalisation / loss traffic that fusion acts on.
GEMM_AND_CONV_OPS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear", "aten::_addmm_activation",
    "aten::convolution", "aten::convolution_backward", "aten::_convolution", "aten::cudnn_convolution",
    "aten::cudnn_convolution_transpose", "aten::mkldnn_convolution", "aten::convolution_overrideable",
    "aten::convolution_backward_overrideable",
})
_HOST_SYNC_NAMES = frozenset({"aten::is_nonzero"})
_HOST_SYNC_TAGS = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)


def _base_name(func) -> str:
    """'aten::add_' for aten::add_.Tensor."""
    return func._schema.name


def touched_elements(t: torch.Tensor) -> int:
    """Distinct elements a strided tensor view touches: stride-0 dimensions count once, overlapping
    strides are capped at the memory span they cover."""
    if t.numel() == 0:
        return 0
    if t.layout != torch.strided:
        return t.numel()
    prod, span = 1, 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            prod *= size
            span += (size - 1) * abs(stride)
    return min(prod, span)


def tensor_bytes(t: torch.Tensor) -> int:
    return touched_elements(t) * t.element_size()


def _memory_key(t: torch.Tensor):
    try:
        ptr = t.data_ptr()
    except Exception:  # meta / fake tensors have no data; fall back on identity
        ptr = id(t)
    return (t.device, ptr, t.dtype, tuple(t.shape), tuple(t.stride()))


def _storage_key(t: torch.Tensor):
    try:
        return t.untyped_storage()._cdata
    except Exception:
        return None


def _tensors(value) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(value)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


@dataclasses.dataclass(frozen=True)
class OpRecord:
    """One counted device operation."""

    name: str            # e.g. 'aten::mul.Tensor', 'ganfast::bias_act'
    bytes_read: int
    bytes_written: int
    host_sync: bool
    device: str          # device type of its first tensor ('cpu', 'cuda'; '' if none)


@dataclasses.dataclass
class DeviceOpCount:
    """The device operations one call made; see the module docstring for what counts."""

    records: list[OpRecord] = dataclasses.field(default_factory=list)
    excluded: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # (reason, name)
    result: Any = dataclasses.field(default=None, repr=False, compare=False)  # what the function returned

    @property
    def ops(self) -> int:
        return len(self.records)

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for r in self.records)

    @property
    def bytes_written(self) -> int:
        return sum(r.bytes_written for r in self.records)

    @property
    def total_bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def host_syncs(self) -> int:
        return sum(r.host_sync for r in self.records)

    @property
    def by_op(self) -> collections.Counter:
        """op name -> number of calls."""
        return collections.Counter(r.name for r in self.records)

    def breakdown(self) -> list[dict]:
        """Per op name: calls, bytes read, bytes written, total; largest traffic first."""
        acc: dict[str, list[int]] = {}
        for r in self.records:
            a = acc.setdefault(r.name, [0, 0, 0])
            a[0] += 1
            a[1] += r.bytes_read
            a[2] += r.bytes_written
        rows = [{"op": name, "calls": c, "bytes read": br, "bytes written": bw, "total bytes": br + bw}
                for name, (c, br, bw) in acc.items()]
        rows.sort(key=lambda row: (-row["total bytes"], -row["calls"], row["op"]))
        return rows

    def top(self, n: int = 10, by: str = "total bytes") -> list[dict]:
        """The n op names with the most `by` ('total bytes', 'calls', 'bytes read', 'bytes written')."""
        rows = self.breakdown()
        rows.sort(key=lambda row: (-row[by], row["op"]))
        return rows[:n]

    def format_top(self, n: int = 10, by: str = "total bytes") -> str:
        """A Markdown table of top(n, by), followed by the totals."""
        rows = self.top(n, by)
        rest = self.ops - sum(r["calls"] for r in rows)
        text = markdown_table(rows)
        text += (f"\n\n{self.ops} device ops ({rest} in ops not listed), {self.host_syncs} host syncs, "
                 f"read {format_bytes(self.bytes_read)}, written {format_bytes(self.bytes_written)}")
        return text

    def summary(self) -> dict:
        """JSON-ready totals."""
        return {"device ops": self.ops, "host syncs": self.host_syncs, "bytes read": self.bytes_read,
                "bytes written": self.bytes_written, "total bytes": self.total_bytes,
                "by op": dict(self.by_op),
                "excluded": {f"{reason} {name}": n for (reason, name), n in sorted(self.excluded.items())}}

    def filter(self, keep: Callable[[OpRecord], bool]) -> "DeviceOpCount":
        """The ops for which keep(record) is true, e.g.
        count.filter(lambda r: r.name not in GEMM_AND_CONV_OPS): the traffic fusion can change."""
        return DeviceOpCount([r for r in self.records if keep(r)], self.excluded.copy(), self.result)

    def on_device(self, device_type: str) -> "DeviceOpCount":
        """Only the ops that ran on `device_type` (e.g. drop an optimizer's CPU-resident step
        counters from a CUDA run)."""
        return self.filter(lambda r: r.device == device_type)


class DeviceOpCounter(TorchDispatchMode):
    """TorchDispatchMode that records each op reaching it (see the module docstring). Use as a
    context manager; the results are in .count (a DeviceOpCount)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = DeviceOpCount()

    def _exclude(self, reason: str, name: str) -> None:
        self.count.excluded[(reason, name)] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.name()
        base = _base_name(func)
        if base.startswith("profiler::"):
            self._exclude("profiler", name)
            return func(*args, **kwargs)
        if base in _ALLOCATIONS:
            self._exclude("allocation", name)
            return func(*args, **kwargs)
        tags = getattr(func, "tags", ())
        if torch.Tag.inplace_view in tags or base in _METADATA:
            self._exclude("metadata", name)
            return func(*args, **kwargs)
        if func.is_view:
            self._exclude("view", name)
            return func(*args, **kwargs)

        # Which arguments are read, which written, before the op runs (an in-place op changes them).
        read: list[torch.Tensor] = []
        written: list[torch.Tensor] = []
        overwrite = base in _OVERWRITES
        factory = base in _FACTORIES_LIKE
        schema_args = func._schema.arguments
        bound = _bind(schema_args, args, kwargs)
        if bound is None:  # not matched to the schema: every tensor read, nothing mutated
            read = _tensors((args, kwargs))
        else:
            for arg, value in bound:
                ts = _tensors(value)
                if not ts:
                    continue
                alias = arg.alias_info
                if alias is not None and alias.is_write:
                    written += ts
                    if not (arg.is_out or overwrite):
                        read += ts
                elif not factory:
                    read += ts

        out = func(*args, **kwargs)

        outs = _tensors(out)
        if not written and outs and not factory:
            inputs = {_storage_key(t) for t in read}
            inputs.discard(None)
            if all(_storage_key(t) in inputs for t in outs):
                self._exclude("view", name)
                return out
        # Returned tensors that share storage with an argument were counted as that argument
        # (in-place / out= results), or did no work (an op handing back an input).
        arg_storages = {_storage_key(t) for t in read + written}
        arg_storages.discard(None)
        written += [t for t in outs if _storage_key(t) not in arg_storages]

        bytes_read = sum(tensor_bytes(t) for t in _unique(read))
        bytes_written = sum(tensor_bytes(t) for t in _unique(written))
        host_sync = base in _HOST_SYNC_NAMES or any(tag in tags for tag in _HOST_SYNC_TAGS)
        first = next(iter(read + written), None)
        device = first.device.type if first is not None else ""
        self.count.records.append(OpRecord(name, bytes_read, bytes_written, host_sync, device))
        return out


def _unique(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in tensors:
        key = _memory_key(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _bind(schema_args, args: Sequence, kwargs: Mapping) -> Optional[list]:
    """[(schema argument, value)] for the values passed, or None if they do not fit the schema."""
    if len(args) > len(schema_args):
        return None
    pairs = list(zip(schema_args, args))
    names = {a.name: a for a in schema_args}
    for key, value in kwargs.items():
        if key not in names:
            return None
        pairs.append((names[key], value))
    return pairs


def count_device_ops(fn: Callable, *args, **kwargs) -> DeviceOpCount:
    """Run fn(*args, **kwargs) once under a DeviceOpCounter and return its count; the function's
    return value is in .result. Run a warm-up call first where the first call does extra work
    (lazy state initialisation of an optimizer, a layer that converts its weight once)."""
    with DeviceOpCounter() as counter:
        result = fn(*args, **kwargs)
    counter.count.result = result
    return counter.count


# ---- tables -----------------------------------------------------------------------------------

_METRICS = (
    ("device ops", "ops", lambda c: c.ops),
    ("host syncs", "ops", lambda c: c.host_syncs),
    ("bytes read", "bytes", lambda c: c.bytes_read),
    ("bytes written", "bytes", lambda c: c.bytes_written),
    ("total traffic", "bytes", lambda c: c.total_bytes),
)


def compare_many(counts: Mapping[str, DeviceOpCount], baseline: Optional[str] = None) -> list[dict]:
    """Rows {metric, <name>: value for each count, '<name> / <baseline>': ratio for each other
    count} for device ops, host syncs, bytes read, bytes written and total traffic. Ratios below 1
    mean the candidate does less; a ratio over a zero baseline is None (inf if the candidate is not
    zero either). Byte rows carry '_unit': 'bytes' so that markdown_table prints them in MiB."""
    names = list(counts)
    if not names:
        raise ValueError("compare_many: no counts given")
    baseline = names[0] if baseline is None else baseline
    if baseline not in counts:
        raise ValueError(f"compare_many: baseline {baseline!r} is not one of {names}")
    rows = []
    for metric, unit, get in _METRICS:
        row: dict[str, Any] = {"metric": metric}
        for name in names:
            row[name] = get(counts[name])
        base = row[baseline]
        for name in names:
            if name != baseline:
                row[f"{name} / {baseline}"] = (row[name] / base) if base else (None if row[name] == 0 else float("inf"))
        row["_unit"] = unit
        rows.append(row)
    return rows


def compare_counts(baseline: DeviceOpCount, candidate: DeviceOpCount,
                   names: tuple[str, str] = ("eager", "ganfast")) -> list[dict]:
    """compare_many({names[0]: baseline, names[1]: candidate}): rows metric | eager | ganfast |
    ganfast / eager."""
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"compare_counts: names must be two different labels; got {names!r}")
    return compare_many({names[0]: baseline, names[1]: candidate}, baseline=names[0])


def format_bytes(n: float) -> str:
    """1536 -> '1.50 KiB'; whole bytes below 1 KiB."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if n < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}"
    raise AssertionError("unreachable")


def _cell(value, unit: Optional[str]) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return format_bytes(value) if unit == "bytes" else f"{value:,}"
    if isinstance(value, float):
        if value == float("inf"):
            return "inf"
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None) -> str:
    """A GitHub Markdown table of `rows` (dicts); columns default to the first row's keys, keys
    starting with '_' hidden. Integers get thousands separators, or KiB/MiB in a row whose '_unit'
    is 'bytes' and in a column whose name contains 'bytes'; ratios 3 decimals; None '-'."""
    if not rows:
        return ""
    if columns is None:
        columns = [k for k in rows[0] if not str(k).startswith("_")]
    lines = ["| " + " | ".join(str(c) for c in columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    for row in rows:
        cells = []
        for c in columns:
            unit = row.get("_unit")
            if unit is None and "bytes" in str(c):
                unit = "bytes"
            cells.append(_cell(row.get(c), unit))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
