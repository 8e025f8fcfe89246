"""Tile selection of the TFLA kernels: tile types, the tuned tables, ``choose_tiles``, shared-memory estimates and
tile checks. Pure and cached: no tensor is read or allocated here (the launchers in ``chunk_fw`` / ``chunk_bw``
turn a ``TileConfig`` into grids and constexprs). How the tables were chosen: ``docs/kernels.md``; the
measurements behind each entry: ``docs/performance.md``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import triton


@dataclass(frozen=True)
class KernelTiles:
    """Launch shape of one kernel: token tiles ``BQ`` (queries; the token slice of the state kernels) and
    ``BKV`` (keys), head-dim tiles ``BK`` (q/k) and ``BV`` (v/h), warps and pipeline stages.
    ``state_stages`` (fw_output and bw_dq) pipelines the loop that loads the stored chunk states on its own;
    ``None`` gives it ``num_stages`` like every other loop (except in the ``STATE_READERS``, see there).
    ``unroll_slices`` (the intra-chunk kernels fw_output, bw_dq, bw_dk, bw_dv) unrolls the head-dim slices of the
    token loop's first product, so that the token loop is the innermost loop and Triton pipelines it; with one
    slice over the whole head dim, the loop-invariant operand loads once.
    ``state_slice`` (the intra-chunk kernels) is the width of the head-dim slices of the inter-chunk term (the
    product with the stored chunk state); ``None`` leaves it to ``state_slice`` (the function)."""

    BQ: int = 64
    BKV: int = 64
    BK: int = 64
    BV: int = 64
    num_warps: int = 4
    num_stages: int = 2
    state_stages: int | None = None
    unroll_slices: bool = False
    state_slice: int | None = None

    def fit(self, chunk_size: int, dhqk: int, dhhv: int) -> KernelTiles:
        """Clamp to the problem: token tiles at most the chunk, head-dim tiles at most the padded head dim."""
        return replace(
            self,
            BQ=min(self.BQ, chunk_size),
            BKV=min(self.BKV, chunk_size),
            BK=min(self.BK, triton.next_power_of_2(dhqk)),
            BV=min(self.BV, triton.next_power_of_2(dhhv)),
        )

    def launch(self) -> dict[str, int]:
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}

    @property
    def state_loop_stages(self) -> int:
        """Pipeline stages of the state-loading loop: ``state_stages``, else ``num_stages``."""
        return self.num_stages if self.state_stages is None else self.state_stages


KERNELS = ("fw_states", "fw_output", "bw_states", "bw_dq", "bw_dk", "bw_dv")


@dataclass(frozen=True)
class TileConfig:
    """One ``KernelTiles`` per kernel (names as in ``KERNELS``)."""

    fw_states: KernelTiles
    fw_output: KernelTiles
    bw_states: KernelTiles
    bw_dq: KernelTiles
    bw_dk: KernelTiles
    bw_dv: KernelTiles

    @classmethod
    def uniform(cls, tiles: KernelTiles) -> TileConfig:
        return cls(**{name: tiles for name in KERNELS})

    def fit(self, chunk_size: int, dhqk: int, dhhv: int) -> TileConfig:
        return TileConfig(**{n: getattr(self, n).fit(chunk_size, dhqk, dhhv) for n in KERNELS})


# The rolled table, tuned in bf16 at chunk 128 (docs/kernels.md#the-tile-table): wide split tiles, 1-stage state loops.
GPU_TILES = TileConfig(
    fw_states=KernelTiles(BQ=128, BKV=128, BK=64, BV=128, num_warps=4, num_stages=2),
    fw_output=KernelTiles(BK=128, BV=256, num_warps=4, num_stages=2),
    bw_states=KernelTiles(BK=64, BV=128, num_warps=4, num_stages=3),
    bw_dq=KernelTiles(BK=256, BV=128, num_warps=4, num_stages=2),
    bw_dk=KernelTiles(BK=128, BV=64, num_warps=4, num_stages=3),
    bw_dv=KernelTiles(BK=64, BV=256, num_warps=4, num_stages=2),
)
# 16-bit inputs: bw_dk / bw_dv stream 32-query tiles through a pipelined loop, where they fit (unrolls_head_slices).
UNROLLED_TILES = {
    "bw_dk": KernelTiles(BQ=32, BKV=64, BK=256, BV=512, num_warps=4, num_stages=2, unroll_slices=True),
    "bw_dv": KernelTiles(BQ=32, BKV=64, BK=256, BV=256, num_warps=4, num_stages=2, unroll_slices=True),
}
# From LARGE_CHUNK tokens on, fw_output pipelines its key loop over 32-key tiles too (same conditions).
LARGE_CHUNK = 256
LARGE_CHUNK_TILES = {
    "fw_output": KernelTiles(
        BQ=64, BKV=32, BK=256, BV=256, num_warps=4, num_stages=2, state_stages=2, state_slice=64, unroll_slices=True
    )
}
# From a q/k head dim of WIDE_QK on, bw_dq pipelines its state loop in 64-wide slices (slower at DHQK 128).
WIDE_QK = 256
WIDE_QK_TILES = {"bw_dq": KernelTiles(BK=256, BV=128, num_warps=4, num_stages=2, state_stages=2, state_slice=64)}
# Intra-chunk kernels: (tile the grid splits, tile the token loop's first product slices, token tile it streams).
INTRA_CHUNK = {
    "fw_output": ("BV", "BK", "BKV"),
    "bw_dq": ("BK", "BV", "BKV"),
    "bw_dk": ("BK", "BV", "BQ"),
    "bw_dv": ("BV", "BK", "BQ"),
}
# Head dims up to 128: whole head dims, one token-tile layout; the widths differ in warps and stages.
_SMALL_HEAD_LAYOUT = {
    name: KernelTiles(BK=128, BV=128, BQ=bq, BKV=bkv, unroll_slices=name in INTRA_CHUNK)
    for name, (bq, bkv) in {
        "fw_states": (128, 128),
        "fw_output": (64, 32),
        "bw_states": (128, 128),
        "bw_dq": (64, 32),
        "bw_dk": (32, 64),
        "bw_dv": (32, 64),
    }.items()
}


def _small_head_table(**launch: tuple[int, int]) -> TileConfig:
    """``_SMALL_HEAD_LAYOUT`` with ``(num_warps, num_stages)`` per kernel."""
    return TileConfig(
        **{name: replace(_SMALL_HEAD_LAYOUT[name], num_warps=w, num_stages=st) for name, (w, st) in launch.items()}
    )


SMALL_HEAD_TILES = {
    32: _small_head_table(
        fw_states=(2, 2), fw_output=(2, 3), bw_states=(2, 2), bw_dq=(2, 2), bw_dk=(2, 3), bw_dv=(2, 2)
    ),
    64: _small_head_table(
        fw_states=(8, 3), fw_output=(4, 3), bw_states=(8, 2), bw_dq=(4, 3), bw_dk=(4, 3), bw_dv=(2, 3)
    ),
    128: _small_head_table(
        fw_states=(8, 2), fw_output=(4, 3), bw_states=(8, 2), bw_dq=(4, 2), bw_dk=(4, 3), bw_dv=(2, 3)
    ),
}
# Kernels whose state-loading loop runs 1 stage unless state_stages says otherwise (a Triton 3.6 miscompile;
# docs/kernels.md#the-pipelining-miscompile).
STATE_READERS = ("fw_output", "bw_dq")
# The interpreter (TRITON_INTERPRET=1): small tiles, fast on the CPU.
INTERPRETER_TILES = TileConfig.uniform(KernelTiles(BQ=16, BKV=16, BK=32, BV=32))
# fw_states warps where its grid has at most one program per SM (8 beat 4 there; 4 win at two per SM).
SMALL_GRID_STATE_WARPS = 8
# Largest state tile (elements) bw_states holds a chunk ahead in registers (reads_state_ahead).
STATE_AHEAD_TILE = 64 * 128
# Inter-chunk term slice width where one unrolled slice covers the head dim (state_slice).
STATE_SLICE = 64
# Shared memory (bytes) an unrolled intra-chunk kernel may take: 227 KiB less unrolled_smem's largest error.
UNROLLED_SMEM = 220 * 1024


def _halve_for_fp32(t: KernelTiles) -> KernelTiles:
    """fp32 operands take twice the shared memory per stage: cap BK at 64, BV at 128 and use 2 stages."""
    return replace(t, BK=min(t.BK, 64), BV=min(t.BV, 128), num_stages=2)


@functools.lru_cache(maxsize=256)
def choose_tiles(
    chunk_size: int,
    dhqk: int,
    dhhv: int,
    interpret: bool,
    dtype: torch.dtype = torch.bfloat16,
    batch_heads: int = 0,
    sm_count: int = 0,
) -> TileConfig:
    """Tile table: small tiles for the interpreter, the tuned table on the GPU (clamped to the problem; for
    16-bit inputs with the ``UNROLLED_TILES`` and, from ``LARGE_CHUNK`` on, ``LARGE_CHUNK_TILES`` that fit, and
    from a q/k head dim of ``WIDE_QK`` on the ``WIDE_QK_TILES``; with head dims up to 128 the
    ``SMALL_HEAD_TILES`` instead).

    With ``batch_heads`` (``B * NH``) and the GPU's ``sm_count`` given, a fw_states grid of at most one
    program per SM runs ``SMALL_GRID_STATE_WARPS`` warps (each program is then alone on its SM).
    Cached: a pure function of its arguments, and 0.2 ms of host time per call on the H100's host, as much as the
    kernels of a small forward take (docs/performance.md, v7)."""
    if interpret:
        return INTERPRETER_TILES.fit(chunk_size, dhqk, dhhv)
    small = next((t for width, t in SMALL_HEAD_TILES.items() if max(dhqk, dhhv) <= width), None)
    if dtype == torch.float32:  # the tables are tuned in bf16; fp32 keeps the halved rolled table
        config = TileConfig(**{n: _halve_for_fp32(getattr(GPU_TILES, n)) for n in KERNELS})
    elif small is not None:
        config = small
    else:
        tuned = {**UNROLLED_TILES, **(LARGE_CHUNK_TILES if chunk_size >= LARGE_CHUNK else {})}
        fit = {n: t.fit(chunk_size, dhqk, dhhv) for n, t in tuned.items()}
        config = replace(
            GPU_TILES, **{n: t for n, t in fit.items() if unrolls_head_slices(n, t, dhqk, dhhv, dtype.itemsize)}
        )
        if dhqk >= WIDE_QK:
            config = replace(config, **WIDE_QK_TILES)
    config = config.fit(chunk_size, dhqk, dhhv)
    ts = config.fw_states
    if batch_heads and sm_count and triton.cdiv(dhqk, ts.BK) * triton.cdiv(dhhv, ts.BV) * batch_heads <= sm_count:
        config = replace(config, fw_states=replace(ts, num_warps=SMALL_GRID_STATE_WARPS))
    return config


def unpipelined_state_loads(tiles: TileConfig, dtype: torch.dtype) -> TileConfig:
    """For 16-bit states, give the state-loading loop of each ``STATE_READERS`` kernel 1 stage (no software
    pipelining; see ``STATE_READERS``) unless its ``state_stages`` is set. The kernels' other loops keep
    ``num_stages``."""
    if state_dtype(dtype) == torch.float32:
        return tiles
    readers = {n: getattr(tiles, n) for n in STATE_READERS}
    return replace(tiles, **{n: replace(t, state_stages=1) for n, t in readers.items() if t.state_stages is None})


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the stored chunk states ``C_c``: the input dtype for 16-bit inputs (the output and ``dq``
    kernels feed them to ``tl.dot`` in that dtype, so storing them wider only doubles their HBM traffic),
    fp32 for fp32 inputs. The running state itself is always accumulated in fp32."""
    return torch.float32 if dtype == torch.float32 else dtype


