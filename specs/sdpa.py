"""PyTorch ``scaled_dot_product_attention``, causal, one backend forced per kernel.

Shape mapping: attention heads of head dim 128 with the mLSTM problem's width (``heads * head_dim_v``);
layout ``(B, H, S, 128)``.
"""

from __future__ import annotations

from typing import Any

from bench import flops
from bench.problem import Problem
from bench.registry import KernelSpec, register
from specs.shapes import ATTENTION_HEAD_DIM, attention_heads, itemsize

BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}


def attention_inputs(p: Problem, layout: str = "bhsd") -> tuple[Any, ...]:
    import torch

    h, d = attention_heads(p), ATTENTION_HEAD_DIM
    shape = (p.batch, h, p.seq_len, d) if layout == "bhsd" else (p.batch, p.seq_len, h, d)
    return tuple(torch.randn(*shape, dtype=p.torch_dtype, device=p.device) for _ in range(3))


def attention_flops(p: Problem) -> float:
    d = ATTENTION_HEAD_DIM
    return flops.attention_flops(p.batch, attention_heads(p), p.seq_len, d, d, p.mode)


def attention_bytes(p: Problem) -> float:
    d = ATTENTION_HEAD_DIM
    return flops.sequence_mixer_bytes(p.batch, attention_heads(p), p.seq_len, d, d, itemsize(p), p.mode)


def attention_params(p: Problem) -> dict[str, object]:
    return {"heads": attention_heads(p), "head_dim": ATTENTION_HEAD_DIM, "causal": True}


def sdpa_reference(q, k, v):  # noqa: ANN001, ANN201
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _register(name: str) -> None:
    def fn(q, k, v):  # noqa: ANN001, ANN202
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(getattr(SDPBackend, BACKENDS[name])):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def supports(p: Problem) -> str | None:
        if name in ("flash", "cudnn") and p.dtype == "float32":
            return f"SDPA {name} backend supports float16 and bfloat16 only"
        return None

    register(
        KernelSpec(
            name=f"sdpa.{name}",
            family="attention",
            make_inputs=attention_inputs,
            fn=fn,
            flops=attention_flops,
            bytes=attention_bytes,
            supports=supports,
            params=attention_params,
            reference=sdpa_reference,
            input_names=("q", "k", "v"),
            description=f"torch SDPA, {name} backend, causal",
            devices=("cuda", "cpu") if name == "math" else ("cuda",),
        )
    )


for _name in BACKENDS:
    _register(_name)
