"""Shape conventions of the TFLA paper: baselines get the same model width as the mLSTM problem."""

from __future__ import annotations

from bench.envinfo import release
from bench.problem import Problem

ATTENTION_HEAD_DIM = 128
MAMBA_EXPAND, MAMBA_STATE = 2, 16
MAMBA2_HEAD_DIM, MAMBA2_STATE, MAMBA2_CHUNK = 64, 64, 256


def width(p: Problem) -> int:
    """Model width of the mLSTM problem: ``heads * head_dim_v``."""
    return p.heads * p.head_dim_v


def attention_heads(p: Problem) -> int:
    """Attention heads of head dim 128 with the problem's width (at least one)."""
    return max(1, width(p) // ATTENTION_HEAD_DIM)


def itemsize(p: Problem) -> int:
    return {"float32": 4, "float16": 2, "bfloat16": 2}[p.dtype]


def hopper_triton_bw_caveat() -> str | None:
    """FLA's gated backward is wrong on Hopper with Triton >= 3.4 and < 3.7.1 (fla #640)."""
    import torch
    import triton

    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        return None
    version = release(triton.__version__)
    if (3, 4, 0) <= version < (3, 7, 1):
        return f"known broken: FLA gated backward on Hopper with Triton {triton.__version__} (< 3.7.1); fw only"
    return None


def hopper_triton_bw_reason(p: Problem) -> str | None:
    """The caveat as the reason a ``bw``/``fwbw`` problem is not run (reported, not measured)."""
    if p.mode == "fw" or p.device != "cuda":
        return None
    return hopper_triton_bw_caveat()
