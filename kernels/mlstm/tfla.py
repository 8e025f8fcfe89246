"""TFLA mLSTM: public entry points, input checks, tile heuristics and the autograd function.

``mlstm_tfla(q, k, v, i, f, variant="exp"|"sig", ...)`` with ``q, k: (B, NH, S, DHQK)``,
``v: (B, NH, S, DHHV)``, ``i, f: (B, NH, S)``; returns ``h (B, NH, S, DHHV)`` in the input dtype and,
with ``return_last_states=True``, also ``MLSTMStates`` (fp32 ``C, n, m``). The math is written down in
``kernels.mlstm.reference``; ``chunk_fw`` and ``chunk_bw`` hold the Triton kernels.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.mlstm.chunk_bw import (
    bw_chunk_dk_kernel,
    bw_chunk_dq_kernel,
    bw_chunk_dv_kernel,
    bw_chunk_state_grads_kernel,
)
from kernels.mlstm.chunk_fw import fw_chunk_output_kernel, fw_chunk_states_kernel
from kernels.mlstm.gates import gate_arrays, gate_grads, normalizer_grads, stabilizer_per_token
from kernels.mlstm.reference import VARIANTS, MLSTMStates

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_CHUNK, MAX_HEAD_DIM = 16, 1024


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


# Measured on the H100 (scripts/tune_tiles.py, bf16, chunk 128, at DHQK/DHHV 128/256 and 256/512; see
# docs/performance.md, v4 for fw_states and fw_output, v5 for the backward): each kernel splits its grid over one
# head dim (the wide tile) and loops over the other, so a wide split tile cuts the recomputed inner products
# (bw_dq's BK 256 covers the 7B q/k head dim whole: no dh v^T is computed twice).
# fw_states reads whole 128-token chunks (BQ) so that its chunk loop is pipelined (STATE_PIPELINE_SMEM).
# The STATE_READERS' state loops run 1 stage here; LARGE_CHUNK_TILES and WIDE_QK_TILES pipeline them (v7).
GPU_TILES = TileConfig(
    fw_states=KernelTiles(BQ=128, BKV=128, BK=64, BV=128, num_warps=4, num_stages=2),
    fw_output=KernelTiles(BK=128, BV=256, num_warps=4, num_stages=2),
    bw_states=KernelTiles(BK=64, BV=128, num_warps=4, num_stages=3),
    bw_dq=KernelTiles(BK=256, BV=128, num_warps=4, num_stages=2),
    bw_dk=KernelTiles(BK=128, BV=64, num_warps=4, num_stages=3),
    bw_dv=KernelTiles(BK=64, BV=256, num_warps=4, num_stages=2),
)
# 16-bit inputs (v6, tune_tiles.py --family unrolled; docs/performance.md): bw_dk and bw_dv stream 32-query tiles
# through a pipelined query loop (unroll_slices) against a key tile whose sliced head dim loads once. 7B shape:
# bw_dk 3148 -> 2301 us and bw_dv 2375 -> 1676 at chunk 1024, 1346 -> 1354 and 1064 -> 953 at chunk 128; paper
# shape, chunk 128: 1011 -> 955 and 790 -> 734. They replace GPU_TILES' entries only where they fit in shared
# memory (unrolls_head_slices: up to DHHV 512 / DHQK 256); larger head dims keep the rolled entries.
UNROLLED_TILES = {
    "bw_dk": KernelTiles(BQ=32, BKV=64, BK=256, BV=512, num_warps=4, num_stages=2, unroll_slices=True),
    "bw_dv": KernelTiles(BQ=32, BKV=64, BK=256, BV=256, num_warps=4, num_stages=2, unroll_slices=True),
}
# From LARGE_CHUNK tokens on, where the intra-chunk products dominate, fw_output pipelines its key loop over 32-key
# tiles as well (7B shape: 2576 -> 2006 us at chunk 1024, 1269 -> 1227 at 256; 5 % slower than the rolled loop at
# chunk 128). Same conditions as UNROLLED_TILES.
LARGE_CHUNK = 256
LARGE_CHUNK_TILES = {
    "fw_output": KernelTiles(
        BQ=64, BKV=32, BK=256, BV=256, num_warps=4, num_stages=2, state_stages=2, state_slice=64, unroll_slices=True
    )
}
# v7: the large-chunk fw_output above pipelines its state loop in 64-wide slices, 2 stages, in the shared memory that
# one whole-width stage took before, so that its TMA loads overlap (see STATE_READERS; 7B shape: 1960 -> 1790 us at
# chunk 1024, 1219 -> 1018 at 256). bw_dq does the same where the q/k head dim is at least WIDE_QK (16-bit inputs;
# 7B: 1329 -> 1247 us at chunk 128, 2247 -> 1952 at 1024); at DHQK 128 (paper shape) it was slower (997 -> 1025,
# 2237 -> 2484), so there the v6 entry stays (results/h100/state_loop_pipelined_v7.log).
WIDE_QK = 256
WIDE_QK_TILES = {"bw_dq": KernelTiles(BK=256, BV=128, num_warps=4, num_stages=2, state_stages=2, state_slice=64)}
# The intra-chunk kernels: (the head-dim tile their grid is split over, the one their token loop's first product
# slices, the token tile that loop streams; the other token tile is fixed per program).
INTRA_CHUNK = {
    "fw_output": ("BV", "BK", "BKV"),
    "bw_dq": ("BK", "BV", "BKV"),
    "bw_dk": ("BK", "BV", "BQ"),
    "bw_dv": ("BV", "BK", "BQ"),
}
# Head dims up to 128 (v8, tune_tiles.py --family small at the headdim preset's DHQK / DHHV 16 / 32, 32 / 64 and
# 64 / 128, chunk 128; docs/performance.md): each head dim in one tile and little work per token, so the token tiles
# and the warps set the rate. Keyed by the widest head dim they serve (the first key at least max(DHQK, DHHV)); the
# other 16-bit tables do not apply there. H100, sig, us per fwbw pass, at 16 / 32: fw_output 1015 -> 443, bw_dq 884
# -> 592, fw_states 319 -> 180; at 32 / 64: fw_output 497 -> 382, bw_dq 527 -> 434; at 64 / 128: fw_output 406 -> 335,
# bw_states 438 -> 376.
# One token-tile layout for every width, whole head dims (clamped to the problem); the widths differ in warps and stages.
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
        fw_states=(8, 3), fw_output=(4, 3), bw_states=(8, 2), bw_dq=(4, 2), bw_dk=(4, 3), bw_dv=(2, 3)
    ),
}
# Kernels that load the stored chunk states C_ST in a loop that feeds tl.dot. With 16-bit states, Triton 3.6 on
# the H100 miscompiled those loads (then plain pointer loads) in a software pipeline (2 stages at chunk 128, 2 and
# 3 stages at chunk 64, for some tiles: h off by 1e-2..1e-1 while the same values stored as fp32 give exact
# results). With 1 stage they were exact for every tile and chunk size tried (docs/performance.md, v2 and v3;
# scripts/check_state_loads.py). Only that loop runs 1 stage (``KernelTiles.state_stages``); bw_states reads C_ST
# outside any pipelined loop and was exact with 3 stages (dk, dv at chunks 64..256). fw_output loads them through
# a TMA descriptor (v4): 23 of 24 tiles pipeline exactly, but BK 64 x BV 256 with 4 warps and 3 stages still gives
# a different h (4e-4 relative, 7B shape, chunks 64 and 128), so it stays on the list; bw_dq reads them through
# TMA since v5 and was not re-checked pipelined, so it stays too. v7: LARGE_CHUNK_TILES' fw_output and
# WIDE_QK_TILES' bw_dq pipeline that loop explicitly (state_stages 2, 64-wide slices); on the H100 (7B shape,
# chunks 256..1024 for both, 128 for bw_dq) every output and gradient was bit-identical to the same slices in 1
# stage, and repeated runs were identical (results/h100/state_loop_pipelined_v7.log). The rolled chunk-128
# fw_output with the same pipelined loop gave run-to-run differences in h (mLSTMexp, 7e-6 relative): it keeps 1
# stage. Tiles that leave state_stages unset get 1 stage.
STATE_READERS = ("fw_output", "bw_dq")
INTERPRETER_TILES = TileConfig.uniform(KernelTiles(BQ=16, BKV=16, BK=32, BV=32))
# The state kernels pipeline their chunk loop (whole chunks of k and v, or q and dh, in flight) while that fits in
# this much shared memory (bytes; the H100 has 227 KiB per block; unrolls_chunk_slices): fw_states up to 128-token
# chunks with the bf16 table, up to 64 in fp32.
STATE_PIPELINE_SMEM = 200 * 1024
# fw_states where its grid has at most one program per SM (paper config at S = 32768: B * NH = 32, 128 programs on
# 132 SMs): 719 us with 8 warps against 779 with 4 (tune_tiles.py; docs/performance.md, v5). At two programs per SM
# (7B, S = 32768: 256 programs) 4 warps stay faster (907 against 1092 us).
SMALL_GRID_STATE_WARPS = 8
# Slice width of the inter-chunk term of an intra-chunk kernel whose token loop covers a head dim in one unrolled
# slice (state_slice).
STATE_SLICE = 64
# Shared memory an unrolled intra-chunk kernel may take by unrolled_smem: the H100's 227 KiB per block less the
# estimate's largest error (5.6 KiB under Triton's allocation); above it the kernel runs its rolled loop.
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


def gpu_sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device``; 0 elsewhere."""
    if device.type != "cuda":
        return 0
    return torch.cuda.get_device_properties(device).multi_processor_count


