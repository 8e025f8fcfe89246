"""What the Gluon state walks (``mlstm_fw_states``, ``mlstm_bw_states``) share: a consumer's tile of the state and
the per-chunk store of it through shared memory."""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, tma

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
def store_tile(x, buf, desc, row, k0, v0):
    """The fp32 tile ``x`` out to ``desc[row, k0:, v0:]`` in its dtype, through the shared buffer ``buf`` (``[1, BK,
    BV]``) by TMA. The caller takes two buffers in turn: the store that last used ``buf`` has left it once at most
    one store is pending, so the walk goes on while the previous chunk's store is in flight."""
    BK: gl.constexpr = buf.type.shape[1]
    BV: gl.constexpr = buf.type.shape[2]
    tma.store_wait(pendings=1)
    buf.reshape([BK, BV]).store(x.to(desc.dtype))
    fence_async_shared()
    compat.tma_store(desc, [row, k0, v0], buf)
