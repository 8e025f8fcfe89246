"""The TFLA forward's state recurrence (``kernels.mlstm.chunk_fw.fw_chunk_states_kernel``) in Gluon for Hopper,
warp-specialized.

Same inputs and outputs as ``launch_fw_states``: a program owns a ``BK x BV`` tile of the state ``C`` (and the
``BK`` slice of ``n``) of one head and walks the chunks in order. A 1-warp load partition streams each chunk's ``k``
and ``v`` in ``BL``-token slices through a ring of ``STAGES`` pairs of buffers, across chunk boundaries, so the loads
of the next chunk are in flight while this one is multiplied. One consumer warpgroup keeps ``C`` in registers (the
wgmma accumulator), and per chunk writes the state before it (TMA store from one of ``STORE_BUFS`` shared buffers:
with two, a store is in flight while the next chunk runs; one leaves room for a ``v`` slice of 256 columns), moves
the stabilizer and decays ``C`` and ``n``, then per slice scales ``k`` by each token's weight
``w_t = exp(g - b_t + i_t - m)`` in registers and adds ``(k w)^T v`` (``(k w)^T`` the wgmma's register operand,
``v`` from the ring; the products chained asynchronously, one in flight). The consumer's global
loads (the gates of the next slice, the next chunk's last gate and mLSTMexp's chunk max) are issued a step before
they are used: this walk is serial, and a load waited for where it is issued cost ~2.3x the kernel's time
(docs/performance.md v24).

Not yet: 32-bit inputs.
"""

from __future__ import annotations

from typing import Any

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    tma,
)

from kernels.gluon import compat, intra_chunk, state_walk
from kernels.gluon.intra_chunk import (
    CONSUMER_REGS,
    LOAD_REGS,
    LOAD_WARPS,
    claim_stage,
    head_tiles,
    invalidate_ring,
    mma_layout,
    ring_barriers,
)
from kernels.gluon.state_walk import chain_product, drain_products, state_tile, store_tile, store_walked_tile


@gluon.jit
def _load_partition(K_D, V_D, k_bufs, v_bufs, fix_ready, ready, empty, bh, k0, v0, n_slices):
    """The producer: slice ``u`` of all chunks' tokens (``BL`` of them from token ``u * BL``) of ``v`` and, per
    consumer, of its ``BK`` columns of ``k`` into stage ``u % STAGES``, once every consumer has freed it (the first
    pass over the stages does not wait)."""
    BL: gl.constexpr = k_bufs.type.shape[2]
    BK: gl.constexpr = k_bufs.type.shape[3]
    consumers: gl.constexpr = k_bufs.type.shape[0] // v_bufs.type.shape[0]
    for u in range(n_slices):
        s = claim_stage(ready, empty, consumers * K_D.block_type.nbytes + V_D.block_type.nbytes, u)
        for w in gl.static_range(consumers):
            compat.tma_load(K_D, [bh, u * BL, k0 + w * BK], ready.index(s), k_bufs.index(s * consumers + w))
        compat.tma_load(V_D, [bh, u * BL, v0], ready.index(s), v_bufs.index(s))