def unpipelined_state_loads(tiles: TileConfig, dtype: torch.dtype) -> TileConfig:
    """For 16-bit states, give the state-loading loop of each ``STATE_READERS`` kernel 1 stage (no software
    pipelining; see ``STATE_READERS``) unless its ``state_stages`` is set. The kernels' other loops keep
    ``num_stages``."""
    if state_dtype(dtype) == torch.float32:
        return tiles
    readers = {n: getattr(tiles, n) for n in STATE_READERS}
    return replace(tiles, **{n: replace(t, state_stages=1) for n, t in readers.items() if t.state_stages is None})


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial: MLSTMStates | None,
    variant: str,
    chunk_size: int,
) -> None:
    """Raise ``ValueError`` naming the argument when the inputs cannot be run."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    for name, t in (("q", q), ("k", k), ("v", v), ("i", i), ("f", f)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q must have shape (B, NH, S, DHQK), got {tuple(q.shape)}")
    B, NH, S, DHQK = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape (B, NH, S, DHHV) = ({B}, {NH}, {S}, DHHV), got {tuple(v.shape)}")
    for name, t in (("i", i), ("f", f)):
        if t.shape != (B, NH, S):
            raise ValueError(f"{name} must have shape (B, NH, S) = {(B, NH, S)}, got {tuple(t.shape)}")
    DHHV = v.shape[-1]
    for name, d in (("q/k head dim (DHQK)", DHQK), ("v head dim (DHHV)", DHHV)):
        if d % 16 or not 16 <= d <= MAX_HEAD_DIM:
            raise ValueError(f"{name} must be a multiple of 16 in [16, {MAX_HEAD_DIM}], got {d}")
    if q.dtype not in DTYPES:
        raise ValueError(f"q dtype must be one of {DTYPES}, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} dtype must equal q dtype {q.dtype}, got {t.dtype}")
    for name, t in (("i", i), ("f", f)):
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating point tensor, got {t.dtype}")
    if S < 1:
        raise ValueError(f"sequence length (q.shape[2]) must be >= 1, got {S}")
    if not isinstance(chunk_size, int) or chunk_size < MIN_CHUNK or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= {MIN_CHUNK}, got {chunk_size!r}")
    longest = max(MIN_CHUNK, triton.next_power_of_2(S))
    if chunk_size > longest:
        raise ValueError(f"chunk_size must be at most {longest} for sequence length {S}, got {chunk_size}")
    for name, t in (("k", k), ("v", v), ("i", i), ("f", f)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}: all inputs must share one device")
    if q.device.type == "cpu" and not interpreting():
        raise ValueError("q is a CPU tensor: TFLA kernels need a CUDA device, or TRITON_INTERPRET=1 on the CPU")
    if initial is not None:
        expected = {"C": (B, NH, DHQK, DHHV), "n": (B, NH, DHQK), "m": (B, NH)}
        for name, shape in expected.items():
            t = getattr(initial, name)
            if tuple(t.shape) != shape:
                raise ValueError(f"initial state {name} must have shape {shape}, got {tuple(t.shape)}")
            if t.device != q.device:
                raise ValueError(f"initial state {name} is on {t.device}, q on {q.device}")


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


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the stored chunk states ``C_c``: the input dtype for 16-bit inputs (the output and ``dq``
    kernels feed them to ``tl.dot`` in that dtype, so storing them wider only doubles their HBM traffic),
    fp32 for fp32 inputs. The running state itself is always accumulated in fp32."""
    return torch.float32 if dtype == torch.float32 else dtype


