"""TFLA backward kernels for the mLSTM (layout as in ``chunk_fw``).

The output gradient enters as ``dh (BH, S, DHHV)`` with two per-token fp32 arrays prepared by the
wrapper: ``inv_den (BH, SP)`` (so that ``dN_t = dh_t * inv_den_t`` is the gradient of the numerator)
and ``dz (BH, SP)`` (the gradient of the normalizer ``Z_t``); both are 0 on padding. The stabilizer
``m`` carries no gradient. Gate gradients are formed afterwards from ``q.dq`` and ``k.dk``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def row_dot_kernel(A, B, OUT, R, D, BR: tl.constexpr, BD: tl.constexpr):
    """``OUT[r] = sum_d A[r, d] * B[r, d]`` in fp32 for row-major ``A, B (R, D)``; grid ``cdiv(R, BR)``.

    Used for ``dh . h`` per token (the normalizer's gradient) without fp32 copies of ``dh`` and ``h``.
    """
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    mask_r = rows < R
    acc = tl.zeros((BR,), dtype=tl.float32)
    for d0 in range(0, D, BD):
        offs = d0 + tl.arange(0, BD)
        mask = mask_r[:, None] & (offs < D)[None, :]
        a = tl.load(A + rows[:, None] * D + offs[None, :], mask=mask, other=0.0).to(tl.float32)
        b = tl.load(B + rows[:, None] * D + offs[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(a * b, axis=1)
    tl.store(OUT + rows, acc, mask=mask_r)


@triton.jit
def bw_chunk_state_grads_kernel(
    Q,
    DH,
    GATE_B,
    INV_DEN,
    DZ,
    C_ST,
    N_ST,
    M_ST,
    M_TOK,
    DC_LAST,
    DN_LAST,
    DC_ST,
    DN_ST,
    DC_FIRST,
    X_PART,
    S,
    SP,
    NC,
    DHQK,
    DHHV,
    qk_scale,
    L: tl.constexpr,
    BL: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    EXP: tl.constexpr,
    HAS_DLAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Reverse inter-chunk recurrence for the state gradients.

    Grid ``(cdiv(DHQK, BK), cdiv(DHHV, BV), BH)``. ``DC_ST[c]`` (``BH, NC+1, DHQK, DHHV``, input dtype, written
    for ``c = 1..NC``) is the gradient of the state before chunk ``c`` from every later query and the last
    state; ``DN_ST`` (fp32) likewise, ``c = 0..NC``. The gradient of the initial state goes to ``DC_FIRST
    (BH, DHQK, DHHV)`` in fp32.
    ``X_PART (cdiv(DHQK, BK) * cdiv(DHHV, BV), BH, NC)`` gets this tile's part of
    ``<dC_{c+1}, a_c C_c> + <dn_{c+1}, a_c n_c>`` (``a_c`` the decay over chunk ``c``): the forget-gate
    gradient of every (query after chunk ``c``, key before it) pair, summed exactly in fp32.
    """
    pid_k, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DHQK, offs_v < DHHV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    c_tile_off = offs_k[:, None] * DHHV + offs_v[None, :]
    if HAS_DLAST:
        dC = tl.load(DC_LAST + bh * DHQK * DHHV + c_tile_off, mask=mask_kv, other=0.0).to(tl.float32)
        dn = tl.load(DN_LAST + bh * DHQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    else:
        dC = tl.zeros((BK, BV), dtype=tl.float32)
        dn = tl.zeros((BK,), dtype=tl.float32)
    dtype = Q.dtype.element_ty
    x_part = X_PART + ((pid_k * tl.num_programs(1) + pid_v) * tl.num_programs(2) + bh) * NC
    for c_rev in range(NC):
        c = NC - 1 - c_rev
        st = bh * (NC + 1) + c + 1
        tl.store(DC_ST + st * DHQK * DHHV + c_tile_off, dC.to(DC_ST.dtype.element_ty), mask=mask_kv)
        if pid_v == 0:
            tl.store(DN_ST + st * DHQK + offs_k, dn, mask=mask_k)
        g = tl.load(GATE_B + bh * SP + c * L + L - 1)
        if EXP:
            m_c = tl.load(M_ST + st - 1)
            decay = tl.exp(g + m_c - tl.load(M_ST + st))
        else:
            m_c = tl.full([], 0.0, tl.float32)
            decay = tl.exp(g)
        dC = dC * decay
        dn = dn * decay
        c_tile = tl.load(C_ST + (bh * NC + c) * DHQK * DHHV + c_tile_off, mask=mask_kv, other=0.0).to(tl.float32)
        x_sum = tl.sum(tl.sum(dC * c_tile, axis=1), axis=0)
        if pid_v == 0:
            x_sum += tl.sum(dn * tl.load(N_ST + (st - 1) * DHQK + offs_k, mask=mask_k, other=0.0), axis=0)
        tl.store(x_part + c, x_sum)
        for j in range(0, L, BL):
            t = c * L + j + tl.arange(0, BL)
            mask_t = t < S
            m_t = tl.load(M_TOK + bh * SP + t) if EXP else 0.0
            w = tl.exp(tl.load(GATE_B + bh * SP + t) + m_c - m_t) * qk_scale
            q_tile = tl.load(
                Q + (bh * S + t[:, None]) * DHQK + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0
            )
            dh_tile = tl.load(
                DH + (bh * S + t[:, None]) * DHHV + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0
            )
            qw = q_tile.to(tl.float32) * w[:, None]
            inv_den = tl.load(INV_DEN + bh * SP + t)
            if dtype == tl.float16:
                # fp16's exponent range: a forgotten state's weights (e^-30 and less) and the inverse
                # normalizer of a token whose stabilizer is far below 0 (e^-12 and less) would flush to 0 or to
                # subnormals in the operands. Both per-token factors go onto q, scaled to the slice's largest
                # product and scaled back in fp32; dh enters as it is.
                a = w * inv_den
                a_max = tl.max(a, axis=0)
                a_max = tl.where(a_max > 0, a_max, 1.0)
                qa = q_tile.to(tl.float32) * (a / a_max)[:, None]
                dC += tl.dot(tl.trans(qa.to(dtype)), dh_tile, input_precision=DOT_PREC) * a_max
            else:
                d_num = dh_tile.to(tl.float32) * inv_den[:, None]
                dC += tl.dot(tl.trans(qw.to(dtype)), d_num.to(dtype), input_precision=DOT_PREC)
            dn += tl.sum(qw * tl.load(DZ + bh * SP + t)[:, None], axis=0)
    st = bh * (NC + 1)
    tl.store(DC_FIRST + bh * DHQK * DHHV + c_tile_off, dC, mask=mask_kv)
    if pid_v == 0:
        tl.store(DN_ST + st * DHQK + offs_k, dn, mask=mask_k)


@triton.jit
def bw_chunk_dq_kernel(
    Q,
    K,
    V,
    DH,
    GATE_B,
    GATE_I,
    INV_DEN,
    DZ,
    C_ST,
    N_ST,
    M_ST,
    M_TOK,
    DQ,
    QDQ,
    S,
    SP,
    NC,
    DHQK,
    DHHV,
    qk_scale,
    L: tl.constexpr,
    BQ: tl.constexpr,
    BKV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    EXP: tl.constexpr,
    DOT_PREC: tl.constexpr,
    STATE_STAGES: tl.constexpr,
):
    """``dq`` for ``BQ`` queries of one chunk and a ``BK`` slice of the head dim.

    Grid ``(cdiv(DHQK, BK), NC * L / BQ, BH)``. Inter term ``dN C_c^T + dz n_c``, then key blocks up to
    the diagonal: ``dq += (P * (dN v^T + dz)) k`` with ``P`` the gate matrix; ``dN`` is built over ``BV`` slices.
    Also writes this slice's part of ``q . dq`` without the diagonal (``s == t``) terms to
    ``QDQ (cdiv(DHQK, BK), BH, SP)``; its intra-chunk part is summed in fp32 from the gate matrix and the
    slice's scores (not from the ``dq`` tile, whose operands are rounded to the input dtype), so that it
    cancels against the same sum of the ``dk`` kernel to fp32 accuracy in the forget-gate gradient.
    ``STATE_STAGES``: pipeline stages of the loop that loads ``C_ST``.
    """
    pid_k, pid_cq, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_cq // (L // BQ)
    q_start = (pid_cq % (L // BQ)) * BQ
    t_q = c * L + q_start + tl.arange(0, BQ)
    offs_k = pid_k * BK + tl.arange(0, BK)
    mask_q, mask_k = t_q < S, offs_k < DHQK
    dtype = Q.dtype.element_ty
    st = bh * (NC + 1) + c
    b_q = tl.load(GATE_B + bh * SP + t_q)
    inv_den = tl.load(INV_DEN + bh * SP + t_q)
    dz = tl.load(DZ + bh * SP + t_q)
    if EXP:
        m_q = tl.load(M_TOK + bh * SP + t_q)
        w_inter = tl.exp(b_q + tl.load(M_ST + st) - m_q)
    else:
        m_q = tl.zeros((BQ,), dtype=tl.float32)
        w_inter = tl.exp(b_q)

    dq = tl.zeros((BQ, BK), dtype=tl.float32)
    for vv in tl.range(0, DHHV, BV, num_stages=STATE_STAGES):
        offs_v = vv + tl.arange(0, BV)
        mask_v = offs_v < DHHV
        dh_tile = tl.load(
            DH + (bh * S + t_q[:, None]) * DHHV + offs_v[None, :], mask=mask_q[:, None] & mask_v[None, :], other=0.0
        )
        d_num = (dh_tile.to(tl.float32) * inv_den[:, None]).to(dtype)
        c_tile = tl.load(
            C_ST + (bh * NC + c) * DHQK * DHHV + offs_k[:, None] * DHHV + offs_v[None, :],
            mask=mask_k[:, None] & mask_v[None, :],
            other=0.0,
        )
        dq += tl.dot(d_num, tl.trans(c_tile.to(dtype)), input_precision=DOT_PREC)
    n_tile = tl.load(N_ST + st * DHQK + offs_k, mask=mask_k, other=0.0)
    dq = (dq + dz[:, None] * n_tile[None, :]) * w_inter[:, None]
    q_tile = tl.load(
        Q + (bh * S + t_q[:, None]) * DHQK + offs_k[None, :], mask=mask_q[:, None] & mask_k[None, :], other=0.0
    )
    qdq = tl.sum(q_tile.to(tl.float32) * dq, axis=1)

    for s0 in range(0, q_start + BQ, BKV):
        t_s = c * L + s0 + tl.arange(0, BKV)
        mask_s = t_s < S
        dp = tl.zeros((BQ, BKV), dtype=tl.float32)
        for vv in range(0, DHHV, BV):
            offs_v = vv + tl.arange(0, BV)
            mask_v = offs_v < DHHV
            dh_tile = tl.load(
                DH + (bh * S + t_q[:, None]) * DHHV + offs_v[None, :], mask=mask_q[:, None] & mask_v[None, :], other=0.0
            )
            d_num = (dh_tile.to(tl.float32) * inv_den[:, None]).to(dtype)
            v_tile = tl.load(
                V + (bh * S + t_s[:, None]) * DHHV + offs_v[None, :], mask=mask_s[:, None] & mask_v[None, :], other=0.0
            )
            dp += tl.dot(d_num, tl.trans(v_tile), input_precision=DOT_PREC)
        log_d = b_q[:, None] - tl.load(GATE_B + bh * SP + t_s)[None, :] + tl.load(GATE_I + bh * SP + t_s)[None, :]
        log_d = tl.where(t_s[None, :] <= t_q[:, None], log_d, -float("inf"))
        a = tl.exp(log_d - m_q[:, None]) * (dp + dz[:, None])
        k_tile = tl.load(
            K + (bh * S + t_s[:, None]) * DHQK + offs_k[None, :], mask=mask_s[:, None] & mask_k[None, :], other=0.0
        )
        dq += tl.dot(a.to(dtype), k_tile, input_precision=DOT_PREC)
        scores = tl.dot(q_tile, tl.trans(k_tile), input_precision=DOT_PREC)
        qdq += tl.sum(tl.where(t_s[None, :] < t_q[:, None], a * scores, 0.0), axis=1)
    tl.store(
        DQ + (bh * S + t_q[:, None]) * DHQK + offs_k[None, :],
        (dq * qk_scale).to(DQ.dtype.element_ty),
        mask=mask_q[:, None] & mask_k[None, :],
    )
    tl.store(QDQ + (pid_k * tl.num_programs(2) + bh) * SP + t_q, qdq * qk_scale)


@triton.jit
def bw_chunk_dk_kernel(
    Q,
    K,
    V,
    DH,
    GATE_B,
    GATE_I,
    INV_DEN,
    DZ,
    DC_ST,
    DN_ST,
    M_ST,
    M_TOK,
    DK,
    KDK,
    KDK_INTER,
    KDK_OFF,
    S,
    SP,
    NC,
    DHQK,
    DHHV,
    qk_scale,
    L: tl.constexpr,
    BQ: tl.constexpr,
    BKV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    EXP: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """``dk`` for ``BKV`` keys of one chunk and a ``BK`` slice of the head dim.

    Grid ``(cdiv(DHQK, BK), NC * L / BKV, BH)``. Inter term from the next state's gradient
    ``w_s (dC_{c+1} v_s + dn_{c+1})``, then query blocks from the diagonal to the chunk end.
    Also writes this slice's parts of ``k . dk`` (each ``(cdiv(DHQK, BK), BH, SP)``, fp32): ``KDK`` all of
    it, ``KDK_INTER`` the term from later chunks, ``KDK_OFF`` the intra-chunk term without the diagonal
    (``t == s``), summed from the gate matrix and the slice's scores as in the ``dq`` kernel.
    """
    pid_k, pid_cs, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_cs // (L // BKV)
    s_start = (pid_cs % (L // BKV)) * BKV
    t_s = c * L + s_start + tl.arange(0, BKV)
    offs_k = pid_k * BK + tl.arange(0, BK)
    mask_s, mask_k = t_s < S, offs_k < DHQK
    dtype = Q.dtype.element_ty
    st = bh * (NC + 1) + c + 1
    b_s = tl.load(GATE_B + bh * SP + t_s)
    i_s = tl.load(GATE_I + bh * SP + t_s)
    g = tl.load(GATE_B + bh * SP + c * L + L - 1)
    m_next = tl.load(M_ST + st) if EXP else 0.0
    w_inter = tl.exp(g - b_s + i_s - m_next)

    dk = tl.zeros((BKV, BK), dtype=tl.float32)
    for vv in range(0, DHHV, BV):
        offs_v = vv + tl.arange(0, BV)
        mask_v = offs_v < DHHV
        v_tile = tl.load(
            V + (bh * S + t_s[:, None]) * DHHV + offs_v[None, :], mask=mask_s[:, None] & mask_v[None, :], other=0.0
        )
        dc_tile = tl.load(
            DC_ST + st * DHQK * DHHV + offs_k[:, None] * DHHV + offs_v[None, :],
            mask=mask_k[:, None] & mask_v[None, :],
            other=0.0,
        )
        dk += tl.dot(v_tile, tl.trans(dc_tile.to(dtype)), input_precision=DOT_PREC)
    dn_tile = tl.load(DN_ST + st * DHQK + offs_k, mask=mask_k, other=0.0)
    dk = (dk + dn_tile[None, :]) * w_inter[:, None]
    k_tile = tl.load(
        K + (bh * S + t_s[:, None]) * DHQK + offs_k[None, :], mask=mask_s[:, None] & mask_k[None, :], other=0.0
    )
    kdk_inter = tl.sum(k_tile.to(tl.float32) * dk, axis=1)
    kdk_diag = tl.zeros((BKV,), dtype=tl.float32)
    kdk_off = tl.zeros((BKV,), dtype=tl.float32)

    for q0 in range((s_start // BQ) * BQ, L, BQ):
        t_q = c * L + q0 + tl.arange(0, BQ)
        mask_q = t_q < S
        inv_den = tl.load(INV_DEN + bh * SP + t_q)
        dpt = tl.zeros((BKV, BQ), dtype=tl.float32)
        for vv in range(0, DHHV, BV):
            offs_v = vv + tl.arange(0, BV)
            mask_v = offs_v < DHHV
            v_tile = tl.load(
                V + (bh * S + t_s[:, None]) * DHHV + offs_v[None, :], mask=mask_s[:, None] & mask_v[None, :], other=0.0
            )
            dh_tile = tl.load(
                DH + (bh * S + t_q[:, None]) * DHHV + offs_v[None, :], mask=mask_q[:, None] & mask_v[None, :], other=0.0
            )
            d_num = (dh_tile.to(tl.float32) * inv_den[:, None]).to(dtype)
            dpt += tl.dot(v_tile, tl.trans(d_num), input_precision=DOT_PREC)
        m_q = tl.load(M_TOK + bh * SP + t_q) if EXP else tl.zeros((BQ,), dtype=tl.float32)
        log_dt = tl.load(GATE_B + bh * SP + t_q)[None, :] - b_s[:, None] + i_s[:, None] - m_q[None, :]
        log_dt = tl.where(t_q[None, :] >= t_s[:, None], log_dt, -float("inf"))
        at = tl.exp(log_dt) * (dpt + tl.load(DZ + bh * SP + t_q)[None, :]) * qk_scale
        q_tile = tl.load(
            Q + (bh * S + t_q[:, None]) * DHQK + offs_k[None, :], mask=mask_q[:, None] & mask_k[None, :], other=0.0
        )
        dk += tl.dot(at.to(dtype), q_tile, input_precision=DOT_PREC)
        d_gate = at * tl.dot(k_tile, tl.trans(q_tile), input_precision=DOT_PREC)
        kdk_off += tl.sum(tl.where(t_q[None, :] > t_s[:, None], d_gate, 0.0), axis=1)
        kdk_diag += tl.sum(tl.where(t_q[None, :] == t_s[:, None], d_gate, 0.0), axis=1)
    tl.store(
        DK + (bh * S + t_s[:, None]) * DHQK + offs_k[None, :],
        dk.to(DK.dtype.element_ty),
        mask=mask_s[:, None] & mask_k[None, :],
    )
    part = (pid_k * tl.num_programs(2) + bh) * SP + t_s
    tl.store(KDK + part, kdk_inter + kdk_off + kdk_diag)
    tl.store(KDK_INTER + part, kdk_inter)
    tl.store(KDK_OFF + part, kdk_off)


@triton.jit
def bw_chunk_dv_kernel(
    Q,
    K,
    DH,
    GATE_B,
    GATE_I,
    INV_DEN,
    DC_ST,
    M_ST,
    M_TOK,
    DV,
    S,
    SP,
    NC,
    DHQK,
    DHHV,
    qk_scale,
    L: tl.constexpr,
    BQ: tl.constexpr,
    BKV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    EXP: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """``dv`` for ``BKV`` keys of one chunk and a ``BV`` slice of the value head dim.

    Grid ``(cdiv(DHHV, BV), NC * L / BKV, BH)``. Inter term ``w_s dC_{c+1}^T k_s``, then query blocks from
    the diagonal: ``dv += (P * q k^T)^T dN`` with the scores built over ``BK`` slices.
    """
    pid_v, pid_cs, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_cs // (L // BKV)
    s_start = (pid_cs % (L // BKV)) * BKV
    t_s = c * L + s_start + tl.arange(0, BKV)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_s, mask_v = t_s < S, offs_v < DHHV
    dtype = Q.dtype.element_ty
    st = bh * (NC + 1) + c + 1
    b_s = tl.load(GATE_B + bh * SP + t_s)
    i_s = tl.load(GATE_I + bh * SP + t_s)
    g = tl.load(GATE_B + bh * SP + c * L + L - 1)
    m_next = tl.load(M_ST + st) if EXP else 0.0
    w_inter = tl.exp(g - b_s + i_s - m_next)

    dv = tl.zeros((BKV, BV), dtype=tl.float32)
    for kk in range(0, DHQK, BK):
        offs_k = kk + tl.arange(0, BK)
        mask_k = offs_k < DHQK
        k_tile = tl.load(
            K + (bh * S + t_s[:, None]) * DHQK + offs_k[None, :], mask=mask_s[:, None] & mask_k[None, :], other=0.0
        )
        dc_tile = tl.load(
            DC_ST + st * DHQK * DHHV + offs_k[:, None] * DHHV + offs_v[None, :],
            mask=mask_k[:, None] & mask_v[None, :],
            other=0.0,
        )
        dv += tl.dot(k_tile, dc_tile.to(dtype), input_precision=DOT_PREC)
    dv = dv * w_inter[:, None]

    for q0 in range((s_start // BQ) * BQ, L, BQ):
        t_q = c * L + q0 + tl.arange(0, BQ)
        mask_q = t_q < S
        st_scores = tl.zeros((BKV, BQ), dtype=tl.float32)
        for kk in range(0, DHQK, BK):
            offs_k = kk + tl.arange(0, BK)
            mask_k = offs_k < DHQK
            k_tile = tl.load(
                K + (bh * S + t_s[:, None]) * DHQK + offs_k[None, :], mask=mask_s[:, None] & mask_k[None, :], other=0.0
            )
            q_tile = tl.load(
                Q + (bh * S + t_q[:, None]) * DHQK + offs_k[None, :], mask=mask_q[:, None] & mask_k[None, :], other=0.0
            )
            st_scores += tl.dot(k_tile, tl.trans(q_tile), input_precision=DOT_PREC)
        m_q = tl.load(M_TOK + bh * SP + t_q) if EXP else tl.zeros((BQ,), dtype=tl.float32)
        log_dt = tl.load(GATE_B + bh * SP + t_q)[None, :] - b_s[:, None] + i_s[:, None] - m_q[None, :]
        log_dt = tl.where(t_q[None, :] >= t_s[:, None], log_dt, -float("inf"))
        pt = tl.exp(log_dt) * st_scores * qk_scale
        dh_tile = tl.load(
            DH + (bh * S + t_q[:, None]) * DHHV + offs_v[None, :], mask=mask_q[:, None] & mask_v[None, :], other=0.0
        )
        d_num = (dh_tile.to(tl.float32) * tl.load(INV_DEN + bh * SP + t_q)[:, None]).to(dtype)
        dv += tl.dot(pt.to(dtype), d_num, input_precision=DOT_PREC)
    tl.store(
        DV + (bh * S + t_s[:, None]) * DHHV + offs_v[None, :],
        dv.to(DV.dtype.element_ty),
        mask=mask_s[:, None] & mask_v[None, :],
    )
