"""The official TFLA kernels (``mlstm_kernels``): the reference our kernels are measured against.

Same layout as ours. ``limit_chunk`` keeps a whole chunk in SRAM and runs at chunk 64 (as in the paper);
``xl_chunk_siging`` runs without the normalizer (as ``tfla.mlstm_sig``).
"""

from __future__ import annotations

import importlib

from bench.problem import Problem
from bench.registry import KernelSpec, package_reason, register
from specs.mlstm import MLSTM_INPUTS, mlstm_bytes, mlstm_flops, mlstm_inputs, mlstm_reference

MODULE = "mlstm_kernels.torch.chunkwise"
LIMIT_CHUNK = 64
# name: (function, variant, normalize, fixed chunk size or None)
KERNELS = {
    "limit_chunk": ("mlstm_chunkwise__limit_chunk", "exp", True, LIMIT_CHUNK),
    "xl_chunk": ("mlstm_chunkwise__xl_chunk", "exp", True, None),
    "xl_chunk_siging": ("mlstm_siging_chunkwise__xl_chunk", "sig", False, None),
}


def _register(name: str, function: str, variant: str, normalize: bool, fixed_chunk: int | None) -> None:
    def chunk_of(p: Problem) -> int:
        return fixed_chunk or p.chunk_size

    def fn(q, k, v, i, f, _chunk: int):  # noqa: ANN001, ANN202
        kernel = getattr(importlib.import_module(MODULE), function)
        extra = {"normalize": normalize} if variant == "sig" else {}
        return kernel(q, k, v, i, f, chunk_size=_chunk, autocast_kernel_dtype=q.dtype, **extra)

    def supports(p: Problem) -> str | None:
        L = chunk_of(p)
        if L < 16 or p.seq_len % L:
            return f"the official kernels need seq_len to be a multiple of the chunk size {L}"
        if p.head_dim_qk % 16 or p.head_dim_v % 16:
            return "head dims must be multiples of 16"
        return None

    register(
        KernelSpec(
            name=f"mlstm_kernels.{name}",
            family="mlstm",
            make_inputs=lambda p: (*mlstm_inputs(p), chunk_of(p)),
            fn=fn,
            flops=lambda p: mlstm_flops(p.with_(chunk_size=chunk_of(p))),
            bytes=mlstm_bytes,
            supports=supports,
            available=lambda: package_reason("mlstm_kernels", "triton"),
            params=lambda p: {
                "variant": variant,
                "normalize": normalize,
                "chunk_size": chunk_of(p),
                "function": function,
            },
            reference=lambda q, k, v, i, f, _chunk=0: mlstm_reference(variant, normalize)(q, k, v, i, f),
            input_names=MLSTM_INPUTS,
            uses_chunk_size=fixed_chunk is None,
            description=f"official TFLA {function} (mlstm_kernels)",
        )
    )


for _name, _args in KERNELS.items():
    _register(_name, *_args)