def unrolled_smem(kernel: str, t: KernelTiles, dhqk: int, dhhv: int, input_bytes: int) -> int:
    """Shared memory (bytes, estimated) of an intra-chunk kernel whose token loop runs ``unroll_slices``: per
    pipeline stage the streamed token tile's rows over the sliced head dim ``D`` and the split tile (plus the fixed
    operand's ``D`` slices, reloaded each block unless one slice covers ``D`` and it loads once), and the output
    tile staged for its TMA store. Triton 3.6 allocated 0.75..1.05x this (at most 5.6 KiB more) for the 168
    unrolled candidates of scripts/tune_tiles.py at the paper and 7B head dims (compiled for sm_90)."""
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


def _tile_args(t: KernelTiles) -> dict[str, int]:
    """Keyword arguments of a token-tiled kernel launch: tile sizes, warps and stages."""
    return {"BQ": t.BQ, "BKV": t.BKV, "BK": t.BK, "BV": t.BV, **t.launch()}


def pipelined_chunk_smem(
    t: KernelTiles, chunk_size: int, input_bytes: int, state_bytes: int, state_loads: int = 0
) -> int:
    """Shared memory (bytes, an upper estimate) of a state kernel (fw_states, bw_states) with its chunk loop
    pipelined: ``num_stages`` chunks of the two token-indexed inputs' slices (``BK`` and ``BV`` wide) and of
    ``state_loads`` state tiles read per chunk, plus the staged state tile that is stored."""
    per_stage = chunk_size * (t.BK + t.BV) * input_bytes + state_loads * t.BK * t.BV * state_bytes
    return t.num_stages * per_stage + t.BK * t.BV * state_bytes


