"""What the Gluon intra-chunk kernels (``mlstm_fw_output``, ``mlstm_bw_dv``) share: the wgmma layout, the TMA
descriptors over ``(heads, rows, cols)``, the warp-specialized producer, the two consumers' ping-pong turns, and
the input checks.

Each kernel holds one tile per consumer warpgroup fixed for the whole program (the output kernel: queries; ``dv``:
keys), multiplies it with a chunk state's slice (whole, or in pieces through the ring), and streams pairs of tiles
of the other side through a ring of ``STAGES`` buffers guarded by ready / empty mbarriers.
"""

from __future__ import annotations

from typing import Any

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from kernels.gluon import compat
from kernels.mlstm.backends import GLUON_MAX_HEAD_DIM_QK

LOG2E = gl.constexpr(1.4426950408889634)
MAX_HEAD_DIM_QK = GLUON_MAX_HEAD_DIM_QK  # the q/k head dim loads whole (a TMA box is at most 256 elements a side)
LOAD_WARPS = gl.constexpr(1)
LOAD_REGS = gl.constexpr(24)  # the load partition holds only scalars
CONSUMER_REGS = gl.constexpr(240)  # a second consumer warpgroup: its fp32 accumulator, scores and gates


@gluon.constexpr_function
def mma_layout(num_warps: int, n: int) -> gl.NVMMADistributedLayout:
    """wgmma accumulator layout m16 x ``n`` x k16 (16-bit operands), the warps stacked along the rows."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, n, 16])


@gluon.jit
def claim_stage(ready, empty, nbytes, u):
    """Stage ``u % STAGES`` for the ring's load ``u``, once every consumer has freed it (an mbarrier starts with its
    previous phase complete, so the first pass over the stages does not wait), its ready barrier armed for ``nbytes``.
    Returns the stage."""
    stages: gl.constexpr = ready.type.shape[0]
    s = u % stages
    mbarrier.wait(empty.index(s), ((u // stages) & 1) ^ 1)
    mbarrier.expect(ready.index(s), nbytes)
    return s


@gluon.jit
def load_partition(FIX_D, A_D, B_D, ST_D, fix_bufs, st_smem, a_bufs, b_bufs, fix_ready, ready, empty, bh, fix_row0,
                   st_row, ab_row0, col0, n_tiles, P: gl.constexpr):  # fmt: skip
    """Producer of the warp-specialized intra-chunk kernels (``mlstm_fw_output``: ``FIX_D, A_D, B_D, ST_D = Q_D, K_D,
    V_D, C_D``; ``mlstm_bw_dv``: ``K_D, Q_D, DH_D, DC_D``): each consumer's fixed tile (``FIX_D`` rows
    ``fix_row0 + w * rows``) once, the state slice ``ST_D[st_row, :, col0:]`` once whole into ``st_smem``
    (``P == 0``) or in ``P`` pieces of ``A_D``'s rows through the ring's ``B`` buffers, then ``n_tiles`` tiles of
    ``A_D`` (whole head dim) and ``B_D`` (from column ``col0``) from row ``ab_row0``; load ``u`` of the ring
    (pieces first) goes into stage ``u % STAGES`` as soon as every consumer has freed it."""
    consumers: gl.constexpr = fix_bufs.type.shape[0]
    BF: gl.constexpr = FIX_D.block_type.shape[1]
    BA: gl.constexpr = A_D.block_type.shape[1]
    if P == 0:
        mbarrier.expect(fix_ready, consumers * FIX_D.block_type.nbytes + ST_D.block_type.nbytes)
        compat.tma_load(ST_D, [st_row, 0, col0], fix_ready, st_smem)
    else:
        mbarrier.expect(fix_ready, consumers * FIX_D.block_type.nbytes)
    for w in gl.static_range(consumers):
        compat.tma_load(FIX_D, [bh, fix_row0 + w * BF, 0], fix_ready, fix_bufs.index(w))
    for p in gl.static_range(P):
        s = claim_stage(ready, empty, ST_D.block_type.nbytes, p)
        compat.tma_load(ST_D, [st_row, p * BA, col0], ready.index(s), b_bufs.index(s))
    for j in range(n_tiles):
        s = claim_stage(ready, empty, A_D.block_type.nbytes + B_D.block_type.nbytes, P + j)
        compat.tma_load(A_D, [bh, ab_row0 + j * BA, 0], ready.index(s), a_bufs.index(s))
        compat.tma_load(B_D, [bh, ab_row0 + j * BA, col0], ready.index(s), b_bufs.index(s))


@gluon.jit
def state_product(fixed, st_smem, b_bufs, fix_ready, ready, empty, o_layout: gl.constexpr, P: gl.constexpr):
    """A consumer's first product, once ``load_partition`` has brought its fixed tile: that tile (``[1, rows,
    DK]`` in shared memory) times the state slice (DK x BV), whole from ``st_smem`` (``P == 0``) or in ``P`` pieces
    from the ring's ``B`` buffers, each stage handed back after its wgmma. Returns the fp32 ``rows x BV`` product."""
    stages: gl.constexpr = b_bufs.type.shape[0]
    R: gl.constexpr = fixed.type.shape[1]
    DK: gl.constexpr = fixed.type.shape[2]
    PR: gl.constexpr = b_bufs.type.shape[2]
    BV: gl.constexpr = b_bufs.type.shape[3]
    mbarrier.wait(fix_ready, 0)
    f2 = fixed.reshape([R, DK])
    acc = gl.zeros([R, BV], gl.float32, o_layout)
    if P == 0:
        acc = warpgroup_mma(f2, st_smem.reshape([DK, BV]), acc, use_acc=False)
    else:
        for p in gl.static_range(P):
            mbarrier.wait(ready.index(p % stages), (p // stages) & 1)
            acc = warpgroup_mma(f2.slice(p * PR, PR, dim=1), b_bufs.index(p % stages).reshape([PR, BV]), acc)
            mbarrier.arrive(empty.index(p % stages), count=1)
    return acc


@gluon.jit
def ring_barriers(STAGES: gl.constexpr, consumers: gl.constexpr):
    """The barriers ``load_partition`` and the consumers use, allocated and armed: ``fix_ready`` and each stage's
    ``ready`` complete on one arrival (the producer's ``expect``), each ``empty`` when all ``consumers`` have freed its
    stage. Returns ``fix_ready, ready, empty``."""
    fix_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(fix_ready, count=1)
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=consumers)
    return fix_ready, ready, empty


@gluon.jit
def invalidate_ring(fix_ready, ready, empty):
    """``ring_barriers``' barriers released, after the partitions have joined."""
    stages: gl.constexpr = ready.type.shape[0]
    mbarrier.invalidate(fix_ready)
    for s in gl.static_range(stages):
        mbarrier.invalidate(ready.index(s))
        mbarrier.invalidate(empty.index(s))


@gluon.jit
def init_turns(turns):
    """Arm the ping-pong barriers of two consumer warpgroups (``wait_turn``): ``turns[w]`` completes a phase on one
    arrival, the other consumer's hand-over."""
    mbarrier.init(turns.index(0), count=1)
    mbarrier.init(turns.index(1), count=1)


@gluon.jit
def invalidate_turns(turns):
    mbarrier.invalidate(turns.index(0))
    mbarrier.invalidate(turns.index(1))


@gluon.jit
def wait_turn(turns, ME: gl.constexpr, SECOND: gl.constexpr):
    """Ping-pong of two consumer warpgroups (as FlashAttention-3's): over the tiles both of them multiply, their
    products are issued in strict turns (consumer 0's first product of a tile, consumer 1's, consumer 0's second,
    consumer 1's, then the next tile's), so that one's gate math runs while the other's product is in the tensor
    cores. Consumer ``ME`` waits here before its first (``SECOND == 0``) or second product of a tile, until the
    other has issued its previous one (consumer 0's first turn passes at once); it calls ``pass_turn`` as soon as
    it has issued its own. The turns alternate strictly, so no barrier runs more than one phase ahead and a parity
    names the phase."""
    mbarrier.wait(turns.index(ME), (1 - ME) ^ SECOND)


@gluon.jit
def pass_turn(turns, ME: gl.constexpr):
    """Consumer ``ME`` has issued its product: the other's turn (``wait_turn``)."""
    mbarrier.arrive(turns.index(1 - ME), count=1)


@gluon.jit
def product(a, b, acc, turns, ME: gl.constexpr, SECOND: gl.constexpr, PINGPONG: gl.constexpr,
            use_acc: gl.constexpr = True, A_IN_REGISTERS: gl.constexpr = False):  # fmt: skip
    """``a @ b (+ acc)`` by wgmma, completed when it returns. With ``PINGPONG`` consumer ``ME``'s first
    (``SECOND == 0``) or second product of a tile, issued in its turn (``wait_turn``) and the turn handed over as
    soon as it is issued; ``A_IN_REGISTERS``: ``a`` is a register operand, kept alive until the product is done."""
    if PINGPONG:
        wait_turn(turns, ME, SECOND)
        acc = warpgroup_mma(a, b, acc, use_acc=use_acc, is_async=True)
        pass_turn(turns, ME)
        if A_IN_REGISTERS:
            acc, a = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a))
        else:
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    else:
        acc = warpgroup_mma(a, b, acc, use_acc=use_acc)
    return acc


