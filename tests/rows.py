"""Synthetic result rows for tests of the store, the check and the plots."""

from __future__ import annotations

from bench.store import COLUMNS

DEFAULTS: dict[str, object] = dict(
    kernel="tfla.mlstm_sig",
    family="mlstm",
    batch=1,
    heads=8,
    seq_len=1024,
    head_dim_qk=256,
    head_dim_v=512,
    chunk_size=128,
    dtype="bfloat16",
    mode="fw",
    device="cuda",
    tokens=1024,
    kernel_params="{}",
    status="ok",
    message="",
    gpu_name="NVIDIA H100 80GB HBM3",
    packages="{}",
)


def result_row(**fields: object) -> dict[str, object]:
    """A row with every schema column: ``DEFAULTS``, then ``fields``; the rest ``None``."""
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise KeyError(f"not schema columns: {sorted(unknown)}")
    return {c: None for c in COLUMNS} | DEFAULTS | fields
