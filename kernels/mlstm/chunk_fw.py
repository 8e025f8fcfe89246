"""TFLA forward kernels for the mLSTM (both variants; plain pointer arithmetic, no block pointers).

Layout shared by all kernels (``BH = B * NH``; ``SP = NC * L`` is S padded to whole chunks):
``q, k: (BH, S, DHQK)``, ``v, h: (BH, S, DHHV)`` in the input dtype; fp32 gate arrays ``gate_b (BH, SP)``
(``logsigmoid(f)`` summed inside each chunk, inclusive) and ``gate_i (BH, SP)`` (log input gate, ``-inf`` on
padding); chunk states ``C (BH, NC, DHQK, DHHV)`` in the state dtype (the input dtype for 16-bit inputs:
the kernels feed them to ``tl.dot`` in that dtype), fp32 ``n (BH, NC+1, DHQK)`` and ``m (BH, NC+1)``, where
index ``c`` is the state before chunk ``c`` (the last state ``C_NC`` goes to its own fp32 array); per-token fp32
``m_tok, z_tok (BH, SP)`` kept for the backward.
``EXP`` selects mLSTMexp (max-state stabilizer); otherwise mLSTMsig (``m = 0``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def fw_chunk_states_kernel(
    K,
    V,
    GATE_B,
    GATE_I,
    C0,
    N0,
    M0,
    C_ST,
    N_ST,
    M_ST,
    C_LAST,
    S,
    SP,
    NC,
    DHQK,
    DHHV,
    L: tl.constexpr,
    BL: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    EXP: tl.constexpr,
    HAS_INIT: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Inter-chunk recurrence: materialize the states every ``L`` tokens.

    Grid ``(cdiv(DHQK, BK), cdiv(DHHV, BV), BH)``. A program owns a ``BK x BV`` tile of ``C`` (and the
    ``BK`` slice of ``n``) for one head, walks the chunks in order and reads each chunk's ``k`` and ``v``
    in ``BL``-token slices. Writes ``C_ST`` at ``0..NC-1`` (in its own dtype), ``N_ST, M_ST`` at ``0..NC``
    and the last state to ``C_LAST (BH, DHQK, DHHV)`` in fp32.
    """
    pid_k, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DHQK, offs_v < DHHV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    c_tile_off = offs_k[:, None] * DHHV + offs_v[None, :]
    if HAS_INIT:
        C = tl.load(C0 + bh * DHQK * DHHV + c_tile_off, mask=mask_kv, other=0.0).to(tl.float32)
        n = tl.load(N0 + bh * DHQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    else:
        C = tl.zeros((BK, BV), dtype=tl.float32)
        n = tl.zeros((BK,), dtype=tl.float32)
    m = tl.full([], 0.0, tl.float32)
    if EXP and HAS_INIT:
        m = tl.load(M0 + bh).to(tl.float32)
    dtype = K.dtype.element_ty
    for c in range(NC):
        st = bh * (NC + 1) + c
        tl.store(C_ST + (bh * NC + c) * DHQK * DHHV + c_tile_off, C.to(C_ST.dtype.element_ty), mask=mask_kv)
        if pid_v == 0:
            tl.store(N_ST + st * DHQK + offs_k, n, mask=mask_k)
            if pid_k == 0:
                tl.store(M_ST + st, m)
        g = tl.load(GATE_B + bh * SP + c * L + L - 1)
        m_new = tl.full([], 0.0, tl.float32)
        if EXP:
            m_new = g + m
            for j in range(0, L, BL):
                offs_t = bh * SP + c * L + j + tl.arange(0, BL)
                w_log = g - tl.load(GATE_B + offs_t) + tl.load(GATE_I + offs_t)
                m_new = tl.maximum(m_new, tl.max(w_log, axis=0))
        decay = tl.exp(g + m - m_new)
        C = C * decay
        n = n * decay
        for j in range(0, L, BL):
            t = c * L + j + tl.arange(0, BL)
            w = tl.exp(g - tl.load(GATE_B + bh * SP + t) + tl.load(GATE_I + bh * SP + t) - m_new)
            mask_t = t < S
            k_tile = tl.load(
                K + (bh * S + t[:, None]) * DHQK + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0
            )
            v_tile = tl.load(
                V + (bh * S + t[:, None]) * DHHV + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0
            )
            kw = k_tile.to(tl.float32) * w[:, None]
            C += tl.dot(tl.trans(kw.to(dtype)), v_tile, input_precision=DOT_PREC)
            n += tl.sum(kw, axis=0)
        m = m_new
    st = bh * (NC + 1) + NC
    tl.store(C_LAST + bh * DHQK * DHHV + c_tile_off, C, mask=mask_kv)
    if pid_v == 0:
        tl.store(N_ST + st * DHQK + offs_k, n, mask=mask_k)
        if pid_k == 0:
            tl.store(M_ST + st, m)


@triton.jit
def fw_chunk_output_kernel(
    Q,
    K,
    V,
    GATE_B,
    GATE_I,
    C_ST,
    N_ST,
    M_ST,
    H,
    M_TOK,
    Z_TOK,
    S,
    SP,
    NC,
    DHQK,
    DHHV,
    qk_scale,
    eps,
    L: tl.constexpr,
    BQ: tl.constexpr,
    BKV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    EXP: tl.constexpr,
    NORMALIZE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    STATE_STAGES: tl.constexpr,
):
    """Intra-chunk parallel part, tiled a second time (TFLA): the chunk size is not bounded by SRAM.

    Grid ``(cdiv(DHHV, BV), NC * L / BQ, BH)``. A program owns ``BQ`` queries of one chunk and a ``BV``
    slice of the output: it adds the inter-chunk term ``q C_c`` (looping over ``BK`` slices of the head
    dim), then loops over the ``BKV`` key blocks up to the diagonal.
    ``M_TOK`` (mLSTMexp) holds each query's stabilizer, computed beforehand by ``stabilizer_per_token``, so
    the key loop needs no running max and no rescaling. Writes ``H``; the ``pid 0`` slice also writes
    ``Z_TOK`` (the normalizer before abs). ``STATE_STAGES``: pipeline stages of the loop that loads ``C_ST``.
    """
    pid_v, pid_cq, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_cq // (L // BQ)
    q_start = (pid_cq % (L // BQ)) * BQ
    t_q = c * L + q_start + tl.arange(0, BQ)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_q, mask_v = t_q < S, offs_v < DHHV
    dtype = Q.dtype.element_ty
    b_q = tl.load(GATE_B + bh * SP + t_q)
    st = bh * (NC + 1) + c

    acc = tl.zeros((BQ, BV), dtype=tl.float32)
    z = tl.zeros((BQ,), dtype=tl.float32)
    for kk in tl.range(0, DHQK, BK, num_stages=STATE_STAGES):
        offs_k = kk + tl.arange(0, BK)
        mask_k = offs_k < DHQK
        q_tile = tl.load(
            Q + (bh * S + t_q[:, None]) * DHQK + offs_k[None, :], mask=mask_q[:, None] & mask_k[None, :], other=0.0
        )
        c_tile = tl.load(
            C_ST + (bh * NC + c) * DHQK * DHHV + offs_k[:, None] * DHHV + offs_v[None, :],
            mask=mask_k[:, None] & mask_v[None, :],
            other=0.0,
        )
        acc += tl.dot(q_tile, c_tile.to(dtype), input_precision=DOT_PREC)
        n_tile = tl.load(N_ST + st * DHQK + offs_k, mask=mask_k, other=0.0)
        z += tl.sum(q_tile.to(tl.float32) * n_tile[None, :], axis=1)
    if EXP:
        m_run = tl.load(M_TOK + bh * SP + t_q)
        w_inter = qk_scale * tl.exp(b_q + tl.load(M_ST + st) - m_run)
    else:
        m_run = tl.zeros((BQ,), dtype=tl.float32)
        w_inter = qk_scale * tl.exp(b_q)
    acc = acc * w_inter[:, None]
    z = z * w_inter

    for s0 in range(0, q_start + BQ, BKV):
        t_s = c * L + s0 + tl.arange(0, BKV)
        mask_s = t_s < S
        scores = tl.zeros((BQ, BKV), dtype=tl.float32)
        for kk in range(0, DHQK, BK):
            offs_k = kk + tl.arange(0, BK)
            mask_k = offs_k < DHQK
            q_tile = tl.load(
                Q + (bh * S + t_q[:, None]) * DHQK + offs_k[None, :], mask=mask_q[:, None] & mask_k[None, :], other=0.0
            )
            k_tile = tl.load(
                K + (bh * S + t_s[:, None]) * DHQK + offs_k[None, :], mask=mask_s[:, None] & mask_k[None, :], other=0.0
            )
            scores += tl.dot(q_tile, tl.trans(k_tile), input_precision=DOT_PREC)
        log_d = b_q[:, None] - tl.load(GATE_B + bh * SP + t_s)[None, :] + tl.load(GATE_I + bh * SP + t_s)[None, :]
        log_d = tl.where(t_s[None, :] <= t_q[:, None], log_d, -float("inf"))
        p = tl.exp(log_d - m_run[:, None]) * scores * qk_scale
        z += tl.sum(p, axis=1)
        v_tile = tl.load(
            V + (bh * S + t_s[:, None]) * DHHV + offs_v[None, :], mask=mask_s[:, None] & mask_v[None, :], other=0.0
        )
        acc += tl.dot(p.to(dtype), v_tile, input_precision=DOT_PREC)

    if NORMALIZE:
        acc = acc / (tl.maximum(tl.abs(z), tl.exp(-m_run)) + eps)[:, None]
    tl.store(
        H + (bh * S + t_q[:, None]) * DHHV + offs_v[None, :],
        acc.to(H.dtype.element_ty),
        mask=mask_q[:, None] & mask_v[None, :],
    )
    if pid_v == 0:
        tl.store(Z_TOK + bh * SP + t_q, z)
