"""Gluon's Hopper kernels run on the CPU: what the Triton interpreter does for ``tl`` kernels, for the subset of
Gluon our kernels use, so that their results (not only their compilation) are checked without a GPU.

``simulate(kernel, grid, args, constexprs)`` runs a ``@gluon.jit`` kernel's Python body once per program of the
grid, with Gluon's names bound to torch operations on CPU tensors:

- register tensors are torch tensors (layouts are accepted and ignored; ``convert_layout`` is the identity);
- shared memory is a torch tensor filled with NaN at allocation, so a read of a buffer no load has written shows;
- ``warpgroup_mma`` multiplies its 16-bit operands exactly and accumulates in float32 (``is_async`` returns a token
  that ``warpgroup_mma_wait`` resolves);
- TMA loads copy a descriptor's block (zeros outside the tensor) into shared memory and complete the barrier's
  transaction bytes; TMA stores write the block back, clipped to the tensor;
- mbarriers keep a phase, a pending arrival count and pending transaction bytes (``expect`` is an arrival that also
  expects bytes, as ``mbarrier.arrive.expect_tx``); ``wait(bar, parity)`` blocks while the barrier's current phase
  has that parity (so a fresh barrier lets ``wait(bar, 1)`` through);
- ``warp_specialize`` runs each partition in its own thread of one simulated CTA.

Two orders of TMA completion (``landing``): ``"lazy"`` lands a load only when a thread waits on its barrier (a
buffer read before its wait holds NaN or a stale tile), ``"eager"`` lands it when it is issued (a producer that
refills a buffer still being read overwrites it under the reader). A CTA whose live threads all wait on barriers
that cannot complete raises ``SimulationError`` naming each wait, instead of hanging; so do out-of-bounds pointer
accesses, barriers used before ``init``, more arrivals than a barrier's count, and operands of the wrong shape or
dtype. What it does not model: timing, warps within a partition, register limits, shared-memory capacity (the
compile tests check those), and the memory order between plain ``gl.store`` and other programs.
"""

from __future__ import annotations

import inspect
import itertools
import math
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from triton.experimental.gluon import language as _gl
from triton.experimental.gluon.language.nvidia import hopper as _hopper
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.language.core import constexpr as _constexpr

from kernels.gluon import compat as _compat

LANDINGS = ("lazy", "eager")


class SimulationError(RuntimeError):
    """What a simulated kernel did that a GPU would hang on, fault on, or compute garbage from."""


# ----------------------------------------------------------------------------------------------------------------
# One simulated CTA: its program id, its threads (partitions) and the condition all its barriers share.


@dataclass
class _Program:
    pid: tuple[int, int, int]
    num_warps: int
    landing: str
    cond: threading.Condition = field(default_factory=threading.Condition)
    alive: int = 1
    waiting: dict[int, tuple[Barrier, int]] = field(default_factory=dict)
    failed: str | None = None
    barriers: list[Barrier] = field(default_factory=list)

    def fail(self, why: str) -> SimulationError:
        """Record the CTA's first failure, wake every thread so that it stops too, and return the error to raise."""
        with self.cond:  # reentrant: callers may hold it
            if self.failed is None:
                self.failed = why
            self.cond.notify_all()
        return SimulationError(self.failed)

    def deadlocked(self) -> bool:
        """Every live thread waits and no wait can finish, after every issued TMA load has landed."""
        if len(self.waiting) < self.alive:
            return False
        for barrier in self.barriers:
            barrier.land()
        return not any(barrier.passes(parity) for barrier, parity in self.waiting.values())


_current = threading.local()


def _program() -> _Program:
    program = getattr(_current, "program", None)
    if program is None:
        raise SimulationError("a Gluon operation ran outside simulate()")
    return program


# ----------------------------------------------------------------------------------------------------------------
# Shared memory, barriers, descriptors, pointers.


@dataclass(frozen=True)
class _BlockType:
    shape: list[int]
    nbytes: int


