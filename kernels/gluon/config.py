"""The options the Gluon kernels run with inside ``mlstm_tfla(backend="gluon")``, per problem: pure and cached (no
tensor reads, no allocation), so a test can pin them and a reader can see them in one place.

Why these (docs/performance.md, v14: each option against the Triton kernel on the same inputs, H100, bf16, chunk 128):
two consumer warpgroups and the state streamed in pieces were the fastest of every output and ``dv`` variant at both
shapes measured (7B, q/k head dim 256: output 0.92x, ``dv`` 0.93x the Triton kernel's time; paper shape, 128:
1.03x and 1.05x). The output kernel's key tile is 64 rows at a q/k head dim of 256 and 32 below it (the better of
the two at each shape). Two consumers need a chunk of at least two 64-row tiles; below that, one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cache
from typing import Any


class LaunchOptions:
    """A Gluon kernel's options as its ``launch_args`` takes them: ``launch_args(..., **options.kwargs())``."""

    def kwargs(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  (every subclass is a dataclass)


CONSUMER_ROWS = 64  # rows of a consumer warpgroup's own tile (queries for the output, keys for dv): one wgmma M


@dataclass(frozen=True)
class FwOutputOptions(LaunchOptions):
    """``kernels.gluon.mlstm_fw_output.launch_args``' options: tiles ``bq`` (queries a consumer), ``bkv`` (key rows
    a ring stage), ``bv`` (output columns a program), the state in ``bkv``-row pieces, consumer warpgroups."""

    bq: int
    bkv: int
    bv: int
    state_pieces: bool
    consumers: int
    warp_specialized: bool = True


@dataclass(frozen=True)
class BwDvOptions(LaunchOptions):
    """``kernels.gluon.mlstm_bw_dv.launch_args``' options: tiles ``bq`` (query rows a ring stage), ``bkv`` (keys a
    consumer), ``bv`` (``dv`` columns a program), the state gradient in ``bq``-row pieces, consumer warpgroups."""

    bq: int
    bkv: int
    bv: int
    state_pieces: bool
    consumers: int


def _padded(n: int) -> int:
    """``n`` rounded up to a power of two (``triton.next_power_of_2``, without importing Triton)."""
    return 1 << max(n - 1, 0).bit_length()


def state_tiles(dhqk: int, rows: int, dhhv: int, pieces: bool | None = None) -> tuple[bool, int]:
    """``(state_pieces, bv)`` for a kernel that streams the state slice in ``rows``-row pieces: pieces wherever the
    padded q/k head dim holds one (unless ``pieces`` says), and then ``BV`` 256 (what fits beside a head dim of 256
    with pieces), else 128; at most the padded value head dim."""
    pieces = _padded(dhqk) >= rows if pieces is None else pieces
    return pieces, min(256 if pieces else 128, _padded(dhhv))


def _consumers(chunk_size: int) -> int:
    return 2 if chunk_size % (2 * CONSUMER_ROWS) == 0 else 1


@cache
def fw_output_options(dhqk: int, dhhv: int, chunk_size: int) -> FwOutputOptions:
    """Options of the Gluon output kernel for q/k head dim ``dhqk``, value head dim ``dhhv`` and ``chunk_size``."""
    bkv = 64 if _padded(dhqk) >= 256 else 32
    pieces, bv = state_tiles(dhqk, bkv, dhhv)
    return FwOutputOptions(CONSUMER_ROWS, bkv, bv, pieces, _consumers(chunk_size))


@cache
def bw_dv_options(dhqk: int, dhhv: int, chunk_size: int) -> BwDvOptions:
    """Options of the Gluon ``dv`` kernel for q/k head dim ``dhqk``, value head dim ``dhhv`` and ``chunk_size``."""
    bq = 64
    pieces, bv = state_tiles(dhqk, bq, dhhv)
    return BwDvOptions(bq, CONSUMER_ROWS, bv, pieces, _consumers(chunk_size))


@dataclass(frozen=True)
class BwDqDkOptions(LaunchOptions):
    """``kernels.gluon.mlstm_bw_dq_dk.launch_bw_dq_dk``' options: warps of the consumer (4: one warpgroup), the
    chained products one in flight (``async_mma``), ``dq`` and ``dk`` in one launch (``one_launch``: each chunk's
    two programs side by side, reading its tiles once from DRAM), and ``dv`` in that launch too (``with_dv``:
    ``mlstm_bw_grads``, whatever ``one_launch`` says); the ring as deep as shared memory allows."""

    num_warps: int
    async_mma: bool
    one_launch: bool = False
    with_dv: bool = False


@cache
def bw_dq_dk_options(dhqk: int, dhhv: int, chunk_size: int) -> BwDqDkOptions | None:
    """Options of the Gluon ``dq`` and ``dk`` kernels, or ``None`` where their head dims rule them out
    (``mlstm_bw_dq_dk.head_dims_reason``): then the Triton kernels run. One warpgroup (8 warps were
    2..12 % slower at 7B on the H200, v22); the products one in flight from chunk 512 on (3 % faster at 1024, 1 %
    slower at 128)."""
    from kernels.gluon.mlstm_bw_dq_dk import head_dims_reason

    if head_dims_reason("bw_dq", dhqk, dhhv) is not None:  # dk's rule is the same
        return None
    return BwDqDkOptions(num_warps=4, async_mma=chunk_size >= 512)


@dataclass(frozen=True)
class StateWalkOptions(LaunchOptions):
    """The options of a state walk (``kernels.gluon.state_walk``: ``mlstm_bw_states.launch_args``'): ``bl`` tokens
    a ring stage, ``bv`` state columns a program, ``stages`` ring depth, ``consumers`` warpgroups a program (each 64
    state rows, sharing the slices of ``v`` or ``dh``)."""

    bl: int
    bv: int
    stages: int
    consumers: int


@dataclass(frozen=True)
class FwStatesOptions(StateWalkOptions):
    """``kernels.gluon.mlstm_fw_states.launch_args``' options: a state walk's, and ``packed_gates`` the gates loaded
    one token a thread (at BL 128 it spills 12..20 bytes a thread instead of 188, for a move of the weights through
    shared memory per slice); ``store_bufs`` the shared buffers a consumer for the chunk states' stores (two: one
    store in flight while the next is written)."""

    packed_gates: bool = False
    store_bufs: int = 2


@dataclass(frozen=True)
class BwStatesOptions(StateWalkOptions):
    """``kernels.gluon.mlstm_bw_states.launch_args``' options: a state walk's, and ``state_slots`` the shared slots a
    consumer for the forward state tiles (two: the next chunk's tile loads while this one's slot stores ``dC``)."""

    state_slots: int = 2


# The state walks' 256-column tiles from this padded q/k head dim on (v33: timed at the 7B head dims; at
# the paper's, 128 / 256, they would halve the grid to one program a head and were not timed).
WIDE_STATE_MIN_DHQK = 256
# The chunks at which the walks take them (v33..v35: H100, 7B, S 8192, the kernels alone). The forward state kernel
# up to 1024: 0.88x / 0.79x of the 128-column tiles at chunk 128 / 256, 0.61x / 0.60x of the Triton kernel at
# 512 / 1024. The state-gradient walk from 256 on: 0.89x / 0.71x / 0.65x of the 128-column tiles at 256 / 512 /
# 1024; at 128 1.02x (most likely the store of dC that its one forward state slot waits for, every two slices).
WIDE_STATES_MAX_CHUNK = 1024
WIDE_BW_STATES_MIN_CHUNK = 256
# The 128-column forward state kernel up to this chunk; over it the Triton one (v25: 1.00x / 1.06x at 1024)
GLUON_STATES_MAX_CHUNK = 256
# The Gluon state-gradient walk at every chunk the backend runs (v29: 0.73..0.91x of Triton's up to 1024; v30: its
# float64 GPU test passes at 512 and 1024).
GLUON_BW_STATES_MAX_CHUNK = 1024


def _wide_states(walk: StateWalkOptions, dhqk: int, dhhv: int) -> bool:
    """Whether a state walk takes 256-column tiles: two consumer warpgroups, a padded q/k head dim of at least
    ``WIDE_STATE_MIN_DHQK`` and a v head dim of at least 256."""
    return walk.consumers == 2 and _padded(dhqk) >= WIDE_STATE_MIN_DHQK and _padded(dhhv) >= 256


def _state_walk(dhqk: int, dhhv: int, chunk_size: int) -> StateWalkOptions:
    """Two consumer warpgroups wherever the padded q/k head dim holds two 64-row tiles, 128-token slices in a ring
    of 2, 64-token slices in a ring of 3 where 128 does not divide the chunk (the backend's chunks are multiples of
    64)."""
    bl = 128 if chunk_size % 128 == 0 else 64
    return StateWalkOptions(
        bl=bl, bv=min(128, _padded(dhhv)), stages=2 if bl == 128 else 3, consumers=2 if _padded(dhqk) >= 128 else 1
    )


@cache
def fw_states_options(dhqk: int, dhhv: int, chunk_size: int) -> FwStatesOptions | None:
    """Options of the Gluon state kernel, or ``None`` where the Triton one runs. From a padded q/k head dim of
    ``WIDE_STATE_MIN_DHQK`` and a v head dim of 256 on, 256-column tiles up to ``WIDE_STATES_MAX_CHUNK`` (v33, v35);
    otherwise ``_state_walk``'s with the gates packed up to ``GLUON_STATES_MAX_CHUNK`` (v25, v29: H100, 7B, S 8192,
    against the Triton kernel's time: chunk 128 sig / exp 0.87x / 0.83x packed, 0.95x / 0.91x not; 256 0.85x either
    way)."""
    walk = _state_walk(dhqk, dhhv, chunk_size)
    if _wide_states(walk, dhqk, dhhv) and chunk_size <= WIDE_STATES_MAX_CHUNK:
        # a program's state tile 128 x 256: each k slice read through L2 half as often as at 128 columns, in 64-token
        # slices 3 deep beside one store buffer a consumer (what fits in shared memory)
        return FwStatesOptions(bl=64, bv=256, stages=3, consumers=2, packed_gates=True, store_bufs=1)
    if chunk_size > GLUON_STATES_MAX_CHUNK:
        return None
    return FwStatesOptions(**asdict(walk), packed_gates=True)


@cache
def bw_states_options(dhqk: int, dhhv: int, chunk_size: int) -> BwStatesOptions | None:
    """Options of the Gluon state-gradient kernel, or ``None`` where the Triton one runs (chunks over
    ``GLUON_BW_STATES_MAX_CHUNK``): ``_state_walk``'s (v29: H100, 7B, S 8192, against the Triton kernel's time:
    chunk 128 sig / exp 0.79x / 0.77x, 256 0.75x / 0.73x, 512 0.87x / 0.83x, 1024 0.91x / 0.88x; 64-token slices in
    a ring of 3 0.88x / 0.86x at 128); where the forward state kernel takes 256-column tiles, the same here from
    ``WIDE_BW_STATES_MIN_CHUNK`` on (v34, v35)."""
    if chunk_size > GLUON_BW_STATES_MAX_CHUNK:
        return None
    walk = _state_walk(dhqk, dhhv, chunk_size)
    if _wide_states(walk, dhqk, dhhv) and chunk_size >= WIDE_BW_STATES_MIN_CHUNK:
        # each q slice read through L2 half as often; one forward state slot a consumer is what fits beside the ring
        return BwStatesOptions(bl=64, bv=256, stages=3, consumers=2, state_slots=1)
    return BwStatesOptions(**asdict(walk))


def overridden(kernel: str, **override: Any) -> Callable[[int, int, int], LaunchOptions | None]:
    """``<kernel>_options`` (e.g. ``bw_dq_dk``) with the fields of ``override`` replaced in what it returns (``None``,
    where the Triton kernel runs, stays ``None``): to time or test another option set through the backend, which
    fetches the options at every call (``kernels.mlstm.tfla.gluon_options``). Always over this module's own
    function, whatever has been set in its place."""
    own = OWN_OPTIONS[kernel]

    def options(dhqk: int, dhhv: int, chunk_size: int) -> LaunchOptions | None:
        base = own(dhqk, dhhv, chunk_size)
        return None if base is None else replace(base, **override)

    return options


# Each kernel's own options function, kept apart from the module's names (which a timing or a test may replace).
OWN_OPTIONS: dict[str, Callable[[int, int, int], Any]] = {
    "fw_output": fw_output_options,
    "fw_states": fw_states_options,
    "bw_states": bw_states_options,
    "bw_dv": bw_dv_options,
    "bw_dq_dk": bw_dq_dk_options,
}
