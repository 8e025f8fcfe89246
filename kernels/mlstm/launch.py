"""Host-side launch helpers of the TFLA kernels: TMA descriptors, ``tl.dot`` precision, device facts."""

from __future__ import annotations

import os

import torch
from triton.tools.tensor_descriptor import TensorDescriptor


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def gpu_sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device``; 0 elsewhere."""
    if device.type != "cuda":
        return 0
    return torch.cuda.get_device_properties(device).multi_processor_count


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision: exact products (``ieee``) for fp32 inputs, else ``tf32``, which applies only
    where an operand is fp32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def tma_ready(x: torch.Tensor) -> torch.Tensor:
    """``x`` contiguous and starting on a 16-byte boundary, as TMA descriptors need (a view into a larger
    tensor may start anywhere; then it is copied)."""
    x = x.contiguous()
    return x if x.data_ptr() % 16 == 0 else x.clone()


def head_tiles(x: torch.Tensor, rows: int, cols: int) -> TensorDescriptor:
    """TMA descriptor of a contiguous ``x`` seen as ``(heads, R, D)`` (its last two dims; ``q, k, v, h``:
    ``R = S`` tokens; chunk states: ``R = DHQK``) that moves ``rows x cols`` tiles of one head, as blocks
    ``[1, rows, cols]``. Reads past ``R`` or ``D`` give zeros, and stores there are dropped."""
    r, d = x.shape[-2:]
    return TensorDescriptor(x, shape=[x.numel() // (r * d), r, d], strides=[r * d, d, 1], block_shape=[1, rows, cols])
