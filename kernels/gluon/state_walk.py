"""What the Gluon state walks (``mlstm_fw_states``, ``mlstm_bw_states``) share: the tiles they take, a consumer's
tile of the state, the per-chunk store of it through shared memory and the chunk's products chained one in
flight."""

from __future__ import annotations

from typing import Any

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from kernels.gluon import compat


@gluon.jit
def state_tile(k0, v0, DHQK, DHHV, BK: gl.constexpr, BV: gl.constexpr, layout: gl.constexpr):
    """A consumer's ``BK x BV`` tile of a ``DHQK x DHHV`` state from row ``k0``, column ``v0``, in ``layout`` (the
    wgmma accumulator's). Returns its row offsets, the row mask, the tile mask and the element offsets."""
    offs_k = k0 + gl.arange(0, BK, layout=gl.SliceLayout(1, layout))
    offs_v = v0 + gl.arange(0, BV, layout=gl.SliceLayout(0, layout))
    mask_k = offs_k < DHQK
    mask_kv = mask_k[:, None] & (offs_v < DHHV)[None, :]
    return offs_k, mask_k, mask_kv, offs_k[:, None] * DHHV + offs_v[None, :]


@gluon.jit
def store_walked_tile(ptr, x, offs_k, mask_k, v0, DHHV, BV: gl.constexpr, layout: gl.constexpr):
    """The fp32 tile ``x`` (``layout``) a walk ends with, stored to ``ptr`` (a ``DHQK x DHHV`` state) at rows
    ``offs_k`` (masked by ``mask_k``) and columns ``v0`` on. Its column offsets and mask are made here, after the
    walk, not held through it (at ``BV`` 256 they spill), and written otherwise than ``state_tile``'s, so that the
    compiler does not merge them with those the walk's first tile used."""
    offs_v = v0 + gl.arange(0, BV, layout=gl.SliceLayout(0, layout))
    gl.store(ptr + offs_v[None, :] + (offs_k * DHHV)[:, None], x, mask=(offs_v < DHHV)[None, :] & mask_k[:, None])


@gluon.jit
def store_tile(x, buf, desc, row, k0, v0, PENDING: gl.constexpr):
    """The fp32 tile ``x`` out to ``desc[row, k0:, v0:]`` in its dtype, through the shared buffer ``buf`` (``[1, BK,
    BV]``) by TMA, once at most ``PENDING`` stores are in flight. With two buffers taken in turn (``PENDING`` 1) the
    store that last used ``buf`` has then left it, so the walk goes on while the previous chunk's store is in
    flight; with one (``PENDING`` 0) every earlier store has."""
    BK: gl.constexpr = buf.type.shape[1]
    BV: gl.constexpr = buf.type.shape[2]
    tma.store_wait(pendings=PENDING)
    buf.reshape([BK, BV]).store(x.to(desc.dtype))
    fence_async_shared()
    compat.tma_store(desc, [row, k0, v0], buf)


@gluon.jit
def chain_product(a, b, acc, empty, u, first):
    """``acc + a @ b`` for ring load ``u`` (``b`` in its stage), issued asynchronously with one product in flight:
    once the previous product has completed, its stage (load ``u - 1``) goes back to the producer, unless this is
    the chunk's ``first``. A slice's gate math and operand then run while the previous slice's wgmma does.
    ``drain_products`` ends the chain. Returns the accumulator."""
    stages: gl.constexpr = empty.type.shape[0]
    acc = warpgroup_mma(a, b, acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
    if not first:
        mbarrier.arrive(empty.index((u - 1) % stages), count=1)
    return acc


@gluon.jit
def drain_products(acc, empty, u):
    """The end of a ``chain_product`` chain whose last load was ``u``: waits for its product, hands its stage back.
    Returns the accumulator, ready to read."""
    stages: gl.constexpr = empty.type.shape[0]
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    mbarrier.arrive(empty.index(u % stages), count=1)
    return acc


def check(k: Any, chunk_size: int, bl: int, bk: int, bv: int, consumers: int, kernel: str, **buffers: int) -> None:
    """``ValueError`` naming what the state walk ``kernel`` cannot take: 32-bit inputs, a ``BK`` other than 64 (one
    wgmma's rows), a ``BV`` that is not a power of two from 16 to 256, a token slice ``BL`` (a multiple of 16 up to
    256) that does not divide the chunk, consumers other than 1 or 2, or ``buffers`` (shared buffers a consumer, by
    the kernel's option name) other than 1 or 2."""
    import torch

    for name, count in {"consumers": consumers, **buffers}.items():
        if count not in (1, 2):
            raise ValueError(f"the Gluon {kernel} takes {name} 1 or 2; got {count}")
    if k.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"the Gluon {kernel} takes float16 or bfloat16 inputs; got {k.dtype}")
    if bk != 64:
        raise ValueError(f"the Gluon {kernel} takes BK=64 (one wgmma's rows); got BK={bk}")
    if bv not in (16, 32, 64, 128, 256):
        raise ValueError(f"the Gluon {kernel} takes BV in 16, 32, 64, 128, 256; got BV={bv}")
    if bl % 16 or not 16 <= bl <= 256 or chunk_size % bl:
        raise ValueError(
            f"the Gluon {kernel} takes a token slice BL (a multiple of 16 up to 256) dividing the chunk size "
            f"{chunk_size}; got BL={bl}"
        )
