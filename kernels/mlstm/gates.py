"""Per-token gate and normalizer arithmetic of the TFLA mLSTM, one Triton kernel per step.

Before these kernels the wrapper ran dozens of small torch ops per pass (log gates, their in-chunk cumsum,
mLSTMexp's stabilizer, the normalizer's gradient, the forget-gate gradient's scans), each a launch and a pass over ``(BH, SP)`` fp32 arrays;
on the H100 they took ~0.5 ms of a 3.3 ms fwbw pass at 128 heads of 16 / 32 dims (docs/performance.md, v8).
Layout as in ``chunk_fw``: gates ``i, f (BH, S)`` in any float dtype, per-token fp32 arrays ``(BH, SP)`` with
``SP = NC * L``. Chunks are scanned in blocks of ``BT`` tokens with a running carry, so any chunk size works.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Token block of the scans (a chunk of more tokens is scanned block by block).
GATE_BLOCK = 1024


@triton.jit
def _log_sigmoid(x):
    """``log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|))`` in fp32, with ``log1p(y) = log(u) * y / (u - 1)``,
    ``u = 1 + y`` (exact to a few ulp where ``1 + y`` rounds), so that gates near 1 keep their small logs."""
    y = tl.exp(-tl.abs(x))
    u = 1.0 + y
    exact = u == 1.0
    log1p = tl.where(exact, y, tl.log(u) * y / tl.where(exact, 1.0, u - 1.0))
    return tl.minimum(x, 0.0) - log1p


@triton.jit
def gate_arrays_kernel(IG, FG, GATE_B, GATE_I, S, SP, L: tl.constexpr, BT: tl.constexpr, EXP: tl.constexpr):
    """Grid ``(BH, NC)``, gates ``IG, FG (BH, S)``: ``GATE_B`` = the cumulative ``log sigmoid(f)`` inside each chunk (inclusive, 0 added on
    padding), ``GATE_I`` = ``i`` (mLSTMexp) or ``log sigmoid(i)`` (mLSTMsig), ``-inf`` on padding."""
    bh, c = tl.program_id(0), tl.program_id(1)
    carry = tl.zeros([], dtype=tl.float32)
    for t0 in range(0, L, BT):
        t = c * L + t0 + tl.arange(0, BT)
        valid = t < S
        f = tl.load(FG + bh * S + t, mask=valid, other=0.0).to(tl.float32)
        i = tl.load(IG + bh * S + t, mask=valid, other=0.0).to(tl.float32)
        log_f = tl.where(valid, _log_sigmoid(f), 0.0)
        b = tl.cumsum(log_f, axis=0) + carry
        carry += tl.sum(log_f, axis=0)
        log_i = i if EXP else _log_sigmoid(i)
        tl.store(GATE_B + bh * SP + t, b)
        tl.store(GATE_I + bh * SP + t, tl.where(valid, log_i, -float("inf")))


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def token_stabilizers(b, x, run):
    """mLSTMexp's max state of a block of tokens in chunk order: ``b_t + max(run, max_{s <= t}(x_s))``, from the
    in-chunk log forget gates ``b``, the keys' ``x = i - b`` and ``run``, the stabilizer before the block (the chunk
    state's, raised by the chunk's earlier blocks). A running max, not a pairwise one over the block."""
    return b + tl.maximum(tl.associative_scan(x, 0, _maximum), run)


@triton.jit
def stabilizer_kernel(GATE_B, GATE_I, M_ST, M_TOK, SP, NC, L: tl.constexpr, BT: tl.constexpr):
    """Grid ``(BH, NC)``: mLSTMexp's max state of every token, ``M_TOK (BH, SP)``: ``m_t = b_t + max(m_c,
    max_{s <= t in c}(i_s - b_s))`` (equal to ``max(b_t + m_c, max_s(b_t - b_s + i_s))``: rounding is monotone) from
    ``GATE_B, GATE_I (BH, SP)`` and the chunk states' stabilizers ``M_ST (BH, NC+1)``. A running max inside each
    chunk, so the output kernel needs none."""
    bh, c = tl.program_id(0), tl.program_id(1)
    run = tl.load(M_ST + bh * (NC + 1) + c)
    for t0 in range(0, L, BT):
        t = bh * SP + c * L + t0 + tl.arange(0, BT)
        b = tl.load(GATE_B + t)
        x = tl.load(GATE_I + t) - b
        tl.store(M_TOK + t, token_stabilizers(b, x, run))
        run = tl.maximum(run, tl.max(x, axis=0))


@triton.jit
def normalizer_grads_kernel(
    DH,
    H,
    Z_TOK,
    M_TOK,
    INV_DEN,
    DZ,
    S,
    SP,
    D,
    eps,
    BT: tl.constexpr,
    BD: tl.constexpr,
    NORMALIZE: tl.constexpr,
):
    """Grid ``(BH, cdiv(SP, BT))``, for ``dh, h (BH, S, D)``: ``INV_DEN = 1 / (max(|z|, exp(-m)) + eps)`` and
    ``DZ = -(dh . h) * INV_DEN * sign(z)`` where ``|z| > exp(-m)`` (the normalizer's gradient), else 0; both 0 on
    padding. Without ``NORMALIZE``: ``INV_DEN = 1`` and ``DZ = 0`` (``dh, h, z, m`` unread)."""
    bh = tl.program_id(0)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    in_sp, valid = t < SP, t < S
    if NORMALIZE:
        z = tl.load(Z_TOK + bh * SP + t, mask=in_sp, other=0.0)
        floor = tl.exp(-tl.load(M_TOK + bh * SP + t, mask=in_sp, other=0.0))
        inv_den = 1.0 / (tl.maximum(tl.abs(z), floor) + eps)
        dhh = tl.zeros((BT,), dtype=tl.float32)
        rows = (bh * S + t)[:, None] * D
        for d0 in range(0, D, BD):
            offs = d0 + tl.arange(0, BD)
            mask = valid[:, None] & (offs < D)[None, :]
            dh = tl.load(DH + rows + offs[None, :], mask=mask, other=0.0).to(tl.float32)
            h = tl.load(H + rows + offs[None, :], mask=mask, other=0.0).to(tl.float32)
            dhh += tl.sum(dh * h, axis=1)
        sign = tl.where(z > 0, 1.0, tl.where(z < 0, -1.0, 0.0))
        dz = tl.where(tl.abs(z) > floor, -dhh * inv_den * sign, 0.0)
    else:
        inv_den = tl.full((BT,), 1.0, tl.float32)
        dz = tl.zeros((BT,), dtype=tl.float32)
    tl.store(INV_DEN + bh * SP + t, tl.where(valid, inv_den, 0.0), mask=in_sp)
    tl.store(DZ + bh * SP + t, tl.where(valid, dz, 0.0), mask=in_sp)


@triton.jit
def gate_grads_kernel(
    QDQ,
    KDK,
    KDK_OFF,
    KDK_INTER,
    X_PART,
    IG,
    FG,
    PREFIX,
    DI,
    DF,
    BH,
    S,
    SP,
    NC,
    NQ,
    NK,
    NX,
    L: tl.constexpr,
    BT: tl.constexpr,
    EXP: tl.constexpr,
):
    """Grid ``(BH, NC)``: the input- and forget-gate gradients ``DI, DF (BH, S)`` (dtypes of the gates ``IG, FG``) from the
    backward kernels' per-token fp32 sums, each summed over its head-dim slices: ``QDQ (NQ, BH, SP)``, ``KDK,
    KDK_OFF, KDK_INTER (NK, BH, SP)``, ``X_PART (NX, BH, NC)``.

    ``d log i_s = k_s . dk_s``. ``d log f_r`` sums the gate-matrix gradient over all pairs (query ``t >= r``, key
    ``s < r``), split by where ``t`` and ``s`` lie relative to ``r``'s chunk ``c``: both inside (the reverse cumsum
    of the off-diagonal ``q.dq`` minus ``k.dk`` intra terms, which cancel to fp32 accuracy), ``s`` before ``c`` (the
    inter part of ``q.dq``, ``t >= r``, in ``QDQ`` too), ``t`` after ``c`` (``KDK_INTER`` over the chunk's keys
    ``s < r``) and both outside (``X_PART``). No term is a difference of rounded sums, so the result stays accurate
    in fp16 / bf16: the exclusive cumsum scans ``KDK_INTER`` shifted by one token. A forward pass over the chunk's
    blocks writes it to ``PREFIX (BH, SP)`` (fp32 scratch); the reverse pass adds the reverse cumsum and writes the
    gradients.
    """
    bh, c = tl.program_id(0), tl.program_id(1)
    x_sum = tl.zeros([], dtype=tl.float32)
    for j in range(NX):
        x_sum += tl.load(X_PART + (j * BH + bh) * NC + c)
    carry = tl.zeros([], dtype=tl.float32)
    for t0 in range(0, L, BT):
        t = c * L + t0 + tl.arange(0, BT)
        before = t - 1
        first = t0 + tl.arange(0, BT) == 0  # the chunk's first token: no key before it in the chunk
        shifted = tl.zeros((BT,), dtype=tl.float32)
        for j in range(NK):
            shifted += tl.load(KDK_INTER + (j * BH + bh) * SP + before, mask=~first, other=0.0)
        tl.store(PREFIX + bh * SP + t, tl.cumsum(shifted, axis=0) + carry)
        carry += tl.sum(shifted, axis=0)
    tl.debug_barrier()
    carry = tl.zeros([], dtype=tl.float32)
    for j0 in range(0, L, BT):
        t0 = L - BT - j0
        t = c * L + t0 + tl.arange(0, BT)
        inside = tl.zeros((BT,), dtype=tl.float32)
        for j in range(NQ):
            inside += tl.load(QDQ + (j * BH + bh) * SP + t)
        d_log_i = tl.zeros((BT,), dtype=tl.float32)
        for j in range(NK):
            inside -= tl.load(KDK_OFF + (j * BH + bh) * SP + t)
            d_log_i += tl.load(KDK + (j * BH + bh) * SP + t)
        d_log_f = tl.cumsum(inside, axis=0, reverse=True) + carry + tl.load(PREFIX + bh * SP + t) + x_sum
        carry += tl.sum(inside, axis=0)
        valid = t < S
        f = tl.load(FG + bh * S + t, mask=valid, other=0.0).to(tl.float32)
        tl.store(DF + bh * S + t, (d_log_f * tl.sigmoid(-f)).to(DF.dtype.element_ty), mask=valid)
        if EXP:
            di = d_log_i
        else:
            di = d_log_i * tl.sigmoid(-tl.load(IG + bh * S + t, mask=valid, other=0.0).to(tl.float32))
        tl.store(DI + bh * S + t, di.to(DI.dtype.element_ty), mask=valid)


def _block(chunk_size: int) -> int:
    return min(chunk_size, GATE_BLOCK)


def gate_arrays(i: torch.Tensor, f: torch.Tensor, variant: str, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token fp32 ``(gate_b, gate_i)`` of shape ``(BH, SP)`` for gates ``i, f (B, NH, S)``: the in-chunk
    cumulative log forget gate and the log input gate (``gate_arrays_kernel``)."""
    B, NH, S = f.shape
    nc = triton.cdiv(S, chunk_size)
    gate_b = torch.empty(B * NH, nc * chunk_size, dtype=torch.float32, device=f.device)
    gate_i = torch.empty_like(gate_b)
    gate_arrays_kernel[(B * NH, nc)](
        i.contiguous(), f.contiguous(), gate_b, gate_i, S, nc * chunk_size,
        L=chunk_size, BT=_block(chunk_size), EXP=variant == "exp",
    )  # fmt: skip
    return gate_b, gate_i


