"""A warp-specialized Hopper matmul in Gluon: the smallest kernel with every part the TFLA Gluon kernels need.

``C = A @ B`` with ``A`` (M, K), ``B`` (K, N) in float16 or bfloat16, ``C`` (M, N) in the inputs' dtype, float32
accumulation. One program per (BLOCK_M, BLOCK_N) tile of ``C`` and two partitions:

- a 1-warp **load partition** that streams the K tiles of ``A`` and ``B`` through TMA into a ring of ``STAGES``
  shared-memory buffers, each guarded by a *ready* mbarrier (the TMA's bytes have landed) and an *empty* mbarrier
  (the MMA that read it has completed);
- the **default partition** (``num_warps`` warps, one warpgroup or more) that issues ``warpgroup_mma`` on each
  ready stage asynchronously, keeps one in flight, frees the stage of the previous one, and writes ``C`` back
  through shared memory and a TMA store.

The loads of stage ``i + 1 .. i + STAGES - 1`` thus overlap the MMA of stage ``i`` without any software pipelining
in the consumer: the pattern the intra-chunk kernels use to overlap tile loads with their products.
"""

from __future__ import annotations

from typing import Any

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from kernels.gluon import compat

LOAD_WARPS = gl.constexpr(1)
LOAD_REGS = gl.constexpr(24)  # the fewest registers a warp can be given: the load partition holds only scalars


@gluon.jit
def _load_partition(a_desc, b_desc, a_bufs, b_bufs, ready, empty, off_m, off_n, k_tiles):
    """Producer: K tile ``i`` of A and B into stage ``i % STAGES`` once the MMA that last read it is done."""
    stages: gl.constexpr = a_bufs.type.shape[0]
    block_k: gl.constexpr = a_desc.block_type.shape[1]
    for i in range(k_tiles):
        s = i % stages
        # An mbarrier starts in phase 0 with the previous (virtual) phase complete, so waiting on the flipped
        # phase lets the first ``stages`` loads go without a consumer.
        mbarrier.wait(empty.index(s), ((i // stages) & 1) ^ 1)
        mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
        compat.tma_load(a_desc, [off_m, i * block_k], ready.index(s), a_bufs.index(s))
        compat.tma_load(b_desc, [i * block_k, off_n], ready.index(s), b_bufs.index(s))


@gluon.jit
def _mma_partition(c_desc, a_bufs, b_bufs, ready, empty, off_m, off_n, k_tiles, mma_layout: gl.constexpr):
    """Consumer: asynchronous wgmma per ready stage, one in flight; then the epilogue (registers -> smem -> TMA)."""
    stages: gl.constexpr = a_bufs.type.shape[0]
    block_m: gl.constexpr = c_desc.block_type.shape[0]
    block_n: gl.constexpr = c_desc.block_type.shape[1]
    acc = gl.zeros((block_m, block_n), dtype=gl.float32, layout=mma_layout)
    for i in range(k_tiles):
        s = i % stages
        mbarrier.wait(ready.index(s), (i // stages) & 1)
        acc = warpgroup_mma(a_bufs.index(s), b_bufs.index(s), acc, is_async=True)
        # At most one wgmma outstanding: the one of tile i - 1 has completed, so its stage can be refilled.
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        mbarrier.arrive(empty.index((i + stages - 1) % stages), count=1, pred=i > 0)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    c_smem = gl.allocate_shared_memory(c_desc.dtype, c_desc.block_type.shape, c_desc.layout)
    c_smem.store(acc.to(c_desc.dtype))
    fence_async_shared()
    compat.tma_store(c_desc, [off_m, off_n], c_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def ws_matmul_kernel(a_desc, b_desc, c_desc, K, STAGES: gl.constexpr, INSTR_N: gl.constexpr, num_warps: gl.constexpr):
    block_m: gl.constexpr = c_desc.block_type.shape[0]
    block_n: gl.constexpr = c_desc.block_type.shape[1]
    block_k: gl.constexpr = a_desc.block_type.shape[1]
    off_m = gl.program_id(0) * block_m
    off_n = gl.program_id(1) * block_n
    k_tiles = gl.cdiv(K, block_k)

    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)

    # wgmma instruction m16 nN k16 (16-bit operands, what ws_matmul takes); the default partition's warps tile M.
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, INSTR_N, 16]
    )
    gl.warp_specialize(
        [
            (_mma_partition, (c_desc, a_bufs, b_bufs, ready, empty, off_m, off_n, k_tiles, mma_layout)),
            (_load_partition, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, off_m, off_n, k_tiles)),
        ],
        [LOAD_WARPS],
        [LOAD_REGS],
    )
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(s))
        mbarrier.invalidate(empty.index(s))


def instr_n(block_m: int, block_n: int, num_warps: int) -> int:
    """The widest wgmma N (a multiple of 8, at most 256) that divides ``block_n`` and fits the warps' share of it."""
    n_reps = triton.cdiv(num_warps, triton.cdiv(block_m, 16))
    max_n = max(block_n // n_reps, 8)
    return next(n for n in range(min(256, max_n) // 8 * 8, 7, -8) if block_n % n == 0)


def descriptors(a: Any, b: Any, c: Any, block_m: int, block_n: int, block_k: int) -> tuple[Any, Any, Any]:
    """TMA descriptors of A (M, K), B (K, N) and C (M, N), row-major, with the blocks each program moves."""
    import torch

    el = gl.float16 if a.dtype == torch.float16 else gl.bfloat16

    def desc(t: Any, block: list[int]) -> Any:
        return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, el))

    return desc(a, [block_m, block_k]), desc(b, [block_k, block_n]), desc(c, [block_m, block_n])


def ws_matmul(
    a: Any,
    b: Any,
    out: Any | None = None,
    block_m: int = 128,
    block_n: int = 128,
    block_k: int = 64,
    stages: int = 3,
    num_warps: int = 4,
) -> Any:
    """``a @ b`` for 2-D float16/bfloat16 CUDA tensors ``a`` (M, K) and ``b`` (K, N), written into and returned as
    ``out`` ((M, N), contiguous, their dtype; a new tensor when ``None``). M, N, K need not be multiples of the
    blocks (TMA zero-pads loads and clips stores); N and K must be multiples of 8 (TMA's 16-byte stride rule)."""
    import torch

    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"ws_matmul takes (M, K) @ (K, N); got {tuple(a.shape)} @ {tuple(b.shape)}")
    if a.dtype not in (torch.float16, torch.bfloat16) or b.dtype != a.dtype:
        raise ValueError(f"ws_matmul takes float16 or bfloat16 inputs of one dtype; got {a.dtype}, {b.dtype}")
    a, b = a.contiguous(), b.contiguous()
    m, k = a.shape
    n = b.shape[1]
    c = torch.empty((m, n), device=a.device, dtype=a.dtype) if out is None else out
    a_desc, b_desc, c_desc = descriptors(a, b, c, block_m, block_n, block_k)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    ws_matmul_kernel[grid](a_desc, b_desc, c_desc, k, stages, instr_n(block_m, block_n, num_warps), num_warps=num_warps)
    return c