def head_tiles(x: Any, rows: int, cols: int) -> TensorDescriptor:
    """Gluon TMA descriptor of a contiguous ``x`` seen as ``(heads, R, D)`` (its last two dims) moving
    ``[1, rows, cols]`` blocks; reads past ``R`` or ``D`` give zeros, stores there are dropped."""
    import torch

    r, d = x.shape[-2:]
    el = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16, torch.float32: gl.float32}[x.dtype]
    layout = gl.NVMMASharedLayout.get_default_for([1, rows, cols], el)
    return TensorDescriptor(x, [x.numel() // (r * d), r, d], [r * d, d, 1], [1, rows, cols], layout)


def check(
    kernel: str,
    q: Any,
    chunk_size: int,
    fixed: tuple[str, int],
    streamed: tuple[str, int],
    bv: int,
    dhhv: int,
    state_pieces: bool,
) -> None:
    """``ValueError`` naming what ``kernel`` cannot take: 32-bit inputs, a q/k head dim over 256, tiles that do not
    divide the chunk (``fixed``: the name and rows of the per-consumer tile, a multiple of 64; ``streamed``: those of
    the ring's tiles), a ``BV`` that is not a power of two up to 256, or state pieces (``streamed`` rows each) wider
    than the padded q/k head dim."""
    import torch

    (fixed_name, fixed_rows), (streamed_name, streamed_rows) = fixed, streamed
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"the Gluon {kernel} takes float16 or bfloat16 inputs; got {q.dtype}")
    if q.shape[-1] > MAX_HEAD_DIM_QK:
        raise ValueError(f"the Gluon {kernel} takes a q/k head dim up to {MAX_HEAD_DIM_QK}; got {q.shape[-1]}")
    if fixed_rows % 64 or chunk_size % fixed_rows or chunk_size % streamed_rows:
        raise ValueError(
            f"{fixed_name} (a multiple of 64) and {streamed_name} must divide the chunk size {chunk_size}; "
            f"got {fixed_rows}, {streamed_rows}"
        )
    if bv not in (16, 32, 64, 128, 256) or bv > triton.next_power_of_2(dhhv):
        raise ValueError(f"BV must be a power of two from 16 to 256 and at most the padded DHHV; got {bv}")
    if state_pieces and streamed_rows > triton.next_power_of_2(q.shape[-1]):
        raise ValueError(
            f"state pieces of {streamed_name}={streamed_rows} rows need a padded q/k head dim of at least "
            f"{streamed_rows}"
        )


def check_pingpong(pingpong: bool, consumers: int) -> None:
    """``ValueError`` for ping-pong turns (``wait_turn``) without the two consumer warpgroups that take them."""
    if pingpong and consumers != 2:
        raise ValueError(f"pingpong takes turns between two consumer warpgroups; got consumers={consumers}")


def launch(
    kernel: Any, grid: tuple[int, int, int], args: dict[str, Any], constexprs: dict[str, Any], device: Any
) -> None:
    """``kernel[grid](**args, **constexprs)`` on a GPU; on the CPU (``device.type == "cpu"``) the same kernel through
    ``kernels.gluon.simulator`` (results, not timings)."""
    if device.type == "cpu":
        from kernels.gluon.simulator import simulate

        simulate(kernel, grid, args, constexprs)
    else:
        kernel[grid](**args, **constexprs)