def _tile_size(size: object) -> bool:
    """A tile size Triton can launch: an int power of two, at least 16."""
    return isinstance(size, int) and size >= 16 and not size & (size - 1)


def check_tiles(tiles: TileConfig) -> None:
    """Raise ``ValueError`` naming the field when a tile override cannot be launched."""
    if not isinstance(tiles, TileConfig):
        raise ValueError(f"tiles must be a TileConfig, got {type(tiles).__name__}")
    for kernel in KERNELS:
        t = getattr(tiles, kernel)
        for field in ("BQ", "BKV", "BK", "BV"):
            size = getattr(t, field)
            if not _tile_size(size):
                raise ValueError(f"tiles.{kernel}.{field} must be a power of two >= 16, got {size!r}")
        if t.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"tiles.{kernel}.num_warps must be one of 1, 2, 4, 8, 16, got {t.num_warps!r}")
        if not isinstance(t.num_stages, int) or t.num_stages < 1:
            raise ValueError(f"tiles.{kernel}.num_stages must be a positive int, got {t.num_stages!r}")
        if t.state_stages is not None and (not isinstance(t.state_stages, int) or t.state_stages < 1):
            raise ValueError(f"tiles.{kernel}.state_stages must be None or a positive int, got {t.state_stages!r}")
        if t.state_slice is not None and not _tile_size(t.state_slice):
            raise ValueError(f"tiles.{kernel}.state_slice must be None or a power of two >= 16, got {t.state_slice!r}")
        if not isinstance(t.unroll_slices, bool):
            raise ValueError(f"tiles.{kernel}.unroll_slices must be True or False, got {t.unroll_slices!r}")


