"""The TFLA backward's state-gradient recurrence (``kernels.mlstm.chunk_bw.bw_chunk_state_grads_kernel``) in Gluon
for Hopper, warp-specialized: ``kernels.gluon.mlstm_fw_states``' walk run backwards.

Same inputs and outputs as ``launch_bw_states``: a program's consumer warpgroups each own a ``BK x BV`` tile of the
state gradient ``dC`` (and the ``BK`` slice of ``dn``) of one head and walk the chunks from the last. A 1-warp load
partition streams each chunk's ``q`` (per consumer, its ``BK`` columns) and ``dh`` in ``BL``-token slices through a
ring of ``STAGES`` stages, and each chunk's forward state tile ``C_c`` through a ring of ``STATE_SLOTS`` (two, or
one where two consumers of 256 columns must fit). At each chunk a consumer reads ``C_c`` and writes the gradient of
the state after it into the same shared tile, which a TMA store takes out (the slot goes back to the producer once
that store has read it: no store buffers of their own, so two consumers fit with 128-token slices), decays ``dC,
dn`` over the chunk, adds its tile's part of the forget-gate gradient ``<dC, C_c> + <dn, n_c>`` to ``X_PART``, then
per slice adds ``(q a)^T dh`` (``a_t = exp(b_t + m_c - m_t) * qk_scale / den_t``; the wgmma's register operand,
``dh`` from the ring, chained asynchronously one in flight) and ``sum(q w dz)`` to ``dn``. Its global loads
(per-token gates and factors, each chunk's gate, stabilizers and ``n_c``) are issued a step before their use, as in
``mlstm_fw_states`` (v24).

float16 inputs: the per-token factors go onto ``q`` scaled to the slice's largest (fp16's exponent range;
``_add_grad_slice`` of the Triton kernel), and the product accumulates, synchronously, into ``dC`` divided by that
scale, multiplied back after: one accumulator, so that 256-column tiles fit in registers.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    tma,
    warpgroup_mma,
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
def _load_partition(Q_D, DH_D, C_D, q_bufs, dh_bufs, st_bufs, ready, empty, st_ready, st_empty, bh, k0, v0, NC, L):
    """The producer, walking the chunks from the last: chunk ``c``'s forward state tile per consumer into state slot
    ``j % STATE_SLOTS`` (``j`` the walk's step), then its ``BL``-token slices of ``dh`` and, per consumer, of its ``BK`` columns
    of ``q`` into the ring, each stage once every consumer has freed it."""
    BL: gl.constexpr = q_bufs.type.shape[2]
    BK: gl.constexpr = q_bufs.type.shape[3]
    consumers: gl.constexpr = q_bufs.type.shape[0] // dh_bufs.type.shape[0]
    n_slices = L // BL
    for j in range(NC):
        c = NC - 1 - j
        t = claim_stage(st_ready, st_empty, consumers * C_D.block_type.nbytes, j)
        for w in gl.static_range(consumers):
            compat.tma_load(C_D, [bh * NC + c, k0 + w * BK, v0], st_ready.index(t), st_bufs.index(t * consumers + w))
        for i in range(n_slices):
            s = claim_stage(ready, empty, consumers * Q_D.block_type.nbytes + DH_D.block_type.nbytes, j * n_slices + i)
            t0 = c * L + i * BL
            for w in gl.static_range(consumers):
                compat.tma_load(Q_D, [bh, t0, k0 + w * BK], ready.index(s), q_bufs.index(s * consumers + w))
            compat.tma_load(DH_D, [bh, t0, v0], ready.index(s), dh_bufs.index(s))


@gluon.jit
def _compute_partition(q_bufs, dh_bufs, st_bufs, ready, empty, st_ready, st_empty, DC_D, GATE_B, INV_DEN,
                       DZ, N_ST, M_ST, M_TOK, DC_LAST, DN_LAST, DN_ST, DC_FIRST, X_PART, bh, k_tile, v0, pid_v, NV, BH,
                       SP, NC, L, DHQK, DHHV, qk_scale, EXP: gl.constexpr, HAS_DLAST: gl.constexpr, W: gl.constexpr,
                       num_warps: gl.constexpr):  # fmt: skip
    """Consumer warpgroup ``W`` of the program (module docstring), owning the gradient's rows ``k_tile * BK`` on."""
    stages: gl.constexpr = dh_bufs.type.shape[0]
    consumers: gl.constexpr = q_bufs.type.shape[0] // stages
    state_slots: gl.constexpr = st_bufs.type.shape[0] // consumers
    BL: gl.constexpr = q_bufs.type.shape[2]
    BK: gl.constexpr = q_bufs.type.shape[3]
    BV: gl.constexpr = dh_bufs.type.shape[3]
    dtype: gl.constexpr = q_bufs.dtype
    SCALED: gl.constexpr = dtype == gl.float16
    c_layout: gl.constexpr = mma_layout(num_warps, BV)
    rows: gl.constexpr = gl.SliceLayout(1, c_layout)
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=c_layout, k_width=2)
    q_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])  # a BL x BK slice of q
    tokens: gl.constexpr = gl.SliceLayout(1, q_layout)
    # The per-token loads in flight and their factors sit one element a thread (the slice layout repeats each over 8
    # threads: 8 registers a vector and 8 times the exp at BL 128); only the two factors move into that layout.
    packed: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])

    k0 = k_tile * BK
    offs_k, mask_k, mask_kv, tile = state_tile(k0, v0, DHQK, DHHV, BK, BV, c_layout)
    if HAS_DLAST:
        dC = gl.load(DC_LAST + bh * DHQK * DHHV + tile, mask=mask_kv, other=0.0).to(gl.float32)
        dn = gl.load(DN_LAST + bh * DHQK + offs_k, mask=mask_k, other=0.0).to(gl.float32)
    else:
        dC = gl.zeros([BK, BV], gl.float32, c_layout)
        dn = gl.zeros([BK], gl.float32, rows)
    x_part = X_PART + ((k_tile * NV + pid_v) * BH + bh) * NC
    n_slices = L // BL
    n_total = NC * n_slices
    zero = gl.full([], 0.0, gl.float32)

    # Loads a step ahead (the last step fetches the first again, unused): the first slice walked (the last chunk's
    # first), and the operands of the first chunk entered.
    slice_tokens = bh * SP + gl.arange(0, BL, layout=packed)
    first = (NC - 1) * L
    b_next = gl.load(GATE_B + slice_tokens + first)
    den_next = gl.load(INV_DEN + slice_tokens + first)
    dz_next = gl.load(DZ + slice_tokens + first)
    m_tok_next = gl.zeros([BL], gl.float32, packed)
    if EXP:
        m_tok_next = gl.load(M_TOK + slice_tokens + first)
    st_next = bh * (NC + 1) + NC
    g_next = gl.load(GATE_B + bh * SP + NC * L - 1)
    n_c_next = gl.load(N_ST + (st_next - 1) * DHQK + offs_k, mask=mask_k, other=0.0)
    m_before_next = zero
    m_after_next = zero
    if EXP:
        m_before_next = gl.load(M_ST + st_next - 1)
        m_after_next = gl.load(M_ST + st_next)
    for j in range(NC):
        c = NC - 1 - j
        st = bh * (NC + 1) + c + 1
        # Chunk c's forward state tile in, reduced at once against dC (the forget-gate gradient's <dC, C_c> before
        # the decay, so no second BK x BV tile stays live), then the gradient of the state after chunk c out through
        # the same shared tile (read and written in one layout: every warp writes the rows it read). With two slots
        # the previous chunk's slot goes back to the producer once its store has read it (stores complete in order:
        # this chunk's alone pending).
        t = j % state_slots
        mbarrier.wait(st_ready.index(t), (j // state_slots) & 1)
        slot = st_bufs.index(t * consumers + W)
        dc_dot_c = gl.sum(gl.sum(dC * slot.reshape([BK, BV]).load(c_layout).to(gl.float32), axis=1), axis=0)
        store_tile(dC, slot, DC_D, st, k0, v0, state_slots - 1)
        if state_slots == 2 and j > 0:
            tma.store_wait(pendings=1)
            mbarrier.arrive(st_empty.index((j - 1) % state_slots), count=1)
        if pid_v == 0:
            gl.store(DN_ST + st * DHQK + offs_k, dn, mask=mask_k)
        g = g_next
        n_c = n_c_next
        m_before = m_before_next
        m_after = m_after_next
        st_after = bh * (NC + 1) + (c + NC - 1) % NC + 1  # the next chunk walked (chunk c - 1)
        g_next = gl.load(GATE_B + bh * SP + ((c + NC - 1) % NC) * L + L - 1)
        n_c_next = gl.load(N_ST + (st_after - 1) * DHQK + offs_k, mask=mask_k, other=0.0)
        if EXP:
            m_before_next = gl.load(M_ST + st_after - 1)
            m_after_next = gl.load(M_ST + st_after)
        # Entering chunk c: dC, dn decay over it; this tile's part of the forget-gate gradient.
        decay = gl.exp(g + m_before - m_after)
        dC = dC * decay
        dn = dn * decay
        x_sum = dc_dot_c * decay
        if pid_v == 0:
            x_sum += gl.sum(dn * n_c, axis=0)
        gl.store(x_part + c, x_sum)
        for i in range(n_slices):
            u = j * n_slices + i
            s = u % stages
            # This slice's factors, one per thread, then in the q tile's rows: w dz for dn, a = w inv_den for dC.
            w = gl.exp(b_next + m_before - m_tok_next) * qk_scale
            wdz = gl.convert_layout(w * dz_next, tokens)
            a = w * den_next
            a_max = gl.full([], 1.0, gl.float32)
            if SCALED:
                a_max = gl.max(a, axis=0)
                # a slice whose factors are all below 1e-30 goes unscaled, so that 1 / a_max stays finite: its
                # factors flush to zero in fp16, dropping terms below 1e-30 |q| |dh| from dC
                a_max = gl.where(a_max > 1e-30, a_max, 1.0)
                a = a / a_max
            a = gl.convert_layout(a, tokens)
            u1 = (u + 1) % n_total
            after = (NC - 1 - u1 // n_slices) * L + (u1 % n_slices) * BL
            b_next = gl.load(GATE_B + slice_tokens + after)
            den_next = gl.load(INV_DEN + slice_tokens + after)
            dz_next = gl.load(DZ + slice_tokens + after)
            if EXP:
                m_tok_next = gl.load(M_TOK + slice_tokens + after)
            mbarrier.wait(ready.index(s), (u // stages) & 1)
            q = q_bufs.index(s * consumers + W).reshape([BL, BK]).load(q_layout).to(gl.float32)
            dn += gl.convert_layout(gl.sum(q * wdz[:, None], axis=0), rows)
            dh = dh_bufs.index(s).reshape([BL, BV])
            qa = gl.convert_layout(gl.permute((q * a[:, None]).to(dtype), (1, 0)), a_layout)
            if SCALED:
                dC = warpgroup_mma(qa, dh, dC * (1.0 / a_max)) * a_max
                mbarrier.arrive(empty.index(s), count=1)
            else:
                dC = chain_product(qa, dh, dC, empty, u, i == 0)
            if state_slots == 1 and i == 0:
                # one slot: it goes back once the store of dC out of it has read it, the first slice's product
                # issued meanwhile; the producer then loads the next chunk's state tile while this chunk's slices run
                tma.store_wait(pendings=0)
                mbarrier.arrive(st_empty.index(0), count=1)
        if not SCALED:
            dC = drain_products(dC, empty, j * n_slices + n_slices - 1)
    tma.store_wait(pendings=0)
    store_walked_tile(DC_FIRST + bh * DHQK * DHHV, dC, offs_k, mask_k, v0, DHHV, BV, c_layout)
    if pid_v == 0:
        gl.store(DN_ST + bh * (NC + 1) * DHQK + offs_k, dn, mask=mask_k)


@gluon.jit
def bw_states_kernel(
    Q_D,
    DH_D,
    C_D,
    GATE_B,
    INV_DEN,
    DZ,
    N_ST,
    M_ST,
    M_TOK,
    DC_LAST,
    DN_LAST,
    DC_D,
    DN_ST,
    DC_FIRST,
    X_PART,
    NV,
    BH,
    SP,
    NC,
    L,
    DHQK,
    DHHV,
    qk_scale,
    EXP: gl.constexpr,
    HAS_DLAST: gl.constexpr,
    STAGES: gl.constexpr,
    CONSUMERS: gl.constexpr,
    STATE_SLOTS: gl.constexpr,
    num_warps: gl.constexpr,
):
    """Grid ``(cdiv(DHQK, CONSUMERS * BK), NV, BH)``, ``NV = cdiv(DHHV, BV)``. Descriptors over ``(heads, rows,
    cols)`` with blocks ``[1, rows, cols]``: ``Q_D`` (BL x BK over ``q``), ``DH_D`` (BL x BV over ``dh``), ``C_D``
    (BK x BV over the forward's ``BH * NC`` chunk states), ``DC_D`` (BK x BV over the ``BH * (NC + 1)`` state
    gradients, written at ``1..NC`` of a head); fp32 ``GATE_B, INV_DEN, DZ, M_TOK`` (``SP`` a head), ``N_ST, M_ST``
    (``NC + 1`` a head), ``DN_ST`` (written at ``0..NC``), ``DC_FIRST`` (the initial state's gradient), ``X_PART``
    (``CONSUMERS * cdiv(DHQK, CONSUMERS * BK) * NV`` tiles x ``BH`` x ``NC``); ``DC_LAST, DN_LAST`` the last states'
    gradients where ``HAS_DLAST``; ``STATE_SLOTS`` (1 or 2) shared slots a consumer for the ``C_D`` tiles. ``L`` (a
    multiple of ``BL``) is not a constexpr."""
    BL: gl.constexpr = Q_D.block_type.shape[1]
    BK: gl.constexpr = Q_D.block_type.shape[2]
    BV: gl.constexpr = DH_D.block_type.shape[2]
    pid_k = gl.program_id(0)
    pid_v = gl.program_id(1)
    bh = gl.program_id(2)
    v0 = pid_v * BV

    q_bufs = gl.allocate_shared_memory(Q_D.dtype, [STAGES * CONSUMERS, 1, BL, BK], Q_D.layout)
    dh_bufs = gl.allocate_shared_memory(DH_D.dtype, [STAGES, 1, BL, BV], DH_D.layout)
    st_bufs = gl.allocate_shared_memory(C_D.dtype, [STATE_SLOTS * CONSUMERS, 1, BK, BV], C_D.layout)
    fix_ready, ready, empty = ring_barriers(STAGES, CONSUMERS)
    unused, st_ready, st_empty = ring_barriers(STATE_SLOTS, CONSUMERS)

    # The partitions are written out in each branch: Gluon takes them only as literal (function, args) tuples.
    if CONSUMERS == 1:
        gl.warp_specialize(
            [
                (
                    _compute_partition,
                    (q_bufs, dh_bufs, st_bufs, ready, empty, st_ready, st_empty, DC_D, GATE_B, INV_DEN, DZ,
                     N_ST, M_ST, M_TOK, DC_LAST, DN_LAST, DN_ST, DC_FIRST, X_PART, bh, pid_k, v0, pid_v, NV, BH, SP,
                     NC, L, DHQK, DHHV, qk_scale, EXP, HAS_DLAST, 0, num_warps),
                ),
                (_load_partition, (Q_D, DH_D, C_D, q_bufs, dh_bufs, st_bufs, ready, empty, st_ready, st_empty, bh,
                                   pid_k * BK, v0, NC, L)),
            ],
            [LOAD_WARPS],
            [LOAD_REGS],
        )  # fmt: skip
    else:
        gl.warp_specialize(
            [
                (
                    _compute_partition,
                    (q_bufs, dh_bufs, st_bufs, ready, empty, st_ready, st_empty, DC_D, GATE_B, INV_DEN, DZ,
                     N_ST, M_ST, M_TOK, DC_LAST, DN_LAST, DN_ST, DC_FIRST, X_PART, bh, 2 * pid_k, v0, pid_v, NV, BH,
                     SP, NC, L, DHQK, DHHV, qk_scale, EXP, HAS_DLAST, 0, num_warps),
                ),
                (
                    _compute_partition,
                    (q_bufs, dh_bufs, st_bufs, ready, empty, st_ready, st_empty, DC_D, GATE_B, INV_DEN, DZ,
                     N_ST, M_ST, M_TOK, DC_LAST, DN_LAST, DN_ST, DC_FIRST, X_PART, bh, 2 * pid_k + 1, v0, pid_v, NV,
                     BH, SP, NC, L, DHQK, DHHV, qk_scale, EXP, HAS_DLAST, 1, num_warps),
                ),
                (_load_partition, (Q_D, DH_D, C_D, q_bufs, dh_bufs, st_bufs, ready, empty, st_ready, st_empty, bh,
                                   2 * pid_k * BK, v0, NC, L)),
            ],
            [num_warps, LOAD_WARPS],
            [CONSUMER_REGS, LOAD_REGS],
        )  # fmt: skip
    invalidate_ring(fix_ready, ready, empty)
    invalidate_ring(unused, st_ready, st_empty)


# What the sm_90 compile allocates beyond the buffers, per consumer warpgroup (its barriers and a layout
# conversion's scratch): 2096..2172 bytes at the 7B head dims with Triton 3.6 (tests/test_gluon.py checks the bound).
SCRATCH_PER_CONSUMER = 2304


def shared_bytes(
    bl: int, bv: int, stages: int, consumers: int, state_slots: int, bk: int = 64, itemsize: int = 2
) -> int:
    """An upper bound on the shared memory the kernel takes with these options: the ring's ``stages`` slices of
    ``q`` (``BL x BK`` a consumer) and ``dh`` (``BL x BV``), ``state_slots`` forward state tiles (``BK x BV``) a
    consumer, and ``SCRATCH_PER_CONSUMER``."""
    elements = stages * consumers * bl * bk + stages * bl * bv + state_slots * consumers * bk * bv
    return itemsize * elements + SCRATCH_PER_CONSUMER * consumers


def launch_args(
    q: Any,
    dh: Any,
    gate_b: Any,
    inv_den: Any,
    dz: Any,
    c_st: Any,
    n_st: Any,
    m_st: Any,
    m_tok: Any,
    dc_last: Any,
    dn_last: Any,
    dc_st: Any,
    dn_st: Any,
    dc_first: Any,
    has_dlast: bool,
    chunk_size: int,
    exp: bool,
    bl: int = 128,
    bk: int = 64,
    bv: int = 128,
    stages: int = 2,
    consumers: int = 2,
    state_slots: int = 2,
) -> tuple[Any, tuple[int, int, int], dict[str, Any], dict[str, Any]]:
    """What ``launch_bw_states`` launches on the tensors ``kernels.mlstm.chunk_bw.launch_bw_states`` takes (in its
    order; no tiles): the kernel, its grid, its runtime arguments (``X_PART`` allocated here) and its constexprs, by
    name. Options as ``mlstm_fw_states.launch_args``' (``state_walk.check``); ``state_slots``: shared slots a consumer
    for the forward state tiles (1 or 2; two let the next chunk's tile load while this one's slot stores ``dC``).
    ``ValueError`` from ``state_walk.check``."""
    state_walk.check(q, chunk_size, bl, bk, bv, consumers, "bw_states", state_slots=state_slots)
    dhqk, dhhv = q.shape[-1], dh.shape[-1]
    bh, nc = c_st.shape[:2]
    grid = (triton.cdiv(dhqk, consumers * bk), triton.cdiv(dhhv, bv), bh)
    args = {
        "Q_D": head_tiles(q, bl, bk),
        "DH_D": head_tiles(dh, bl, bv),
        "C_D": head_tiles(c_st, bk, bv),
        "GATE_B": gate_b,
        "INV_DEN": inv_den,
        "DZ": dz,
        "N_ST": n_st,
        "M_ST": m_st,
        "M_TOK": m_tok,
        "DC_LAST": dc_last,
        "DN_LAST": dn_last,
        "DC_D": head_tiles(dc_st, bk, bv),
        "DN_ST": dn_st,
        "DC_FIRST": dc_first,
        "X_PART": torch.empty(consumers * grid[0] * grid[1], bh, nc, dtype=torch.float32, device=q.device),
        "NV": grid[1],
        "BH": bh,
        "SP": nc * chunk_size,
        "NC": nc,
        "L": chunk_size,
        "DHQK": dhqk,
        "DHHV": dhhv,
        "qk_scale": dhqk**-0.5,
    }
    constexprs = {
        "EXP": exp,
        "HAS_DLAST": has_dlast,
        "STAGES": stages,
        "CONSUMERS": consumers,
        "STATE_SLOTS": state_slots,
        "num_warps": 4,
    }
    return bw_states_kernel, grid, args, constexprs


def launch_bw_states(*tensors: Any, **options: Any) -> Any:
    """As ``kernels.mlstm.chunk_bw.launch_bw_states`` (same tensors and order, then ``has_dlast, chunk_size, exp``;
    no tiles): fills ``dc_st, dn_st, dc_first`` and returns the fp32 partial sums ``x_part (tiles, BH, NC)`` of the
    forget gates' gradient. Options: ``launch_args``'. CPU tensors run through ``kernels.gluon.simulator``."""
    kernel, grid, args, constexprs = launch_args(*tensors, **options)
    intra_chunk.launch(kernel, grid, args, constexprs, tensors[0].device)
    return args["X_PART"]