@gluon.jit
def _compute_partition(k_bufs, v_bufs, c_smem, fix_ready, ready, empty, C_D, GATE_B, GATE_I, CHUNK_MAX, C0, N0, M0,
                       N_ST, M_ST, C_LAST, bh, k_tile, v0, pid_v, SP, NC, L, DHQK, DHHV, EXP: gl.constexpr,
                       HAS_INIT: gl.constexpr, PACKED_GATES: gl.constexpr, W: gl.constexpr,
                       num_warps: gl.constexpr):  # fmt: skip
    """Consumer warpgroup ``W`` of the program (module docstring), owning the state's rows ``k_tile * BK`` on; each
    stage is handed back once its product has completed. ``PACKED_GATES``: a slice's gates are loaded one token a
    thread and only its weights ``w`` moved into the ``k`` tile's rows (``convert_layout``, through shared scratch);
    otherwise they are loaded in those rows, each token held by the 8 threads of its row."""
    stages: gl.constexpr = v_bufs.type.shape[0]
    consumers: gl.constexpr = k_bufs.type.shape[0] // stages
    BL: gl.constexpr = k_bufs.type.shape[2]
    BK: gl.constexpr = k_bufs.type.shape[3]
    k0 = k_tile * BK
    BV: gl.constexpr = v_bufs.type.shape[3]
    dtype: gl.constexpr = k_bufs.dtype
    c_layout: gl.constexpr = mma_layout(num_warps, BV)
    rows: gl.constexpr = gl.SliceLayout(1, c_layout)
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=c_layout, k_width=2)
    k_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])  # a BL x BK slice of k
    tokens: gl.constexpr = gl.SliceLayout(1, k_layout)
    gates: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0]) if PACKED_GATES else tokens

    store_bufs: gl.constexpr = c_smem.type.shape[0] // consumers
    offs_k, mask_k, mask_kv, tile = state_tile(k0, v0, DHQK, DHHV, BK, BV, c_layout)
    if HAS_INIT:
        C = gl.load(C0 + bh * DHQK * DHHV + tile, mask=mask_kv, other=0.0).to(gl.float32)
        n = gl.load(N0 + bh * DHQK + offs_k, mask=mask_k, other=0.0).to(gl.float32)
    else:
        C = gl.zeros([BK, BV], gl.float32, c_layout)
        n = gl.zeros([BK], gl.float32, rows)
    m = gl.full([], 0.0, gl.float32)
    if EXP and HAS_INIT:
        m = gl.load(M0 + bh).to(gl.float32)
    n_slices = L // BL
    n_total = NC * n_slices
    # Global loads in flight one step ahead (a load's latency, ~1 us, would otherwise stall every slice): the gates
    # of the next slice and the next chunk's last gate (the last slice and chunk fetch the first again, unused).
    slice_tokens = bh * SP + gl.arange(0, BL, layout=gates)
    b_next = gl.load(GATE_B + slice_tokens)
    i_next = gl.load(GATE_I + slice_tokens)
    g_next = gl.load(GATE_B + bh * SP + L - 1)
    chunk_max_next = gl.full([], 0.0, gl.float32)
    if EXP:
        chunk_max_next = gl.load(CHUNK_MAX + bh * NC)
    for c in range(NC):
        # The state before chunk c out (with two shared buffers in turn its store overlaps the next chunk too).
        st = bh * (NC + 1) + c
        store_tile(C, c_smem.index((c % store_bufs) * consumers + W), C_D, bh * NC + c, k0, v0, store_bufs - 1)
        if pid_v == 0:
            gl.store(N_ST + st * DHQK + offs_k, n, mask=mask_k)
            if k_tile == 0:
                gl.store(M_ST + st, m)
        # Entering chunk c: the stabilizer moves to m_new and C, n decay over the chunk.
        g = g_next
        g_next = gl.load(GATE_B + bh * SP + ((c + 1) % NC) * L + L - 1)
        m_new = gl.full([], 0.0, gl.float32)
        if EXP:  # max(g + m, g + max_t (i_t - b_t)), the chunk's max computed before the launch
            m_new = gl.maximum(g + m, g + chunk_max_next)
            chunk_max_next = gl.load(CHUNK_MAX + bh * NC + (c + 1) % NC)
        decay = gl.exp(g + m - m_new)
        C = C * decay
        n = n * decay
        m = m_new
        g_minus_m = g - m_new
        # The chunk's products chained asynchronously, one in flight: slice j's gate math and k scaling run while
        # slice j-1's wgmma does; a stage goes back once its wgmma has completed.
        for j in range(n_slices):
            u = c * n_slices + j
            s = u % stages
            b_t = b_next
            i_t = i_next
            after = ((u + 1) % n_total) * BL
            b_next = gl.load(GATE_B + slice_tokens + after)
            i_next = gl.load(GATE_I + slice_tokens + after)
            w = gl.convert_layout(gl.exp(g_minus_m - b_t + i_t), tokens)  # unpacked: the same layout, no move
            mbarrier.wait(ready.index(s), (u // stages) & 1)
            kw = k_bufs.index(s * consumers + W).reshape([BL, BK]).load(k_layout).to(gl.float32) * w[:, None]
            n += gl.convert_layout(gl.sum(kw, axis=0), rows)
            a = gl.convert_layout(gl.permute(kw.to(dtype), (1, 0)), a_layout)  # (k w)^T: BK x BL
            C = chain_product(a, v_bufs.index(s).reshape([BL, BV]), C, empty, u, j == 0)
        C = drain_products(C, empty, c * n_slices + n_slices - 1)
    tma.store_wait(pendings=0)
    st = bh * (NC + 1) + NC
    store_walked_tile(C_LAST + bh * DHQK * DHHV, C, offs_k, mask_k, v0, DHHV, BV, c_layout)
    if pid_v == 0:
        gl.store(N_ST + st * DHQK + offs_k, n, mask=mask_k)
        if k_tile == 0:
            gl.store(M_ST + st, m)


@gluon.jit
def fw_states_kernel(
    K_D,
    V_D,
    GATE_B,
    GATE_I,
    CHUNK_MAX,
    C0,
    N0,
    M0,
    C_D,
    N_ST,
    M_ST,
    C_LAST,
    SP,
    NC,
    L,
    DHQK,
    DHHV,
    EXP: gl.constexpr,
    HAS_INIT: gl.constexpr,
    STAGES: gl.constexpr,
    CONSUMERS: gl.constexpr,
    PACKED_GATES: gl.constexpr,
    STORE_BUFS: gl.constexpr,
    num_warps: gl.constexpr,
):
    """Grid ``(cdiv(DHQK, CONSUMERS * BK), cdiv(DHHV, BV), BH)``: ``CONSUMERS`` (1 or 2) warpgroups a program, each
    owning ``BK`` rows of its state tile and sharing the ``v`` slices. Descriptors over ``(heads, rows, cols)`` with
    blocks ``[1, rows, cols]``: ``K_D`` (BL x BK over ``k``), ``V_D`` (BL x BV over ``v``), ``C_D`` (BK x BV over
    the ``BH * NC`` chunk states, the state dtype; ``STORE_BUFS`` (1 or 2) shared buffers a consumer for them);
    ``N_ST, M_ST`` (fp32, ``NC + 1`` a head), ``C_LAST`` (fp32, the state after the last chunk); ``C0, N0, M0``
    the initial states where ``HAS_INIT``; ``CHUNK_MAX`` (fp32, ``NC`` a head: each chunk's max of ``i - b``, read
    where ``EXP``). ``L`` (the chunk size, a multiple of ``BL``) is not a constexpr: one compile serves every chunk
    size."""
    BL: gl.constexpr = K_D.block_type.shape[1]
    BK: gl.constexpr = K_D.block_type.shape[2]
    BV: gl.constexpr = V_D.block_type.shape[2]
    pid_k = gl.program_id(0)
    pid_v = gl.program_id(1)
    bh = gl.program_id(2)
    v0 = pid_v * BV

    k_bufs = gl.allocate_shared_memory(K_D.dtype, [STAGES * CONSUMERS, 1, BL, BK], K_D.layout)
    v_bufs = gl.allocate_shared_memory(V_D.dtype, [STAGES, 1, BL, BV], V_D.layout)
    c_smem = gl.allocate_shared_memory(C_D.dtype, [STORE_BUFS * CONSUMERS, 1, BK, BV], C_D.layout)
    fix_ready, ready, empty = ring_barriers(STAGES, CONSUMERS)

    # The partitions are written out in each branch: Gluon takes them only as literal (function, args) tuples.
    if CONSUMERS == 1:
        gl.warp_specialize(
            [
                (
                    _compute_partition,
                    (k_bufs, v_bufs, c_smem, fix_ready, ready, empty, C_D, GATE_B, GATE_I, CHUNK_MAX, C0, N0, M0,
                     N_ST, M_ST, C_LAST, bh, pid_k, v0, pid_v, SP, NC, L, DHQK, DHHV, EXP, HAS_INIT, PACKED_GATES, 0,
                     num_warps),
                ),
                (_load_partition, (K_D, V_D, k_bufs, v_bufs, fix_ready, ready, empty, bh, pid_k * BK, v0,
                                   NC * (L // BL))),
            ],
            [LOAD_WARPS],
            [LOAD_REGS],
        )  # fmt: skip
    else:
        gl.warp_specialize(
            [
                (
                    _compute_partition,
                    (k_bufs, v_bufs, c_smem, fix_ready, ready, empty, C_D, GATE_B, GATE_I, CHUNK_MAX, C0, N0, M0,
                     N_ST, M_ST, C_LAST, bh, 2 * pid_k, v0, pid_v, SP, NC, L, DHQK, DHHV, EXP, HAS_INIT,
                     PACKED_GATES, 0, num_warps),
                ),
                (
                    _compute_partition,
                    (k_bufs, v_bufs, c_smem, fix_ready, ready, empty, C_D, GATE_B, GATE_I, CHUNK_MAX, C0, N0, M0,
                     N_ST, M_ST, C_LAST, bh, 2 * pid_k + 1, v0, pid_v, SP, NC, L, DHQK, DHHV, EXP, HAS_INIT,
                     PACKED_GATES, 1, num_warps),
                ),
                (_load_partition, (K_D, V_D, k_bufs, v_bufs, fix_ready, ready, empty, bh, 2 * pid_k * BK, v0,
                                   NC * (L // BL))),
            ],
            [num_warps, LOAD_WARPS],
            [CONSUMER_REGS, LOAD_REGS],
        )  # fmt: skip
    invalidate_ring(fix_ready, ready, empty)


def check(k: Any, chunk_size: int, bl: int, bk: int, bv: int, consumers: int = 1, store_bufs: int = 2) -> None:
    """``state_walk.check`` for this kernel."""
    state_walk.check(k, chunk_size, bl, bk, bv, consumers, "fw_states", store_bufs=store_bufs)


def launch_args(
    k: Any,
    v: Any,
    gate_b: Any,
    gate_i: Any,
    init: tuple[Any, Any, Any] | None,
    c_st: Any,
    n_st: Any,
    m_st: Any,
    c_last: Any,
    chunk_size: int,
    exp: bool,
    bl: int = 64,
    bk: int = 64,
    bv: int = 128,
    stages: int = 4,
    consumers: int = 1,
    packed_gates: bool = False,
    store_bufs: int = 2,
) -> tuple[Any, tuple[int, int, int], dict[str, Any], dict[str, Any]]:
    """What ``launch_fw_states`` launches on the tensors ``kernels.mlstm.chunk_fw.launch_fw_states`` takes (in its
    order; no tiles): the kernel, its grid, its runtime arguments and its constexprs, by name. ``bl``: tokens a ring
    stage; ``bk, bv``: the state tile a consumer warpgroup owns; ``stages``: ring depth; ``consumers``: warpgroups a
    program (1 or 2; two own ``2 * bk`` rows and share each ``v`` slice); ``packed_gates``: the gates loaded one token
    a thread (``_compute_partition``); ``store_bufs``: shared buffers a consumer for the chunk states' stores (1 or 2).
    ``ValueError`` from ``check``."""
    check(k, chunk_size, bl, bk, bv, consumers, store_bufs)
    dhqk, dhhv = k.shape[-1], v.shape[-1]
    bh, nc = c_st.shape[:2]
    args = {
        "K_D": head_tiles(k, bl, bk),
        "V_D": head_tiles(v, bl, bv),
        "GATE_B": gate_b,
        "GATE_I": gate_i,
        # mLSTMexp's stabilizer needs each chunk's max of i - b on entering it: 4 MB of gates at 7B, S 8192 read
        # once here rather than a synchronous loop of loads in the kernel's serial chunk walk (sig: unused)
        "CHUNK_MAX": (gate_i - gate_b).reshape(bh, nc, chunk_size).amax(-1) if exp else gate_b,
        **dict(zip(("C0", "N0", "M0"), init or (c_last, n_st, m_st), strict=True)),
        "C_D": head_tiles(c_st, bk, bv),
        "N_ST": n_st,
        "M_ST": m_st,
        "C_LAST": c_last,
        "SP": nc * chunk_size,
        "NC": nc,
        "L": chunk_size,
        "DHQK": dhqk,
        "DHHV": dhhv,
    }
    constexprs = {
        "EXP": exp,
        "HAS_INIT": init is not None,
        "STAGES": stages,
        "CONSUMERS": consumers,
        "PACKED_GATES": packed_gates,
        "STORE_BUFS": store_bufs,
        "num_warps": 4,
    }
    return fw_states_kernel, (triton.cdiv(dhqk, consumers * bk), triton.cdiv(dhhv, bv), bh), args, constexprs


def launch_fw_states(*tensors: Any, **options: Any) -> None:
    """As ``kernels.mlstm.chunk_fw.launch_fw_states`` (same tensors and order, then ``chunk_size, exp``; no tiles):
    fills ``c_st, n_st, m_st, c_last``. Options: ``launch_args``'. CPU tensors run through ``kernels.gluon.simulator``
    (results, not timings)."""
    kernel, grid, args, constexprs = launch_args(*tensors, **options)
    intra_chunk.launch(kernel, grid, args, constexprs, tensors[0].device)