def unrolled_smem(kernel: str, t: KernelTiles, dhqk: int, dhhv: int, input_bytes: int) -> int:
    """Shared memory (bytes, estimated) of an intra-chunk kernel whose token loop runs ``unroll_slices``: per
    pipeline stage the streamed token tile's rows over the sliced head dim ``D`` and the split tile (plus the fixed
    operand's ``D`` slices, reloaded each block unless one slice covers ``D`` and it loads once), and the output
    tile staged for its TMA store. Triton 3.6 allocated 0.75..1.05x this (at most 5.6 KiB more) for the 168
    unrolled candidates of ``bench tune`` (``tile_search``) at the paper and 7B head dims (compiled for sm_90)."""
    split, sliced, streamed = INTRA_CHUNK[kernel]
    d = dhqk if sliced == "BK" else dhhv
    rows = getattr(t, streamed)
    fixed = t.BQ if streamed == "BKV" else t.BKV
    per_stage = rows * (d + getattr(t, split))
    once = fixed * d if getattr(t, sliced) >= d else 0
    if not once:
        per_stage += fixed * d
    return input_bytes * (once + t.num_stages * per_stage + fixed * getattr(t, split))


def unrolls_head_slices(kernel: str, t: KernelTiles, dhqk: int, dhhv: int, input_bytes: int) -> bool:
    """An intra-chunk kernel's ``UNROLL``: ``unroll_slices`` where ``unrolled_smem`` fits ``UNROLLED_SMEM``
    (a tile tuned at one head dim may not fit at a larger one; it then runs its rolled loop)."""
    return t.unroll_slices and unrolled_smem(kernel, t, dhqk, dhhv, input_bytes) <= UNROLLED_SMEM


