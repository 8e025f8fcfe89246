"""Analytical FLOP and byte counts (pure functions). FLOPs count multiply-adds as 2.

Conventions: causal attention counts the causal half (``S (S + 1) / 2`` query-key pairs); chunkwise
kernels (mLSTM, GLA, Mamba2's SSD) count the intra-chunk causal half plus the inter-chunk state terms;
elementwise gate work is left out. ``bw`` counts the useful work of the backward pass (the scores that
the forward did not keep are recomputed once), ``fwbw = fw + bw``.
"""

from __future__ import annotations


def _by_mode(fw: float, bw: float, mode: str) -> float:
    return {"fw": fw, "bw": bw, "fwbw": fw + bw}[mode]


def causal_pairs(seq_len: int) -> int:
    """Number of (query, key) pairs with key <= query."""
    return seq_len * (seq_len + 1) // 2


def attention_flops(batch: int, heads: int, seq_len: int, dqk: int, dv: int, mode: str) -> float:
    """Causal softmax attention. fw: ``QK^T`` and ``PV``; bw: ``QK^T`` again, ``dV, dP, dQ, dK``."""
    pairs = batch * heads * causal_pairs(seq_len)
    fw = 2.0 * pairs * (dqk + dv)
    bw = 2.0 * pairs * (3 * dqk + 2 * dv)
    return _by_mode(fw, bw, mode)


def chunkwise_flops(batch: int, heads: int, seq_len: int, dqk: int, dv: int, chunk: int, mode: str) -> float:
    """Chunkwise gated linear attention (mLSTM TFLA, GLA, SSD) with chunk size ``chunk``.

    Per head and chunk of ``L`` tokens (``NC = ceil(S / L)``):
    fw = states ``2 L dqk dv`` + inter output ``2 L dqk dv`` + intra ``2 P (dqk + dv)``, ``P = L (L+1) / 2``;
    bw = state gradients ``2 L dqk dv`` + inter terms of dq, dk, dv ``3 * 2 L dqk dv``
    + intra scores and dP ``2 P (dqk + dv)`` + dq, dk, dv ``2 P (2 dqk + dv)``.
    """
    L = min(chunk, seq_len) if chunk else seq_len
    nc = -(-seq_len // L)
    bh = batch * heads
    pairs = L * (L + 1) / 2
    state = 2.0 * L * dqk * dv
    fw = bh * nc * (2 * state + 2 * pairs * (dqk + dv))
    bw = bh * nc * (4 * state + 2 * pairs * (dqk + dv) + 2 * pairs * (2 * dqk + dv))
    return _by_mode(fw, bw, mode)


def selective_scan_flops(batch: int, seq_len: int, d_inner: int, d_state: int, mode: str) -> float:
    """Mamba's selective scan: about 9 FLOPs per (token, channel, state) forward, twice that backward."""
    fw = 9.0 * batch * seq_len * d_inner * d_state
    return _by_mode(fw, 2 * fw, mode)


def sequence_mixer_bytes(
    batch: int, heads: int, seq_len: int, dqk: int, dv: int, itemsize: int, mode: str, gates: int = 0
) -> float:
    """Fewest bytes through device memory: every input read once, every output written once.

    fw reads q, k, v (and ``gates`` fp32 per-token gate vectors), writes h; bw reads q, k, v, dh and the
    gates, writes dq, dk, dv and the gate gradients.
    """
    tokens = batch * heads * seq_len
    qkv = tokens * (2 * dqk + dv) * itemsize
    out = tokens * dv * itemsize
    gate = tokens * gates * 4
    fw = qkv + out + gate
    bw = qkv + out + 2 * gate + qkv
    return _by_mode(fw, bw, mode)


def tflops(flops: float, runtime_ms: float) -> float:
    """TFLOP/s from a FLOP count and a runtime in milliseconds."""
    return flops / (runtime_ms * 1e-3) / 1e12 if runtime_ms > 0 else float("nan")


def min_input_bytes(batch: int, heads: int, seq_len: int, dqk: int, dv: int, itemsize: int, mode: str) -> float:
    """A lower bound on the device memory a problem's tensors take: q, k and v, and for ``bw`` / ``fwbw`` their
    gradients of the same size (any kernel of the problem allocates at least these)."""
    qkv = batch * heads * seq_len * (2 * dqk + dv) * itemsize
    return float(qkv if mode == "fw" else 2 * qkv)
