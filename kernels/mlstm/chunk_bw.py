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
    T_PART,
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

    Grid ``(cdiv(DHQK, BK), cdiv(DHHV, BV), BH)``. ``DC_ST[c]`` (``BH, NC+1, DHQK, DHHV``) is the gradient
    of the state before chunk ``c`` from every later query and the last state; ``DN_ST`` likewise.
    ``T_PART (cdiv(DHQK, BK) * cdiv(DHHV, BV), BH, NC+1)`` gets this tile's part of ``<dC_c, C_c> + <dn_c, n_c>``:
    the gradient of the log forget gates summed over all tokens from chunk ``c`` on, exact in fp32, so
    that the forget-gate gradient needs a reverse cumsum inside each chunk only (no long cancellation).
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
    t_part = T_PART + ((pid_k * tl.num_programs(1) + pid_v) * tl.num_programs(2) + bh) * (NC + 1)
    for c_rev in range(NC):
        c = NC - 1 - c_rev
        st = bh * (NC + 1) + c + 1
        tl.store(DC_ST + st * DHQK * DHHV + c_tile_off, dC, mask=mask_kv)
        c_tile = tl.load(C_ST + st * DHQK * DHHV + c_tile_off, mask=mask_kv, other=0.0)
        t_sum = tl.sum(tl.sum(dC * c_tile, axis=1), axis=0)
        if pid_v == 0:
            tl.store(DN_ST + st * DHQK + offs_k, dn, mask=mask_k)
            t_sum += tl.sum(dn * tl.load(N_ST + st * DHQK + offs_k, mask=mask_k, other=0.0), axis=0)
        tl.store(t_part + c + 1, t_sum)
        g = tl.load(GATE_B + bh * SP + c * L + L - 1)
        if EXP:
            m_c = tl.load(M_ST + st - 1)
            decay = tl.exp(g + m_c - tl.load(M_ST + st))
        else:
            m_c = tl.full([], 0.0, tl.float32)
            decay = tl.exp(g)
        dC = dC * decay
        dn = dn * decay
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
            d_num = dh_tile.to(tl.float32) * tl.load(INV_DEN + bh * SP + t)[:, None]
            dC += tl.dot(tl.trans(qw.to(dtype)), d_num.to(dtype), input_precision=DOT_PREC)
            dn += tl.sum(qw * tl.load(DZ + bh * SP + t)[:, None], axis=0)
    st = bh * (NC + 1)
    tl.store(DC_ST + st * DHQK * DHHV + c_tile_off, dC, mask=mask_kv)
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
):
    """``dq`` for ``BQ`` queries of one chunk and a ``BK`` slice of the head dim.

    Grid ``(cdiv(DHQK, BK), NC * L / BQ, BH)``. Inter term ``dN C_c^T + dz n_c``, then key blocks up to
    the diagonal: ``dq += (P * (dN v^T + dz)) k`` with ``P`` the gate matrix; ``dN`` is built over ``BV`` slices.
    Also writes this slice's part of ``q . dq`` without the diagonal (``s == t``) terms in fp32 to
    ``QDQ (cdiv(DHQK, BK), BH, SP)``: the diagonal terms cancel exactly in the forget-gate gradient,
    so leaving them out of both sums keeps their rounding out of it.
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
    for vv in range(0, DHHV, BV):
        offs_v = vv + tl.arange(0, BV)
        mask_v = offs_v < DHHV
        dh_tile = tl.load(
            DH + (bh * S + t_q[:, None]) * DHHV + offs_v[None, :], mask=mask_q[:, None] & mask_v[None, :], other=0.0
        )
        d_num = (dh_tile.to(tl.float32) * inv_den[:, None]).to(dtype)
        c_tile = tl.load(
            C_ST + st * DHQK * DHHV + offs_k[:, None] * DHHV + offs_v[None, :],
            mask=mask_k[:, None] & mask_v[None, :],
            other=0.0,
        )
        dq += tl.dot(d_num, tl.trans(c_tile.to(dtype)), input_precision=DOT_PREC)
    n_tile = tl.load(N_ST + st * DHQK + offs_k, mask=mask_k, other=0.0)
    dq = (dq + dz[:, None] * n_tile[None, :]) * w_inter[:, None]
    dq_gate = dq

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
        contrib = tl.dot(a.to(dtype), k_tile, input_precision=DOT_PREC)
        dq += contrib
        if s0 + BKV > q_start:  # block on the diagonal: the gate sum leaves out s == t
            a_off = tl.where(t_s[None, :] < t_q[:, None], a, 0.0)
            dq_gate += tl.dot(a_off.to(dtype), k_tile, input_precision=DOT_PREC)
        else:
            dq_gate += contrib
    dq = dq * qk_scale
    tl.store(
        DQ + (bh * S + t_q[:, None]) * DHQK + offs_k[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=mask_q[:, None] & mask_k[None, :],
    )
    q_tile = tl.load(
        Q + (bh * S + t_q[:, None]) * DHQK + offs_k[None, :], mask=mask_q[:, None] & mask_k[None, :], other=0.0
    )
    tl.store(
        QDQ + (pid_k * tl.num_programs(2) + bh) * SP + t_q,
        tl.sum(q_tile.to(tl.float32) * dq_gate, axis=1) * qk_scale,
    )


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
    Also writes this slice's part of ``k . dk`` in fp32 to ``KDK (cdiv(DHQK, BK), BH, SP)`` and the same
    without the diagonal (``t == s``) terms to ``KDK_OFF``.
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
    dk_gate = dk

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
        contrib = tl.dot(at.to(dtype), q_tile, input_precision=DOT_PREC)
        dk += contrib
        if q0 < s_start + BKV:  # block on the diagonal: the forget-gate sum leaves out t == s
            at_off = tl.where(t_q[None, :] > t_s[:, None], at, 0.0)
            dk_gate += tl.dot(at_off.to(dtype), q_tile, input_precision=DOT_PREC)
        else:
            dk_gate += contrib
    tl.store(
        DK + (bh * S + t_s[:, None]) * DHQK + offs_k[None, :],
        dk.to(DK.dtype.element_ty),
        mask=mask_s[:, None] & mask_k[None, :],
    )
    k_tile = tl.load(
        K + (bh * S + t_s[:, None]) * DHQK + offs_k[None, :], mask=mask_s[:, None] & mask_k[None, :], other=0.0
    )
    k32 = k_tile.to(tl.float32)
    part = (pid_k * tl.num_programs(2) + bh) * SP + t_s
    tl.store(KDK + part, tl.sum(k32 * dk, axis=1))
    tl.store(KDK_OFF + part, tl.sum(k32 * dk_gate, axis=1))


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
