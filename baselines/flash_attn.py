"""Flash Attention 2, 3 and 4 (``flash_attn_func``, causal), whichever is installed; layout ``(B, S, H, 128)``."""

from __future__ import annotations

import importlib

from baselines.sdpa import attention_bytes, attention_flops, attention_inputs, attention_params
from bench.problem import Problem
from bench.registry import KernelSpec, package_reason, register

MODULES = {"fa2": "flash_attn", "fa3": "flash_attn_interface", "fa4": "flash_attn.cute.interface"}


def _register(name: str, module: str) -> None:
    def fn(q, k, v):  # noqa: ANN001, ANN202
        return importlib.import_module(module).flash_attn_func(q, k, v, causal=True)

    def supports(p: Problem) -> str | None:
        return "flash-attn supports float16 and bfloat16 only" if p.dtype == "float32" else None

    def reference(q, k, v):  # noqa: ANN001, ANN202
        from baselines.sdpa import sdpa_reference

        return sdpa_reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    register(
        KernelSpec(
            name=f"flash_attn.{name}",
            family="attention",
            make_inputs=lambda p: attention_inputs(p, layout="bshd"),
            fn=fn,
            flops=attention_flops,
            bytes=attention_bytes,
            supports=supports,
            available=lambda: package_reason(module.split(".")[0]) or package_reason(module),
            params=attention_params,
            reference=reference,
            description=f"Flash Attention ({name.upper()}) via {module}.flash_attn_func, causal",
        )
    )


for _name, _module in MODULES.items():
    _register(_name, _module)