def state_slice(t: KernelTiles, unrolled: bool, slice_tile: int, head_dim: int) -> int:
    """``BS`` of an intra-chunk kernel: the slices of its inter-chunk term (the product with the stored chunk
    state), over the head dim its token loop slices by ``slice_tile``. The tiles' ``state_slice`` where set (at
    most the padded head dim); else that tile itself, except where one ``unrolled`` slice covers the head dim: then
    a whole-width state tile next to the loop's buffers would not fit in shared memory, and the term takes
    ``STATE_SLICE``-wide slices."""
    if t.state_slice is not None:
        return min(t.state_slice, triton.next_power_of_2(head_dim))
    if unrolled and slice_tile >= head_dim:
        return min(slice_tile, STATE_SLICE)
    return slice_tile


def slice_args(kernel: str, t: KernelTiles, dhqk: int, dhhv: int, input_bytes: int) -> dict[str, int | bool]:
    """Constexprs of an intra-chunk kernel's head-dim slices (``INTRA_CHUNK``): ``NSLICE`` of its token loop's
    first product, ``BS`` of its inter-chunk term (``state_slice``) and ``UNROLL`` (``unrolls_head_slices``)."""
    sliced = INTRA_CHUNK[kernel][1]
    tile, head_dim = (t.BK, dhqk) if sliced == "BK" else (t.BV, dhhv)
    unroll = unrolls_head_slices(kernel, t, dhqk, dhhv, input_bytes)
    return {"NSLICE": triton.cdiv(head_dim, tile), "BS": state_slice(t, unroll, tile, head_dim), "UNROLL": unroll}


def tile_args(t: KernelTiles) -> dict[str, int]:
    """Keyword arguments of a token-tiled kernel launch: tile sizes, warps and stages."""
    return {"BQ": t.BQ, "BKV": t.BKV, "BK": t.BK, "BV": t.BV, **t.launch()}


def reads_state_ahead(t: KernelTiles, dtype: torch.dtype, chunk_size: int) -> bool:
    """bw_states' ``STATE_AHEAD``: whether it loads the next chunk's state tile, ``n`` and gate scalars a chunk
    ahead into registers and ``dz`` only in the programs that keep ``dn``. Where ptxas keeps them without spills
    (sm_90 compile, ``tests/test_state_kernel_fit.py``; docs/performance.md v17): bf16, 4 or more warps, at most
    ``STATE_AHEAD_TILE`` elements, several token slices a chunk (with one, the entry's loads and the slice's
    product share one loop body and spill)."""
    return dtype == torch.bfloat16 and t.num_warps >= 4 and t.BK * t.BV <= STATE_AHEAD_TILE and chunk_size > t.BQ