def unrolls_chunk_slices(
    t: KernelTiles, chunk_size: int, input_bytes: int, state_bytes: int, state_loads: int = 0
) -> bool:
    """The state kernels' ``UNROLL``: whether a chunk's token slices are unrolled so that the chunk loop is
    pipelined, i.e. whether ``pipelined_chunk_smem`` fits ``STATE_PIPELINE_SMEM``."""
    return pipelined_chunk_smem(t, chunk_size, input_bytes, state_bytes, state_loads) <= STATE_PIPELINE_SMEM


def tma_ready(x: torch.Tensor) -> torch.Tensor:
    """``x`` contiguous and starting on a 16-byte boundary, as TMA descriptors need (a view into a larger
    tensor may start anywhere; then it is copied)."""
    x = x.contiguous()
    return x if x.data_ptr() % 16 == 0 else x.clone()


def head_tiles(x: torch.Tensor, rows: int, cols: int) -> TensorDescriptor:
    """TMA descriptor of a contiguous ``x`` seen as ``(heads, R, D)`` (its last two dims; ``q, k, v, h``:
    ``R = S`` tokens; chunk states: ``R = DHQK``) that moves ``rows x cols`` tiles of one head, as blocks
    ``[1, rows, cols]``. Reads past ``R`` or ``D`` give zeros, and stores there are dropped."""
    r, d = x.shape[-2:]
    return TensorDescriptor(x, shape=[x.numel() // (r * d), r, d], strides=[r * d, d, 1], block_shape=[1, rows, cols])


def launch_fw_states(
    k: torch.Tensor,
    v: torch.Tensor,
    gate_b: torch.Tensor,
    gate_i: torch.Tensor,
    init: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    c_st: torch.Tensor,
    n_st: torch.Tensor,
    m_st: torch.Tensor,
    c_last: torch.Tensor,
    chunk_size: int,
    exp: bool,
    t: KernelTiles,
) -> None:
    """``fw_chunk_states_kernel``: fills ``c_st (BH, NC, DHQK, DHHV)`` (its dtype is the state dtype), fp32
    ``n_st (BH, NC+1, DHQK)``, ``m_st (BH, NC+1)`` and ``c_last (BH, DHQK, DHHV)`` from contiguous ``k, v``
    (``BH`` heads of ``S`` tokens, any leading shape), ``gate_b, gate_i (BH, SP)`` and the optional initial
    states ``(C0, n0, m0)``."""
    DHQK, DHHV = k.shape[-1], v.shape[-1]
    BH, NC = c_st.shape[:2]
    fw_chunk_states_kernel[(triton.cdiv(DHQK, t.BK), triton.cdiv(DHHV, t.BV), BH)](
        head_tiles(k, t.BQ, t.BK),
        head_tiles(v, t.BQ, t.BV),
        gate_b,
        gate_i,
        *(init or (c_last, n_st, m_st)),
        head_tiles(c_st, t.BK, t.BV),
        n_st,
        m_st,
        c_last,
        NC * chunk_size,
        NC,
        DHQK,
        DHHV,
        L=chunk_size,
        BL=t.BQ,
        BK=t.BK,
        BV=t.BV,
        EXP=exp,
        HAS_INIT=init is not None,
        DOT_PREC=_dot_precision(k.dtype),
        UNROLL=unrolls_chunk_slices(t, chunk_size, k.element_size(), c_st.element_size()),
        **t.launch(),
    )


def launch_fw_output(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate_b: torch.Tensor,
    gate_i: torch.Tensor,
    c_st: torch.Tensor,
    n_st: torch.Tensor,
    m_st: torch.Tensor,
    h: torch.Tensor,
    m_tok: torch.Tensor,
    z_tok: torch.Tensor,
    chunk_size: int,
    exp: bool,
    normalize: bool,
    eps: float,
    t: KernelTiles,
) -> None:
    """``fw_chunk_output_kernel``: writes ``h`` (shaped like ``v``) and fp32 ``z_tok (BH, SP)`` from the
    chunk states of ``launch_fw_states`` and mLSTMexp's per-token stabilizer ``m_tok (BH, SP)``."""
    DHQK, DHHV = q.shape[-1], v.shape[-1]
    BH, NC = c_st.shape[:2]
    slices = slice_args("fw_output", t, DHQK, DHHV, q.element_size())
    bs = slices["BS"]
    fw_chunk_output_kernel[(triton.cdiv(DHHV, t.BV), NC * (chunk_size // t.BQ), BH)](
        head_tiles(q, t.BQ, t.BK),
        head_tiles(q, t.BQ, bs),
        head_tiles(k, t.BKV, t.BK),
        head_tiles(v, t.BKV, t.BV),
        gate_b,
        gate_i,
        head_tiles(c_st, bs, t.BV),
        n_st,
        m_st,
        head_tiles(h, t.BQ, t.BV),
        m_tok,
        z_tok,
        NC * chunk_size,
        NC,
        DHQK,
        DHHV,
        DHQK**-0.5,
        eps,
        L=chunk_size,
        BQ=t.BQ,
        BKV=t.BKV,
        BK=t.BK,
        BV=t.BV,
        EXP=exp,
        NORMALIZE=normalize,
        DOT_PREC=_dot_precision(q.dtype),
        STATE_STAGES=t.state_loop_stages,
        **slices,
        **t.launch(),
    )


class _TFLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, variant, normalize, chunk_size, eps, tiles):  # type: ignore[override]
        B, NH, S, DHQK = q.shape
        DHHV = v.shape[-1]
        BH, L = B * NH, chunk_size
        NC = triton.cdiv(S, L)
        SP = NC * L
        if tiles:
            tiles = tiles.fit(L, DHQK, DHHV)
        else:
            tiles = choose_tiles(L, DHQK, DHHV, interpreting(), q.dtype, BH, gpu_sm_count(q.device))
        tiles = unpipelined_state_loads(tiles, q.dtype)
        ts, to = tiles.fw_states, tiles.fw_output
        q, k, v = tma_ready(q), tma_ready(k), tma_ready(v)
        gate_b, gate_i = gate_arrays(i, f, variant, L)
        has_init = C0 is not None
        f32 = dict(dtype=torch.float32, device=q.device)
        c_st = torch.empty(BH, NC, DHQK, DHHV, dtype=state_dtype(q.dtype), device=q.device)
        c_last = torch.empty(BH, DHQK, DHHV, **f32)
        n_st = torch.empty(BH, NC + 1, DHQK, **f32)
        m_st = torch.empty(BH, NC + 1, **f32)
        exp = variant == "exp"
        init = (C0.contiguous(), n0.contiguous(), m0.contiguous()) if has_init else None
        launch_fw_states(k, v, gate_b, gate_i, init, c_st, n_st, m_st, c_last, L, exp, ts)
        h = torch.empty(B, NH, S, DHHV, dtype=q.dtype, device=q.device)
        m_tok = stabilizer_per_token(gate_b, gate_i, m_st, L) if exp else torch.zeros(BH, SP, **f32)
        z_tok = torch.empty(BH, SP, **f32)
        launch_fw_output(q, k, v, gate_b, gate_i, c_st, n_st, m_st, h, m_tok, z_tok, L, exp, normalize, eps, to)
        ctx.save_for_backward(
            q, k, v, i, f, h, gate_b, gate_i, c_st, n_st, m_st, m_tok, z_tok, *((C0, n0, m0) if has_init else ())
        )
        ctx.config = (variant, normalize, L, eps, has_init, tiles)
        ctx.set_materialize_grads(False)
        return h, c_last.reshape(B, NH, DHQK, DHHV), n_st[:, NC].reshape(B, NH, DHQK), m_st[:, NC].reshape(B, NH)

    @staticmethod
    def backward(ctx, dh, dC_last, dn_last, dm_last):  # type: ignore[override]
        variant, normalize, L, eps, has_init, tiles = ctx.config
        q, k, v, i, f, h, gate_b, gate_i, c_st, n_st, m_st, m_tok, z_tok, *init = ctx.saved_tensors
        B, NH, S, DHQK = q.shape
        DHHV = v.shape[-1]
        BH, NC = B * NH, c_st.shape[1]
        SP = NC * L
        exp, prec, scale = variant == "exp", _dot_precision(q.dtype), DHQK**-0.5
        f32 = dict(dtype=torch.float32, device=q.device)
        dh = torch.zeros_like(h) if dh is None else tma_ready(dh)
        inv_den, dz = normalizer_grads(dh, h, z_tok, m_tok, eps, normalize)
        has_dlast = dC_last is not None or dn_last is not None
        dC_last = torch.zeros(B, NH, DHQK, DHHV, **f32) if dC_last is None else dC_last.float().contiguous()
        dn_last = torch.zeros(B, NH, DHQK, **f32) if dn_last is None else dn_last.float().contiguous()
        # State gradients in the input dtype: the dk / dv kernels feed them to tl.dot in that dtype anyway.
        dc_st = torch.empty(BH, NC + 1, DHQK, DHHV, dtype=q.dtype, device=q.device)
        dc_first = torch.empty(BH, DHQK, DHHV, **f32)
        dn_st = torch.empty(BH, NC + 1, DHQK, **f32)
        ts, tq, tk, tv = tiles.bw_states, tiles.bw_dq, tiles.bw_dk, tiles.bw_dv
        common = dict(L=L, EXP=exp, DOT_PREC=prec)
        state_grid = (triton.cdiv(DHQK, ts.BK), triton.cdiv(DHHV, ts.BV), BH)
        x_part = torch.empty(state_grid[0] * state_grid[1], BH, NC, **f32)
        bw_chunk_state_grads_kernel[state_grid](
            head_tiles(q, ts.BQ, ts.BK),
            head_tiles(dh, ts.BQ, ts.BV),
            gate_b,
            inv_den,
            dz,
            head_tiles(c_st, ts.BK, ts.BV),
            n_st,
            m_st,
            m_tok,
            dC_last,
            dn_last,
            head_tiles(dc_st, ts.BK, ts.BV),
            dn_st,
            dc_first,
            x_part,
            SP,
            NC,
            DHQK,
            DHHV,
            scale,
            BL=ts.BQ,
            BK=ts.BK,
            BV=ts.BV,
            HAS_DLAST=has_dlast,
            UNROLL=unrolls_chunk_slices(ts, L, q.element_size(), c_st.element_size(), state_loads=1),
            **common,
            **ts.launch(),
        )
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        qdq = torch.empty(triton.cdiv(DHQK, tq.BK), BH, SP, **f32)
        kdk, kdk_inter, kdk_off = (torch.empty(triton.cdiv(DHQK, tk.BK), BH, SP, **f32) for _ in range(3))
        sq, sk, sv = (
            slice_args(n, t, DHQK, DHHV, q.element_size()) for n, t in (("bw_dq", tq), ("bw_dk", tk), ("bw_dv", tv))
        )
        bs_q, bs_k, bs_v = sq["BS"], sk["BS"], sv["BS"]
        bw_chunk_dq_kernel[(triton.cdiv(DHQK, tq.BK), NC * (L // tq.BQ), BH)](
            head_tiles(q, tq.BQ, tq.BK),
            head_tiles(k, tq.BKV, tq.BK),
            head_tiles(v, tq.BKV, tq.BV),
            head_tiles(dh, tq.BQ, tq.BV),
            head_tiles(dh, tq.BQ, bs_q),
            gate_b,
            gate_i,
            inv_den,
            dz,
            head_tiles(c_st, tq.BK, bs_q),
            n_st,
            m_st,
            m_tok,
            head_tiles(dq, tq.BQ, tq.BK),
            qdq,
            SP,
            NC,
            DHQK,
            DHHV,
            scale,
            STATE_STAGES=tq.state_loop_stages,
            **sq,
            **_tile_args(tq),
            **common,
        )
        bw_chunk_dk_kernel[(triton.cdiv(DHQK, tk.BK), NC * (L // tk.BKV), BH)](
            head_tiles(q, tk.BQ, tk.BK),
            head_tiles(k, tk.BKV, tk.BK),
            head_tiles(v, tk.BKV, tk.BV),
            head_tiles(v, tk.BKV, bs_k),
            head_tiles(dh, tk.BQ, tk.BV),
            gate_b,
            gate_i,
            inv_den,
            dz,
            head_tiles(dc_st, tk.BK, bs_k),
            dn_st,
            m_st,
            m_tok,
            head_tiles(dk, tk.BKV, tk.BK),
            kdk,
            kdk_inter,
            kdk_off,
            SP,
            NC,
            DHQK,
            DHHV,
            scale,
            **sk,
            **_tile_args(tk),
            **common,
        )
        bw_chunk_dv_kernel[(triton.cdiv(DHHV, tv.BV), NC * (L // tv.BKV), BH)](
            head_tiles(q, tv.BQ, tv.BK),
            head_tiles(k, tv.BKV, tv.BK),
            head_tiles(k, tv.BKV, bs_v),
            head_tiles(dh, tv.BQ, tv.BV),
            gate_b,
            gate_i,
            inv_den,
            head_tiles(dc_st, bs_v, tv.BV),
            m_st,
            m_tok,
            head_tiles(dv, tv.BKV, tv.BV),
            SP,
            NC,
            DHQK,
            DHHV,
            scale,
            **sv,
            **_tile_args(tv),
            **common,
        )
        di, df = gate_grads(qdq, kdk, kdk_off, kdk_inter, x_part, i, f, L, variant)
        dC0 = dn0 = dm0 = None
        if has_init:
            C0, n0, m0 = init
            dC0 = dc_first.reshape(C0.shape)
            dn0 = dn_st[:, 0].reshape(n0.shape)
            if exp:
                dm0 = ((C0.float() * dC0).sum((-1, -2)) + (n0.float() * dn0).sum(-1)).to(m0.dtype)
            else:
                dm0 = torch.zeros_like(m0)
            dC0, dn0 = dC0.to(C0.dtype), dn0.to(n0.dtype)
        return dq, dk, dv, di, df, dC0, dn0, dm0, None, None, None, None, None


def mlstm_tfla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    *,
    variant: str = "exp",
    normalize: bool = True,
    chunk_size: int = 128,
    initial: MLSTMStates | None = None,
    return_last_states: bool = False,
    eps: float = 1e-6,
    tiles: TileConfig | None = None,
) -> torch.Tensor | tuple[torch.Tensor, MLSTMStates]:
    """Chunkwise mLSTM with two levels of tiling. Differentiable in every tensor argument.

    ``tiles`` overrides the tile table of ``choose_tiles`` (for tuning; clamped to the problem).
    """
    check_inputs(q, k, v, i, f, initial, variant, chunk_size)
    if tiles is not None:
        check_tiles(tiles)
    C0, n0, m0 = (initial.C, initial.n, initial.m) if initial is not None else (None, None, None)
    h, C, n, m = _TFLAFunction.apply(q, k, v, i, f, C0, n0, m0, variant, normalize, chunk_size, eps, tiles)
    if return_last_states:
        return h, MLSTMStates(C, n, m)
    return h


def mlstm_exp(q, k, v, i, f, **kwargs) -> torch.Tensor | tuple[torch.Tensor, MLSTMStates]:  # noqa: ANN001
    """mLSTMexp: exponential input gate, max-state stabilizer, normalizer ``max(|n.q|, exp(-m))``."""
    return mlstm_tfla(q, k, v, i, f, variant="exp", **kwargs)


def mlstm_sig(q, k, v, i, f, **kwargs) -> torch.Tensor | tuple[torch.Tensor, MLSTMStates]:  # noqa: ANN001
    """mLSTMsig: sigmoid input gate, no max state; ``normalize=False`` drops the normalizer."""
    return mlstm_tfla(q, k, v, i, f, variant="sig", **kwargs)
