"""The TFLA forward in one pass, for inference: each program walks its head's chunks in order, keeps its slice of
the state ``C`` in registers and writes the chunk's output from it, so no chunk state goes through memory.

The two-pass forward (``chunk_fw``) writes every chunk's state ``C_c (DHQK x DHHV)`` and reads it back in the output
kernel: at 7B (DHQK 256, DHHV 512, bf16) that is 256 KB a chunk and head each way, more than the chunk's ``q, k, v``
(0.5 KB a token) below a chunk of 512. A backward needs those states, so this pass serves forwards without a
gradient (``backend="fused"``; ``auto`` where ``backends.FASTEST_INFERENCE`` lists it). Its price: the sequence is
walked by one program per head and ``BV`` value columns, not split over chunks; each of the ``DHHV / BV`` programs of
a head computes the chunk's ``q k^T`` again; and the state slice (``DHQK x BV`` fp32) shares the registers with the
chunk's products. Measured (H200, S 8192, docs/performance.md v32): 2.2x the two-pass forward's time at the 7B
shape (ptxas spills there), 1.04x at the paper shape, at half its peak memory; so ``auto`` does not run it.

Layout as in ``chunk_fw``: ``q, k: (BH, S, DHQK)``, ``v, h: (BH, S, DHHV)``; fp32 gate arrays ``gate_b, gate_i
(BH, SP)`` of ``gates.gate_arrays`` (``SP = NC * L``); initial states any float dtype; last states fp32 ``C (BH,
DHQK, DHHV)``, ``n (BH, DHQK)``, ``m (BH,)``. ``EXP`` selects mLSTMexp (max-state stabilizer), else mLSTMsig.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import torch
import triton
import triton.language as tl

from kernels.mlstm.chunk_common import LOG2E, gate_matrix
from kernels.mlstm.gates import token_stabilizers
from kernels.mlstm.launch import dot_precision, head_tiles
from kernels.mlstm.tiles import KernelTiles

# BV a program, warps and stages of the one-pass kernel, the fastest of docs/performance.md v32's trials (H200, bf16,
# S 8192) by q/k head dim: up to 128 (the paper shape) and above (7B). The interpreter runs small tiles (its cost
# is per element, not per program).
FUSED_TILES = {128: KernelTiles(BV=64, num_warps=4, num_stages=2), 256: KernelTiles(BV=128, num_warps=8, num_stages=2)}
INTERPRETER_FUSED_TILES = KernelTiles(BV=32, num_warps=4, num_stages=1)
# Shared memory for the pipelined q and k tiles of all stages: beside them sit v's tiles, the state slice that
# ``q C`` reads and the output tile (7B, chunk 128, BV 128, one stage: 224 of the 227 KB, sm90_compile).
QK_RING_BYTES = 160 * 1024


@triton.jit
def fw_fused_kernel(
    Q_D,
    K_D,
    V_D,
    H_D,
    GATE_B,
    GATE_I,
    C0,
    N0,
    M0,
    C_LAST,
    N_LAST,
    M_LAST,
    SP,
    NC,
    DHQK,
    DHHV,
    qk_scale,
    eps,
    L: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    EXP: tl.constexpr,
    NORMALIZE: tl.constexpr,
    HAS_INIT: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Grid ``(cdiv(DHHV, BV), BH)``. A program owns the ``BK x BV`` slice of one head's state (``BK``: the padded
    q/k head dim, whole) and per chunk of ``L`` tokens: loads ``q, k`` (``Q_D, K_D [BH, S, DHQK]``, blocks ``[1, L,
    BK]``) and ``v`` (``V_D [BH, S, DHHV]``, ``[1, L, BV]``), writes ``h = (w_inter q C + (gated, causal q k^T) v) /
    normalizer`` through ``H_D`` (``[1, L, BV]``), then moves the state over the chunk: ``C = decay C + (k w)^T v``,
    ``n = decay n + sum(k w)``. ``C`` enters the ``q C`` product in the input dtype, as the two-pass forward's stored
    states do. Tokens past ``S`` read as zeros (their log input gate is ``-inf``: no weight) and are not written.
    The chunk loop's loads do not depend on the state, so Triton pipelines them across chunks."""
    pid_v, bh = tl.program_id(0), tl.program_id(1)
    v0 = pid_v * BV
    offs_k = tl.arange(0, BK)
    offs_v = v0 + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DHQK, offs_v < DHHV
    c_off = bh * DHQK * DHHV + offs_k[:, None] * DHHV + offs_v[None, :]
    mask_kv = mask_k[:, None] & mask_v[None, :]
    if HAS_INIT:
        C = tl.load(C0 + c_off, mask=mask_kv, other=0.0).to(tl.float32)
        n = tl.load(N0 + bh * DHQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    else:
        C = tl.zeros((BK, BV), dtype=tl.float32)
        n = tl.zeros((BK,), dtype=tl.float32)
    m = tl.full([], 0.0, tl.float32)
    if EXP and HAS_INIT:
        m = tl.load(M0 + bh).to(tl.float32)
    dtype = Q_D.dtype
    tok = tl.arange(0, L)
    causal = tok[None, :] <= tok[:, None]
    log2_scale = tl.log2(qk_scale)
    for c in range(NC):
        t0 = c * L
        b = tl.load(GATE_B + bh * SP + t0 + tok)
        col = tl.load(GATE_I + bh * SP + t0 + tok) - b  # a key's log weight, less the query's b
        g = tl.load(GATE_B + bh * SP + t0 + L - 1)
        if EXP:  # each query's stabilizer: max(b + m, max over the keys up to it of b + col)
            m_tok = token_stabilizers(b, col, m)
            m_new = tl.maximum(g + m, g + tl.max(col, axis=0))
        else:
            m_tok = tl.zeros((L,), dtype=tl.float32)
            m_new = m
        q = Q_D.load([bh, t0, 0]).reshape(L, BK)
        k = K_D.load([bh, t0, 0]).reshape(L, BK)
        v = V_D.load([bh, t0, v0]).reshape(L, BV)

        w_inter = qk_scale * tl.exp(b + m - m_tok)
        acc = tl.dot(q, C.to(dtype), input_precision=DOT_PREC) * w_inter[:, None]
        z = tl.sum(q.to(tl.float32) * n[None, :], axis=1) * w_inter
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        p = gate_matrix((b - m_tok) * LOG2E + log2_scale, col * LOG2E, causal) * scores
        z += tl.sum(p, axis=1)
        acc += tl.dot(p.to(dtype), v, input_precision=DOT_PREC)
        if NORMALIZE:
            acc = acc / (tl.maximum(tl.abs(z), tl.exp(-m_tok)) + eps)[:, None]
        H_D.store([bh, t0, v0], acc.to(dtype).reshape(1, L, BV))

        decay = tl.exp(g + m - m_new)
        kw = k.to(tl.float32) * tl.exp(g + col - m_new)[:, None]
        C = C * decay + tl.dot(tl.trans(kw.to(dtype)), v, input_precision=DOT_PREC)
        n = n * decay + tl.sum(kw, axis=0)
        m = m_new
    tl.store(C_LAST + c_off, C, mask=mask_kv)
    if pid_v == 0:
        tl.store(N_LAST + bh * DHQK + offs_k, n, mask=mask_k)
        tl.store(M_LAST + bh, m)


@functools.cache
def fused_tiles(chunk_size: int, dhqk: int, dhhv: int, interpret: bool) -> KernelTiles:
    """The one-pass kernel's tiles for a problem (``BV`` at most the padded value head dim); the chunk and the whole
    padded q/k head dim are its other tiles. Pure and cached."""
    if interpret:
        return INTERPRETER_FUSED_TILES.fit(chunk_size, dhqk, dhhv)
    t = FUSED_TILES[128 if dhqk <= 128 else 256].fit(chunk_size, dhqk, dhhv)
    qk_stage_bytes = 2 * chunk_size * triton.next_power_of_2(dhqk) * 2  # a chunk's q and k tiles, 16-bit
    if t.num_stages * qk_stage_bytes > QK_RING_BYTES:
        t = replace(t, num_stages=max(1, QK_RING_BYTES // qk_stage_bytes))
    return t


def launch_fw_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate_b: torch.Tensor,
    gate_i: torch.Tensor,
    init: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    h: torch.Tensor,
    c_last: torch.Tensor,
    n_last: torch.Tensor,
    m_last: torch.Tensor,
    chunk_size: int,
    exp: bool,
    normalize: bool,
    eps: float,
    t: KernelTiles,
) -> None:
    """``fw_fused_kernel``: writes ``h`` (shaped like ``v``) and the fp32 last states ``c_last (BH, DHQK, DHHV)``,
    ``n_last (BH, DHQK)``, ``m_last (BH,)`` from contiguous ``q, k, v`` (``BH`` heads of ``S`` tokens), the gate
    arrays and the optional initial states ``(C0, n0, m0)``. Tiles: ``t.BV`` value columns a program (the chunk
    and the whole q/k head dim are its other tiles), ``t``'s warps and stages."""
    DHQK, DHHV = q.shape[-1], v.shape[-1]
    BH, SP = gate_b.shape
    constexprs = fw_fused_constexprs(t, chunk_size, DHQK, q.dtype, exp, normalize, init is not None)
    fw_fused_kernel[(triton.cdiv(DHHV, t.BV), BH)](
        head_tiles(q, chunk_size, constexprs["BK"]),
        head_tiles(k, chunk_size, constexprs["BK"]),
        head_tiles(v, chunk_size, t.BV),
        head_tiles(h, chunk_size, t.BV),
        gate_b,
        gate_i,
        *(init or (c_last, n_last, m_last)),
        c_last,
        n_last,
        m_last,
        SP,
        SP // chunk_size,
        DHQK,
        DHHV,
        DHQK**-0.5,
        eps,
        **constexprs,
    )


def fw_fused_constexprs(
    t: KernelTiles, chunk_size: int, dhqk: int, dtype: torch.dtype, exp: bool, normalize: bool, has_init: bool
) -> dict[str, object]:
    """The compile-time arguments of a ``fw_fused_kernel`` launch, warps and stages included."""
    return dict(
        L=chunk_size,
        BK=triton.next_power_of_2(dhqk),
        BV=t.BV,
        EXP=exp,
        NORMALIZE=normalize,
        HAS_INIT=has_init,
        DOT_PREC=dot_precision(dtype),
        **t.launch(),
    )