class SharedMemory:
    """A shared-memory descriptor: a view of one allocation (``index``, ``slice``, ``reshape`` and ``permute`` give
    views of the same bytes, as on the GPU)."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    @property
    def type(self) -> _BlockType:
        return _BlockType(list(self.data.shape), self.data.numel() * self.data.element_size())

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)

    def index(self, i: int) -> SharedMemory:
        return SharedMemory(self.data[int(i)])

    def slice(self, start: int, length: int, dim: int = 0) -> SharedMemory:
        return SharedMemory(self.data.narrow(int(dim), int(start), int(length)))

    def reshape(self, shape: list[int]) -> SharedMemory:
        return SharedMemory(self.data.view(*[int(s) for s in shape]))

    def permute(self, order: tuple[int, ...]) -> SharedMemory:
        return SharedMemory(self.data.permute(*order))

    def load(self, layout: Any = None) -> torch.Tensor:
        return self.data.clone()

    def store(self, value: torch.Tensor) -> None:
        if list(value.shape) != list(self.data.shape):
            raise _program().fail(f"store of a {list(value.shape)} tensor into shared memory of {self.shape}")
        self.data.copy_(value)


class Barrier:
    """One mbarrier of a CTA (see the module docstring for its rules)."""

    def __init__(self, program: _Program, name: str) -> None:
        self.program, self.name = program, name
        self.count: int | None = None
        self.pending = 0
        self.tx = 0
        self.phase = 0
        self.copies: list[Callable[[], int]] = []
        program.barriers.append(self)

    def index(self, i: int) -> Barrier:
        if int(i) != 0:
            raise self.program.fail(f"{self.name} is one barrier; index({i})")
        return self

    def _live(self, what: str) -> None:
        if self.count is None:
            raise self.program.fail(f"{what} on {self.name} before mbarrier.init (or after invalidate)")

    def _complete(self) -> None:
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = self.count or 0
            self.program.cond.notify_all()

    def arrive(self, count: int) -> None:
        self._live("arrive")
        if count > self.pending:
            raise self.program.fail(
                f"{count} arrival(s) on {self.name} with {self.pending} pending in phase {self.phase}: more "
                f"arrivals than its count {self.count}"
            )
        self.pending -= count
        self._complete()

    def expect(self, nbytes: int) -> None:
        self.tx += nbytes
        self.arrive(1)

    def land(self) -> None:
        """Every TMA load issued on this barrier lands: its bytes are in shared memory, its transaction done."""
        copies, self.copies = self.copies, []
        for copy in copies:
            self.tx -= copy()
            if self.tx < 0:
                raise self.program.fail(f"TMA loads on {self.name} brought more bytes than its expect() announced")
            self._complete()

    def passes(self, parity: int) -> bool:
        """``mbarrier.wait(self, parity)`` returns: the phase of that parity has completed."""
        return (self.phase & 1) != parity


class _BarrierArray:
    """``n`` barriers allocated as ``[n, 1]`` int64 shared memory (``type.shape`` as Gluon's descriptor gives it)."""

    def __init__(self, program: _Program, n: int) -> None:
        self.barriers = [Barrier(program, f"barrier {len(program.barriers)}") for _ in range(n)]

    @property
    def type(self) -> _BlockType:
        return _BlockType([len(self.barriers), 1], 8 * len(self.barriers))

    def index(self, i: int) -> Barrier:
        return self.barriers[int(i)]


class _Descriptor:
    """A TMA descriptor inside the kernel: the tensor's strided view and the block each copy moves."""

    def __init__(self, desc: TensorDescriptor) -> None:
        base = desc.base
        if base.device.type != "cpu":
            raise SimulationError(f"the simulator takes CPU tensors; a descriptor is over a {base.device} tensor")
        self.view = base.detach().as_strided(list(desc.shape), list(desc.strides))  # autograd stays outside
        self.block = [int(b) for b in desc.block_shape]
        self.layout = desc.layout
        self.padding = desc.padding
        self.block_type = _BlockType(self.block, math.prod(self.block) * base.element_size())

    @property
    def dtype(self) -> torch.dtype:
        return self.view.dtype

    def _region(self, coord: list[Any]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """The block at ``coord`` as (slices of the tensor, slices of the block) for the part inside the tensor."""
        src, dst = [], []
        for c, b, n in zip((int(c) for c in coord), self.block, self.view.shape):
            lo, hi = max(c, 0), min(c + b, n)
            hi = max(hi, lo)
            src.append(slice(lo, hi))
            dst.append(slice(lo - c, hi - c))
        return tuple(src), tuple(dst)

    def read(self, coord: list[Any]) -> torch.Tensor:
        fill = float("nan") if self.padding == "nan" else 0
        out = torch.full(self.block, fill, dtype=self.dtype)
        src, dst = self._region(coord)
        out[dst] = self.view[src]
        return out

    def write(self, coord: list[Any], value: torch.Tensor) -> None:
        src, dst = self._region(coord)
        self.view[src] = value[dst].to(self.dtype)


class Pointer:
    """A pointer argument: a flat tensor and element offsets (an int or an integer tensor), as ``ptr + offsets``."""

    def __init__(self, data: torch.Tensor, offset: Any = 0) -> None:
        self.data, self.offset = data, offset

    def __add__(self, other: Any) -> Pointer:
        return Pointer(self.data, self.offset + other)

    __radd__ = __add__

    def __sub__(self, other: Any) -> Pointer:
        return Pointer(self.data, self.offset - other)

    def _where(self, mask: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        offs = torch.as_tensor(self.offset, dtype=torch.int64)
        valid = torch.ones_like(offs, dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        offs, valid = torch.broadcast_tensors(offs, valid)
        outside = valid & ((offs < 0) | (offs >= self.data.numel()))
        if outside.any():
            bad = offs[outside][0].item()
            raise _program().fail(f"{what} at element {bad} of a tensor of {self.data.numel()} (not masked)")
        return offs.where(valid, 0), valid


def _to_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# The Gluon names our kernels use, bound to the above.


class _Namespace(types.SimpleNamespace):
    """A module of simulated names; a name it lacks is a ``SimulationError`` saying so, not an AttributeError."""

    def __getattr__(self, name: str) -> Any:
        raise SimulationError(f"the Gluon simulator does not implement {self.__dict__.get('_name', 'gl')}.{name}")


class _Layout:
    """Any layout: its arguments are kept for ``repr`` and otherwise ignored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    @classmethod
    def get_default_for(cls, *args: Any, **kwargs: Any) -> _Layout:
        return cls(*args, **kwargs)


class _MBarrierLayout(_Layout):
    pass


def _allocate_shared_memory(dtype: torch.dtype, shape: list[int], layout: Any, value: Any = None) -> Any:
    shape = [int(s) for s in shape]
    if isinstance(layout, _MBarrierLayout):
        if shape == [1]:
            return _BarrierArray(_program(), 1).index(0)
        if len(shape) == 2 and shape[1] == 1:
            return _BarrierArray(_program(), shape[0])
        raise _program().fail(f"barriers are allocated as [1] or [n, 1]; got {shape}")
    fill = float("nan") if dtype.is_floating_point else -1
    data = torch.full(shape, fill, dtype=dtype)
    if value is not None:
        data.copy_(value)
    return SharedMemory(data)


def _load(pointer: Pointer, mask: Any = None, other: Any = None, **_: Any) -> torch.Tensor:
    offs, valid = pointer._where(mask, "gl.load")
    values = pointer.data[offs]
    if mask is not None:
        values = values.where(valid, torch.as_tensor(0 if other is None else other, dtype=values.dtype))
    return values


def _store(pointer: Pointer, value: Any, mask: Any = None, **_: Any) -> None:
    offs, valid = pointer._where(mask, "gl.store")
    value = torch.as_tensor(value).to(pointer.data.dtype).expand(offs.shape)
    pointer.data[offs[valid]] = value[valid]


def _arange(start: int, end: int, layout: Any = None) -> torch.Tensor:
    return torch.arange(int(start), int(end), dtype=torch.int32)


def _reduce(op: Callable[..., Any]) -> Callable[..., torch.Tensor]:
    def reduce(x: torch.Tensor, axis: int | None = None, **_: Any) -> torch.Tensor:
        return op(x) if axis is None else op(x, dim=int(axis))

    return reduce


def _record(program: _Program, fn: Callable, err: BaseException) -> None:
    """A partition's error fails its CTA (the first one is what ``simulate`` raises)."""
    if isinstance(err, SimulationError):
        program.fail(str(err))
    else:
        program.fail(f"{getattr(fn, '__name__', fn)}: {type(err).__name__}: {err}")


def _warp_specialize(
    functions_and_args: list[tuple[Callable, tuple]], worker_num_warps: Any, worker_num_regs: Any
) -> Any:
    """The default partition in this thread, each worker partition in a thread of its own; returns when all end."""
    program = _program()
    (default_fn, default_args), *workers = functions_and_args

    def run(fn: Callable, args: tuple) -> None:
        _current.program = program
        try:
            fn(*args)
        except BaseException as err:  # noqa: BLE001  (a thread's error fails the CTA, reported by the caller)
            _record(program, fn, err)
        finally:
            with program.cond:
                program.alive -= 1
                program.cond.notify_all()

    threads = [threading.Thread(target=run, args=(fn, args), daemon=True) for fn, args in workers]
    with program.cond:
        program.alive += len(threads)
    for thread in threads:
        thread.start()
    result = None
    try:
        result = default_fn(*default_args)
    except BaseException as err:  # noqa: BLE001
        _record(program, default_fn, err)
    finally:
        with program.cond:
            program.alive -= 1
            program.cond.notify_all()
    for thread in threads:
        thread.join()
    with program.cond:
        program.alive += 1
        if program.failed is not None:
            raise SimulationError(program.failed)
    return result


GL = _Namespace(
    _name="gl",
    constexpr=lambda x: x,
    static_range=range,
    program_id=lambda axis: _program().pid[int(axis)],
    num_programs=lambda axis: _program_grid()[int(axis)],
    num_warps=lambda: _program().num_warps,
    cdiv=lambda a, b: -(-a // b),
    arange=_arange,
    zeros=lambda shape, dtype, layout=None: torch.zeros([int(s) for s in shape], dtype=dtype),
    full=lambda shape, value, dtype, layout=None: torch.full([int(s) for s in shape], value, dtype=dtype),
    exp=lambda x: torch.exp(_to_tensor(x)),
    exp2=lambda x: torch.exp2(_to_tensor(x)),
    log=lambda x: torch.log(_to_tensor(x)),
    log2=lambda x: torch.log2(_to_tensor(x)),
    abs=lambda x: torch.abs(_to_tensor(x)),
    sqrt=lambda x: torch.sqrt(_to_tensor(x)),
    maximum=lambda a, b: torch.maximum(_to_tensor(a), _to_tensor(b)),
    minimum=lambda a, b: torch.minimum(_to_tensor(a), _to_tensor(b)),
    where=lambda c, a, b: torch.where(torch.as_tensor(c), a, b),  # a scalar condition broadcasts, as in Gluon
    sum=_reduce(torch.sum),
    max=_reduce(lambda x, dim=None: torch.amax(x) if dim is None else torch.amax(x, dim=dim)),
    convert_layout=lambda x, layout, **_: x,
    permute=lambda x, dims: _to_tensor(x).permute(*dims),
    allocate_shared_memory=_allocate_shared_memory,
    load=_load,
    store=_store,
    warp_specialize=_warp_specialize,
    thread_barrier=lambda: None,  # a partition is one thread here: its stores are in order already
    BlockedLayout=_Layout,
    SliceLayout=_Layout,
    NVMMADistributedLayout=_Layout,
    DotOperandLayout=_Layout,
    NVMMASharedLayout=_Layout,
    SwizzledSharedLayout=_Layout,
    float16=torch.float16,
    bfloat16=torch.bfloat16,
    float32=torch.float32,
    float64=torch.float64,
    int1=torch.bool,
    int32=torch.int32,
    int64=torch.int64,
)


def _program_grid() -> tuple[int, int, int]:
    return getattr(_current, "grid", (1, 1, 1))


def _barrier_wait(barrier: Barrier, phase: int, pred: Any = True, deps: Any = ()) -> None:
    if not pred:
        return
    program, parity = barrier.program, int(phase) & 1
    with program.cond:
        barrier._live("wait")
        me = threading.get_ident()
        program.waiting[me] = (barrier, parity)
        try:
            while True:
                if barrier.passes(parity):  # before landing: a wait that can return, returns (lazy landing)
                    break
                barrier.land()  # the loads issued since the last look
                if barrier.passes(parity):
                    break
                if program.failed is not None:
                    raise SimulationError(program.failed)
                if program.deadlocked():
                    waits = "; ".join(f"{b.name} for parity {p} (phase {b.phase})" for b, p in program.waiting.values())
                    raise program.fail(f"deadlock in program {program.pid}: every thread waits: {waits}")
                if not barrier.passes(parity):  # the deadlock check lands every load: look again before sleeping
                    program.cond.wait()
        finally:
            del program.waiting[me]


def _barrier_init(barrier: Barrier, count: int) -> None:
    barrier.count = barrier.pending = int(count)


def _barrier_invalidate(barrier: Barrier) -> None:
    barrier.count = None


def _locked(fn: Callable[..., None]) -> Callable[..., None]:
    def call(barrier: Barrier, *args: Any, pred: Any = True, **kwargs: Any) -> None:
        if pred:
            with barrier.program.cond:
                fn(barrier, *args, **kwargs)

    return call


MBARRIER = _Namespace(
    _name="mbarrier",
    MBarrierLayout=_MBarrierLayout,
    init=lambda barrier, count: _barrier_init(barrier, count),
    invalidate=lambda barrier: _barrier_invalidate(barrier),
    expect=_locked(lambda barrier, nbytes: barrier.expect(int(nbytes))),
    arrive=_locked(lambda barrier, count=1: barrier.arrive(int(count))),
    wait=_barrier_wait,
)


def _tma_load(desc: _Descriptor, coord: list[Any], barrier: Barrier, result: SharedMemory, pred: Any = True) -> None:
    if not pred:
        return
    program = barrier.program
    if list(result.data.shape) != desc.block or result.dtype != desc.dtype:
        raise program.fail(
            f"TMA load of a {desc.block} {desc.dtype} block into shared memory of {result.shape} {result.dtype}"
        )
    block = desc.read(coord)

    def land() -> int:
        result.data.copy_(block)
        return desc.block_type.nbytes

    with program.cond:
        barrier.copies.append(land)
        if program.landing == "eager":
            barrier.land()
        program.cond.notify_all()  # a thread waiting on this barrier lands it (lazy landing)


def _tma_store(desc: _Descriptor, coord: list[Any], src: SharedMemory) -> None:
    if list(src.data.shape) != desc.block:
        raise _program().fail(f"TMA store of shared memory of {src.shape} through a {desc.block} descriptor")
    desc.write(coord, src.data)


TMA = _Namespace(
    _name="tma",
    async_copy_global_to_shared=_tma_load,
    async_load=_tma_load,
    async_copy_shared_to_global=_tma_store,
    async_store=_tma_store,
    store_wait=lambda pendings: None,
)
COMPAT = _Namespace(
    _name="compat",
    tma_load=_tma_load,
    tma_store=_tma_store,
    reinterpret_as=lambda buf, desc: buf.reshape(desc.block_type.shape),  # the same bytes, the block's shape
)


@dataclass
class _Pending:
    """An asynchronous wgmma's result (computed at issue: the simulator has no tensor-core timing to model)."""

    value: torch.Tensor


def _operand(x: Any) -> torch.Tensor:
    return x.data if isinstance(x, SharedMemory) else x.value if isinstance(x, _Pending) else x


def _warpgroup_mma(a: Any, b: Any, acc: Any, *, use_acc: Any = True, is_async: bool = False, **_: Any) -> Any:
    a, b, acc = _operand(a), _operand(b), _operand(acc)
    if a.dtype not in (torch.float16, torch.bfloat16) or b.dtype != a.dtype:
        raise _program().fail(f"warpgroup_mma takes two float16 or bfloat16 operands; got {a.dtype}, {b.dtype}")
    if a.shape[1] != b.shape[0] or list(acc.shape) != [a.shape[0], b.shape[1]] or acc.dtype != torch.float32:
        raise _program().fail(
            f"warpgroup_mma of {list(a.shape)} x {list(b.shape)} into a {list(acc.shape)} {acc.dtype} accumulator"
        )
    out = a.float() @ b.float()
    if use_acc:
        out = out + acc
    return _Pending(out) if is_async else out


def _warpgroup_mma_wait(num_outstanding: int = 0, deps: Any = None) -> Any:
    values = [_operand(d) for d in deps]
    return values[0] if len(values) == 1 else tuple(values)


HOPPER_NAMES = {
    "warpgroup_mma": _warpgroup_mma,
    "warpgroup_mma_wait": _warpgroup_mma_wait,
    "fence_async_shared": lambda cluster=False: None,
}


# ----------------------------------------------------------------------------------------------------------------
# Rebinding a kernel's functions and running the grid.

_REPLACE: dict[int, Any] = {
    id(_gl): GL,
    id(_hopper.mbarrier): MBARRIER,
    id(_hopper.tma): TMA,
    id(_compat): COMPAT,
    **{id(getattr(_hopper, name)): fn for name, fn in HOPPER_NAMES.items()},
}


def _is_jit(value: Any) -> bool:
    from triton.runtime.jit import ConstexprFunction, JITFunction

    return isinstance(value, (JITFunction, ConstexprFunction))


def _rebind(fn: Any, memo: dict[int, Callable]) -> Callable:
    """``fn``'s Python function with its globals bound to the simulated names, its jitted callees rebound alike."""
    if id(fn) in memo:
        return memo[id(fn)]
    raw = fn.fn if _is_jit(fn) else fn
    scope = dict(raw.__globals__)
    rebound = types.FunctionType(raw.__code__, scope, raw.__name__, raw.__defaults__, raw.__closure__)
    rebound.__kwdefaults__ = raw.__kwdefaults__
    memo[id(fn)] = rebound
    for name in raw.__code__.co_names:
        if name not in scope:
            continue
        value = scope[name]
        if id(value) in _REPLACE:
            scope[name] = _REPLACE[id(value)]
        elif _is_jit(value):
            scope[name] = _rebind(value, memo)
        elif isinstance(value, _constexpr):
            scope[name] = value.value
    return rebound


def _argument(value: Any) -> Any:
    if isinstance(value, TensorDescriptor):
        return _Descriptor(value)
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu" or not value.is_contiguous():
            where = "a non-contiguous one" if value.device.type == "cpu" else f"one on {value.device}"
            raise SimulationError(f"the simulator takes contiguous CPU tensors; got {where}")
        return Pointer(value.detach().view(-1))
    return value.value if isinstance(value, _constexpr) else value


def simulate(
    kernel: Any,
    grid: tuple[int, ...],
    args: dict[str, Any],
    constexprs: dict[str, Any],
    landing: str = "lazy",
) -> None:
    """Run the ``@gluon.jit`` ``kernel`` on the CPU over ``grid`` (up to 3 dims), as ``kernel[grid](**args,
    **constexprs)`` would on a GPU: ``args`` by name (contiguous CPU tensors, ``TensorDescriptor`` over CPU tensors,
    scalars), ``constexprs`` by name (``num_warps`` among them, default 4). Outputs are written in place.
    ``landing``: when TMA loads land (module docstring). ``SimulationError`` for what would go wrong on a GPU."""
    if landing not in LANDINGS:
        raise ValueError(f"landing must be one of {', '.join(LANDINGS)}; got {landing!r}")
    fn = _rebind(kernel, {})
    params = inspect.signature(fn).parameters
    num_warps = int(constexprs.get("num_warps", 4))
    bound = {name: _argument(value) for name, value in (args | constexprs).items() if name in params}
    if "num_warps" in params:
        bound["num_warps"] = num_warps
    grid3 = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    _current.grid = grid3
    try:
        for pid in itertools.product(*(range(g) for g in grid3)):
            _current.program = _Program(pid, num_warps, landing)  # type: ignore[arg-type]
            fn(**bound)
    finally:
        _current.program = None
