"""FLOP and byte formulas against hand counts at small shapes."""

from __future__ import annotations

import pytest

from bench import flops


def test_causal_attention_counts_the_causal_half() -> None:
    # S=4: 10 (query, key) pairs; fw = 2 * pairs * (dqk + dv) per head
    assert flops.causal_pairs(4) == 10
    assert flops.attention_flops(1, 1, 4, 8, 8, "fw") == 2 * 10 * 16
    assert flops.attention_flops(2, 3, 4, 8, 8, "fw") == 6 * 2 * 10 * 16
    # bw: QK^T again, dQ, dK (3 x dqk) and dV, dP (2 x dv)
    assert flops.attention_flops(1, 1, 4, 8, 8, "bw") == 2 * 10 * (3 * 8 + 2 * 8)
    assert flops.attention_flops(1, 1, 4, 8, 8, "fwbw") == 2 * 10 * 16 + 2 * 10 * 40


def test_chunkwise_counts_intra_and_inter_terms() -> None:
    # S=8, L=4: two chunks. Per chunk: states 2*4*dqk*dv, inter output 2*4*dqk*dv, intra 10 pairs.
    dqk, dv = 2, 3
    per_chunk_fw = 2 * 4 * dqk * dv + 2 * 4 * dqk * dv + 2 * 10 * (dqk + dv)
    assert flops.chunkwise_flops(1, 1, 8, dqk, dv, 4, "fw") == 2 * per_chunk_fw
    per_chunk_bw = 4 * (2 * 4 * dqk * dv) + 2 * 10 * (dqk + dv) + 2 * 10 * (2 * dqk + dv)
    assert flops.chunkwise_flops(1, 1, 8, dqk, dv, 4, "bw") == 2 * per_chunk_bw


def test_chunkwise_trade_off_with_chunk_size() -> None:
    # larger chunks: fewer state terms, more intra-chunk work
    small = flops.chunkwise_flops(1, 1, 4096, 128, 128, 64, "fw")
    large = flops.chunkwise_flops(1, 1, 4096, 128, 128, 1024, "fw")
    assert large > small
    # the whole sequence as one chunk is the parallel form: states of one chunk + the causal half
    assert flops.chunkwise_flops(1, 1, 16, 4, 4, 16, "fw") == 4 * 16 * 16 + 2 * flops.causal_pairs(16) * 8


def test_bytes_and_tflops() -> None:
    # fw: q, k (2 x 4), v (4) read, h (4) written; 2 bytes each; 1 fp32 gate
    assert flops.sequence_mixer_bytes(1, 1, 2, 4, 4, 2, "fw", gates=1) == 2 * (12 + 4) * 2 + 2 * 4
    assert flops.tflops(2e12, 1000.0) == pytest.approx(2.0)


def test_selective_scan_hand_count() -> None:
    # 9 FLOPs per (token, channel, state): B=2, S=3, d_inner=4, d_state=5
    assert flops.selective_scan_flops(2, 3, 4, 5, "fw") == 9 * 2 * 3 * 4 * 5
    assert flops.selective_scan_flops(2, 3, 4, 5, "fwbw") == 3 * 9 * 2 * 3 * 4 * 5