def stabilizer_per_token(
    gate_b: torch.Tensor, gate_i: torch.Tensor, m_st: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """mLSTMexp's max state of every token, fp32 ``(BH, SP)`` (``stabilizer_kernel``), from ``gate_arrays``' output
    and the chunk states' stabilizers ``m_st (BH, NC+1)``."""
    bh, sp = gate_b.shape
    nc = sp // chunk_size
    m_tok = torch.empty_like(gate_b)
    stabilizer_kernel[(bh, nc)](gate_b, gate_i, m_st, m_tok, sp, nc, L=chunk_size, BT=_block(chunk_size))
    return m_tok


def normalizer_grads(
    dh: torch.Tensor, h: torch.Tensor, z_tok: torch.Tensor, m_tok: torch.Tensor, eps: float, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(inv_den, dz)`` of shape ``(BH, SP)`` (``normalizer_grads_kernel``) for contiguous ``dh, h (B, NH,
    S, DHHV)`` and the forward's ``z_tok, m_tok (BH, SP)``."""
    bh, sp = z_tok.shape
    S, D = h.shape[-2:]
    inv_den, dz = torch.empty_like(z_tok), torch.empty_like(z_tok)
    bt = 64
    normalizer_grads_kernel[(bh, triton.cdiv(sp, bt))](
        dh, h, z_tok, m_tok, inv_den, dz, S, sp, D, eps,
        BT=bt, BD=min(64, triton.next_power_of_2(D)), NORMALIZE=normalize,
    )  # fmt: skip
    return inv_den, dz


def gate_grads(
    qdq: torch.Tensor,
    kdk: torch.Tensor,
    kdk_off: torch.Tensor,
    kdk_inter: torch.Tensor,
    x_part: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    chunk_size: int,
    variant: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(di, df)`` shaped and typed like ``i, f (B, NH, S)`` from the backward kernels' per-token sums
    (``gate_grads_kernel``)."""
    _, bh, sp = qdq.shape
    nc = x_part.shape[-1]
    S = f.shape[-1]
    di = torch.empty(i.shape, dtype=i.dtype, device=i.device)
    df = torch.empty(f.shape, dtype=f.dtype, device=f.device)
    prefix = torch.empty(bh, sp, dtype=torch.float32, device=f.device)
    gate_grads_kernel[(bh, nc)](
        qdq, kdk, kdk_off, kdk_inter, x_part, i.contiguous(), f.contiguous(), prefix, di, df,
        bh, S, sp, nc, qdq.shape[0], kdk.shape[0], x_part.shape[0],
        L=chunk_size, BT=_block(chunk_size), EXP=variant == "exp",
    )  # fmt: skip
    return di, df
