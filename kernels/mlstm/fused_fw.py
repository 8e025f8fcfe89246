"""Fused TFLA forward for inference: one kernel, chunk states kept in registers, never written to HBM.

Same layout and gate arrays as ``chunk_fw`` (``q, k: (BH, S, DHQK)``, ``v, h: (BH, S, DHHV)``, fp32
``gate_b, gate_i (BH, SP)``). A program owns one head and a ``BV`` slice of the value dim and walks the chunks
in order: per chunk it computes the output from the carried state and the chunk's own keys (the same
arithmetic as ``fw_chunk_output_kernel`` with the whole chunk as one query tile), then advances the state
(as ``fw_chunk_states_kernel``). Nothing is saved for a backward pass; the two-kernel path does that.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _hi_lo_columns(x, dtype: tl.constexpr):
    """``(N,)`` fp32 -> ``(N, 16)`` in ``dtype``: column 0 is ``x`` rounded, column 1 its rounding error, the
    rest zeros. A ``tl.dot`` with it, summed over the columns, is a matrix-vector product with ~16-bit
    accurate weights that keeps the other operand a pure dot operand (no fp32 copy of a whole tile)."""
    hi = x.to(dtype)
    lo = (x - hi.to(tl.float32)).to(dtype)
    col = tl.arange(0, 16)[None, :]
    return tl.where(col == 0, hi[:, None], tl.where(col == 1, lo[:, None], 0.0)).to(dtype)


@triton.jit
def fw_fused_kernel(
    Q,
    K,
    V,
    GATE_B,
    GATE_I,
    C0,
    N0,
    M0,
    H,
    C_LAST,
    N_LAST,
    M_LAST,
    S,
    SP,
    NC,
    DHQK,
    DHHV,
    qk_scale,
    eps,
    L: tl.constexpr,
    BQ: tl.constexpr,
    BKF: tl.constexpr,
    BV: tl.constexpr,
    EXP: tl.constexpr,
    NORMALIZE: tl.constexpr,
    HAS_INIT: tl.constexpr,
    LAST_STATES: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Grid ``(cdiv(DHHV, BV), BH)``; ``BKF`` covers the whole padded q/k head dim, ``L`` is the chunk, split
    into ``BQ``-token blocks for queries and keys (register use does not grow with the chunk).

    Carries ``C (BKF x BV)``, ``n (BKF)`` in fp32 and ``m`` (mLSTMexp's stabilizer, 0 for mLSTMsig).
    Writes ``H`` and, with ``LAST_STATES``, the last states ``C_LAST (BH, DHQK, DHHV)``, ``N_LAST (BH, DHQK)``,
    ``M_LAST (BH)`` (``n`` is only carried when the normalizer or the last states need it).
    """
    pid_v, bh = tl.program_id(0), tl.program_id(1)
    offs_k = tl.arange(0, BKF)
    offs_v = pid_v * BV + tl.arange(0, BV)
    offs_b = tl.arange(0, BQ)
    mask_k, mask_v = offs_k < DHQK, offs_v < DHHV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    c_off = bh * DHQK * DHHV + offs_k[:, None] * DHHV + offs_v[None, :]
    if HAS_INIT:
        C = tl.load(C0 + c_off, mask=mask_kv, other=0.0).to(tl.float32)
        n = tl.load(N0 + bh * DHQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    else:
        C = tl.zeros((BKF, BV), dtype=tl.float32)
        n = tl.zeros((BKF,), dtype=tl.float32)
    m = tl.full([], 0.0, tl.float32)
    if EXP and HAS_INIT:
        m = tl.load(M0 + bh).to(tl.float32)
    dtype = Q.dtype.element_ty
    for c in range(NC):
        g = tl.load(GATE_B + bh * SP + c * L + L - 1)
        c_op = C.to(dtype)
        if NORMALIZE:
            n_op = _hi_lo_columns(n, dtype)
        # mLSTMexp: running max of i_s - b_s over the key blocks done so far (m_t = b_t + max(m, that)).
        run = tl.full([], -float("inf"), tl.float32)
        for q0 in range(0, L, BQ):
            t_q = c * L + q0 + offs_b
            mask_q = t_q < S
            b_q = tl.load(GATE_B + bh * SP + t_q)
            q = tl.load(
                Q + (bh * S + t_q[:, None]) * DHQK + offs_k[None, :], mask=mask_q[:, None] & mask_k[None, :], other=0.0
            )
            if EXP:
                i_q = tl.load(GATE_I + bh * SP + t_q)
                diag = offs_b[None, :] <= offs_b[:, None]
                within = tl.max(tl.where(diag, (i_q - b_q)[None, :], -float("inf")), axis=1)
                m_tok = b_q + tl.maximum(m, tl.maximum(run, within))
                run = tl.maximum(run, tl.max(i_q - b_q, axis=0))
            else:
                m_tok = tl.zeros((BQ,), dtype=tl.float32)
            w_inter = qk_scale * tl.exp(b_q + m - m_tok)
            acc = tl.dot(q, c_op, input_precision=DOT_PREC) * w_inter[:, None]
            if NORMALIZE:
                z = tl.sum(tl.dot(q, n_op, input_precision=DOT_PREC), axis=1) * w_inter
            for s0 in range(0, q0 + BQ, BQ):
                t_s = c * L + s0 + offs_b
                mask_s = t_s < S
                k = tl.load(
                    K + (bh * S + t_s[:, None]) * DHQK + offs_k[None, :],
                    mask=mask_s[:, None] & mask_k[None, :],
                    other=0.0,
                )
                v = tl.load(
                    V + (bh * S + t_s[:, None]) * DHHV + offs_v[None, :],
                    mask=mask_s[:, None] & mask_v[None, :],
                    other=0.0,
                )
                log_d = (
                    b_q[:, None] - tl.load(GATE_B + bh * SP + t_s)[None, :] + tl.load(GATE_I + bh * SP + t_s)[None, :]
                )
                log_d = tl.where(t_s[None, :] <= t_q[:, None], log_d, -float("inf"))
                p = tl.exp(log_d - m_tok[:, None]) * tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
                acc += tl.dot(p.to(dtype), v, input_precision=DOT_PREC)
                if NORMALIZE:
                    z += tl.sum(p, axis=1)
            if NORMALIZE:
                acc = acc / (tl.maximum(tl.abs(z), tl.exp(-m_tok)) + eps)[:, None]
            tl.store(
                H + (bh * S + t_q[:, None]) * DHHV + offs_v[None, :],
                acc.to(H.dtype.element_ty),
                mask=mask_q[:, None] & mask_v[None, :],
            )

        # State after this chunk (fw_chunk_states_kernel's update); its keys are read once more (from L2).
        m_new = tl.full([], 0.0, tl.float32)
        if EXP:
            m_new = tl.maximum(g + m, g + run)
        decay = tl.exp(g + m - m_new)
        C = C * decay
        if NORMALIZE or LAST_STATES:
            n = n * decay
        for s0 in range(0, L, BQ):
            t_s = c * L + s0 + offs_b
            mask_s = t_s < S
            w = tl.exp(g - tl.load(GATE_B + bh * SP + t_s) + tl.load(GATE_I + bh * SP + t_s) - m_new)
            k = tl.load(
                K + (bh * S + t_s[:, None]) * DHQK + offs_k[None, :], mask=mask_s[:, None] & mask_k[None, :], other=0.0
            )
            v = tl.load(
                V + (bh * S + t_s[:, None]) * DHHV + offs_v[None, :], mask=mask_s[:, None] & mask_v[None, :], other=0.0
            )
            # The key weights go on v (BQ x BV), not on k: k stays a pure dot operand.
            C += tl.dot(tl.trans(k), (v.to(tl.float32) * w[:, None]).to(dtype), input_precision=DOT_PREC)
            if NORMALIZE or LAST_STATES:
                n += tl.sum(tl.dot(tl.trans(k), _hi_lo_columns(w, dtype), input_precision=DOT_PREC), axis=1)
        m = m_new
    if LAST_STATES:
        tl.store(C_LAST + c_off, C, mask=mask_kv)
        if pid_v == 0:
            tl.store(N_LAST + bh * DHQK + offs_k, n, mask=mask_k)
            tl.store(M_LAST + bh, m)
