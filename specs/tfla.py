"""Registry entries of our kernels: TFLA mLSTMexp and mLSTMsig (``kernels.mlstm.tfla``)."""

from __future__ import annotations

from bench.problem import Problem
from bench.registry import KernelSpec, package_reason, register
from specs.mlstm import MLSTM_INPUTS, mlstm_bytes, mlstm_flops, mlstm_inputs, mlstm_reference


def _tfla_supports(p: Problem) -> str | None:
    if p.head_dim_qk % 16 or p.head_dim_v % 16 or max(p.head_dim_qk, p.head_dim_v) > 1024:
        return "head dims must be multiples of 16 up to 1024"
    if p.chunk_size < 16:
        return "chunk_size must be a power of two >= 16"
    if p.chunk_size > max(16, 1 << (p.seq_len - 1).bit_length()):
        return f"chunk_size {p.chunk_size} exceeds the sequence length {p.seq_len}"
    return None


def _register_tfla(variant: str, normalize: bool, description: str) -> None:
    def fn(q, k, v, i, f, _chunk: int = 0):  # noqa: ANN001, ANN202
        from kernels.mlstm.tfla import mlstm_tfla

        return mlstm_tfla(q, k, v, i, f, variant=variant, normalize=normalize, chunk_size=_chunk)

    register(
        KernelSpec(
            name=f"tfla.mlstm_{variant}",
            family="mlstm",
            make_inputs=lambda p: (*mlstm_inputs(p), p.chunk_size),
            fn=fn,
            flops=mlstm_flops,
            bytes=mlstm_bytes,
            supports=_tfla_supports,
            available=lambda: package_reason("triton"),
            params=lambda p: {"variant": variant, "normalize": normalize, "chunk_size": p.chunk_size},
            reference=lambda q, k, v, i, f, _chunk=0: mlstm_reference(variant, normalize)(q, k, v, i, f),
            input_names=MLSTM_INPUTS,
            uses_chunk_size=True,
            description=description,
            devices=("cuda", "cpu"),
            role="ours",
            sources=("kernels/mlstm",),
        )
    )


_register_tfla("exp", True, "TFLA mLSTMexp (ours, Triton): exponential input gate, max-state stabilizer")
_register_tfla("sig", False, "TFLA mLSTMsig (ours, Triton): sigmoid input gate, no normalizer")
