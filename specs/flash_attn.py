"""FlashAttention 2, 3 and 4 (``flash_attn_func``, causal), whichever is installed; layout ``(B, S, H, 128)``.

Which package gives which row: ``flash_attn.fa2`` the ``flash-attn`` wheel (module ``flash_attn``, CUDA extension
``flash_attn_2_cuda``; extra ``flash``), ``flash_attn.fa3`` a source build of the flash-attention repository's
``hopper/`` (module ``flash_attn_interface``), ``flash_attn.fa4`` the ``flash-attn-4`` wheel on the CUTLASS DSL
(module ``flash_attn.cute``; extra ``flash4``). FA3 and FA4 return ``(out, lse)``; the harness times and
differentiates ``out``. Shape mapping as for SDPA: heads of head dim 128 with the mLSTM problem's width.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from bench.problem import Problem
from bench.registry import KernelSpec, first_reason, package_reason, register
from specs.sdpa import attention_bytes, attention_flops, attention_inputs, attention_params
from specs.shapes import ATTENTION_HEAD_DIM


@dataclass(frozen=True)
class FlashVersion:
    """One FlashAttention generation: the module with ``flash_attn_func``, the modules that must import (the
    compiled extension too), the GPU generations it runs on, and its head-dim rule per mode."""

    name: str
    module: str
    requires: tuple[str, ...]
    min_capability: int
    capabilities: tuple[int, ...] | None = None  # major versions; None: every one from min_capability on
    head_dim_reason: Callable[[int, int, str], str | None] = lambda d, cap, mode: None


def fa2_head_dims(d: int, capability: int, mode: str) -> str | None:
    if d % 8 or d > 256:
        return f"FlashAttention-2 supports head dims up to 256 in multiples of 8; got {d}"
    return None


def fa4_head_dims(d: int, capability: int, mode: str) -> str | None:
    """flash-attn-4 4.0.0b36 (``interface._validate_head_dims``, forward and backward alike): on sm_90 head dims
    8..256 in multiples of 8 (16 bytes of 16-bit elements); on sm_100 / sm_110 8..128, or 256."""
    if d % 8:
        return f"FlashAttention-4 needs head dims that are multiples of 8; got {d}"
    if capability == 9 and not 8 <= d <= 256:
        return f"FlashAttention-4 supports head dims 8..256 on sm_90; got {d}"
    if capability in (10, 11) and not (8 <= d <= 128 or d == 256):
        return f"FlashAttention-4 supports head dims 8..128 and 256 on sm_100; got {d}"
    return None


VERSIONS = (
    FlashVersion("fa2", "flash_attn", ("flash_attn", "flash_attn_2_cuda"), 8, None, fa2_head_dims),
    FlashVersion("fa3", "flash_attn_interface", ("flash_attn_interface",), 9, (9,)),
    FlashVersion(
        "fa4", "flash_attn.cute", ("flash_attn", "flash_attn.cute", "cutlass"), 9, (9, 10, 11, 12), fa4_head_dims
    ),
)


def _capability() -> int | None:
    import torch

    return torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else None


def _gpu_reason(version: FlashVersion) -> str | None:
    cap = _capability()
    if cap is None:
        return None  # the runner says that no GPU is visible
    if cap < version.min_capability or (version.capabilities is not None and cap not in version.capabilities):
        allowed = ", ".join(f"sm_{c}0" for c in version.capabilities or (version.min_capability,))
        return f"{version.name.upper()} runs on {allowed}{'' if version.capabilities else ' and newer'}; this GPU is sm_{cap}0"
    return None


def _register(version: FlashVersion) -> None:
    def fn(q, k, v):  # noqa: ANN001, ANN202
        return importlib.import_module(version.module).flash_attn_func(q, k, v, causal=True)

    def supports(p: Problem) -> str | None:
        if p.dtype == "float32":
            return "FlashAttention supports float16 and bfloat16 only"
        return version.head_dim_reason(ATTENTION_HEAD_DIM, _capability() or 0, p.mode)

    def reference(q, k, v):  # noqa: ANN001, ANN202
        from specs.sdpa import sdpa_reference

        return sdpa_reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    register(
        KernelSpec(
            name=f"flash_attn.{version.name}",
            family="attention",
            make_inputs=lambda p: attention_inputs(p, layout="bshd"),
            fn=fn,
            flops=attention_flops,
            bytes=attention_bytes,
            supports=supports,
            available=lambda: first_reason(lambda: package_reason(*version.requires), lambda: _gpu_reason(version)),
            params=attention_params,
            reference=reference,
            input_names=("q", "k", "v"),
            description=f"FlashAttention ({version.name.upper()}) via {version.module}.flash_attn_func, causal",
        )
    )


for _version in VERSIONS:
    _register(_version)
