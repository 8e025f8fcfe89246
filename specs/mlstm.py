"""The mLSTM problem for every mLSTM entry (ours, the official TFLA, the references): its inputs, FLOPs, bytes and
float64 reference; and the PyTorch references' own entries (``reference.mlstm_*``)."""

from __future__ import annotations

from typing import Any

from bench import flops
from bench.problem import Problem
from bench.registry import KernelSpec, register
from specs.shapes import itemsize

MLSTM_INPUTS = ("q", "k", "v", "i", "f")  # the items of mlstm_inputs


def mlstm_inputs(p: Problem, gate_dtype: Any = None) -> tuple[Any, ...]:
    """Random ``q, k, v`` in ``p.dtype`` and fp32 gate pre-activations ``i, f`` (forget gates biased open)."""
    import torch

    dt, dev = p.torch_dtype, p.device
    q = torch.randn(p.batch, p.heads, p.seq_len, p.head_dim_qk, dtype=dt, device=dev)
    k = torch.randn(p.batch, p.heads, p.seq_len, p.head_dim_qk, dtype=dt, device=dev)
    v = torch.randn(p.batch, p.heads, p.seq_len, p.head_dim_v, dtype=dt, device=dev)
    gd = gate_dtype or torch.float32
    i = torch.randn(p.batch, p.heads, p.seq_len, dtype=gd, device=dev)
    f = torch.randn(p.batch, p.heads, p.seq_len, dtype=gd, device=dev) + 3.0
    return q, k, v, i, f


def mlstm_flops(p: Problem) -> float:
    return flops.chunkwise_flops(p.batch, p.heads, p.seq_len, p.head_dim_qk, p.head_dim_v, p.chunk_size, p.mode)


def mlstm_bytes(p: Problem) -> float:
    return flops.sequence_mixer_bytes(p.batch, p.heads, p.seq_len, p.head_dim_qk, p.head_dim_v, itemsize(p), p.mode, 2)


def mlstm_reference(variant: str, normalize: bool = True, detach_normalizer: bool = False):  # noqa: ANN201
    """float64 parallel reference with the kernel's call signature (a trailing chunk size is ignored);
    ``detach_normalizer`` as in ``kernels.mlstm.reference.mlstm_parallel``."""

    def run(q, k, v, i, f, _chunk=0):  # noqa: ANN001, ANN202
        from kernels.mlstm.reference import mlstm_parallel

        return mlstm_parallel(q, k, v, i, f, variant=variant, normalize=normalize, detach_normalizer=detach_normalizer)

    return run


def _register_reference(variant: str, form: str) -> None:
    normalize = variant == "exp"

    def fn(q, k, v, i, f):  # noqa: ANN001, ANN202
        from kernels.mlstm import reference

        if form == "parallel":
            return reference.mlstm_parallel(q, k, v, i, f, variant=variant, normalize=normalize)
        return reference.mlstm_recurrent(q, k, v, i, f, variant=variant, normalize=normalize)[0]

    def supports(p: Problem) -> str | None:
        if form == "recurrent" and p.seq_len > 4096:
            return "the step-by-step reference is limited to seq_len <= 4096 (one launch per token)"
        return None

    register(
        KernelSpec(
            name=f"reference.mlstm_{variant}_{form}",
            family="mlstm",
            make_inputs=mlstm_inputs,
            fn=fn,
            flops=lambda p: flops.chunkwise_flops(
                p.batch, p.heads, p.seq_len, p.head_dim_qk, p.head_dim_v, p.seq_len if form == "parallel" else 1, p.mode
            ),
            bytes=mlstm_bytes,
            supports=supports,
            params=lambda p: {"variant": variant, "normalize": normalize, "form": form},
            reference=mlstm_reference(variant, normalize),
            input_names=MLSTM_INPUTS,
            description=f"PyTorch mLSTM{variant} reference, {form} form (ground truth, not fast)",
            role="reference",
            sources=("kernels/mlstm/reference.py",),
            devices=("cuda", "cpu"),
        )
    )


for _variant in ("exp", "sig"):
    for _form in ("parallel", "recurrent"):
        _register_reference(_variant, _form)
