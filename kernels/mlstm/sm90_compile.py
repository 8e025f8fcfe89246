"""Compile the TFLA Triton kernels for sm_90 without a GPU: Triton's front end, LLVM and its bundled ptxas run on
the CPU, so what a kernel would ask of an H100 (shared memory, registers, spilled bytes) shows before any launch.
Used by ``scripts/compile_check.py`` and the state-kernel fit test (``tests/state_kernel_cases.py``)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
# The most dynamic shared memory one block may take on an sm_90 GPU (H100, H200), bytes.
HOPPER_SMEM_BYTES = 232448
# Integer arguments a launch passes as multiples of 16 at the shapes that matter (S 8192, head dims 64..512): the
# JIT then specializes them, as it does every 16-byte aligned pointer.
ALIGNED_INTS = {"SP", "NC", "DHQK", "DHHV"}

# TMA descriptor args -> the tile constexprs of their blocks [1, rows, cols].
DESCRIPTOR_BLOCKS = {
    ("fw_chunk_states_kernel", "K_D"): ("BL", "BK"),
    ("fw_chunk_states_kernel", "V_D"): ("BL", "BV"),
    ("fw_chunk_states_kernel", "C_D"): ("BK", "BV"),
    ("fw_chunk_output_kernel", "Q_D"): ("BQ", "BK"),
    ("fw_chunk_output_kernel", "K_D"): ("BKV", "BK"),
    ("fw_chunk_output_kernel", "V_D"): ("BKV", "BV"),
    ("fw_chunk_output_kernel", "QS_D"): ("BQ", "BS"),
    ("fw_chunk_output_kernel", "C_D"): ("BS", "BV"),
    ("fw_chunk_output_kernel", "H_D"): ("BQ", "BV"),
    ("fw_fused_kernel", "Q_D"): ("L", "BK"),
    ("fw_fused_kernel", "K_D"): ("L", "BK"),
    ("fw_fused_kernel", "V_D"): ("L", "BV"),
    ("fw_fused_kernel", "H_D"): ("L", "BV"),
    ("bw_chunk_state_grads_kernel", "Q_D"): ("BL", "BK"),
    ("bw_chunk_state_grads_kernel", "DH_D"): ("BL", "BV"),
    ("bw_chunk_state_grads_kernel", "C_D"): ("BK", "BV"),
    ("bw_chunk_state_grads_kernel", "DC_D"): ("BK", "BV"),
    ("bw_chunk_dq_kernel", "Q_D"): ("BQ", "BK"),
    ("bw_chunk_dq_kernel", "K_D"): ("BKV", "BK"),
    ("bw_chunk_dq_kernel", "V_D"): ("BKV", "BV"),
    ("bw_chunk_dq_kernel", "DH_D"): ("BQ", "BV"),
    ("bw_chunk_dq_kernel", "DHS_D"): ("BQ", "BS"),
    ("bw_chunk_dq_kernel", "C_D"): ("BK", "BS"),
    ("bw_chunk_dq_kernel", "DQ_D"): ("BQ", "BK"),
    ("bw_chunk_dk_kernel", "Q_D"): ("BQ", "BK"),
    ("bw_chunk_dk_kernel", "K_D"): ("BKV", "BK"),
    ("bw_chunk_dk_kernel", "V_D"): ("BKV", "BV"),
    ("bw_chunk_dk_kernel", "DH_D"): ("BQ", "BV"),
    ("bw_chunk_dk_kernel", "VS_D"): ("BKV", "BS"),
    ("bw_chunk_dk_kernel", "DC_D"): ("BK", "BS"),
    ("bw_chunk_dk_kernel", "DK_D"): ("BKV", "BK"),
    ("bw_chunk_dv_kernel", "Q_D"): ("BQ", "BK"),
    ("bw_chunk_dv_kernel", "K_D"): ("BKV", "BK"),
    ("bw_chunk_dv_kernel", "DH_D"): ("BQ", "BV"),
    ("bw_chunk_dv_kernel", "KS_D"): ("BKV", "BS"),
    ("bw_chunk_dv_kernel", "DC_D"): ("BS", "BV"),
    ("bw_chunk_dv_kernel", "DV_D"): ("BKV", "BV"),
}


def signature(kernel: triton.JITFunction, dtype: str, constexprs: dict[str, object]) -> dict[str, str]:
    """Pointer args get ``*dtype`` (inputs) or ``*fp32`` (gates/states), TMA descriptors (``*_D``) the input
    dtype and their tiles; scalars are i32 / fp32."""
    fp_scalars = {"qk_scale", "eps"}
    ints = {"S", "SP", "NC", "DHQK", "DHHV", "R", "D", "BH", "NQ", "NK", "NX"}
    sig: dict[str, str] = {}
    for name in kernel.arg_names:
        block = DESCRIPTOR_BLOCKS.get((kernel.__name__, name))
        if name in constexprs:
            sig[name] = "constexpr"
        elif block:
            sig[name] = f"tensordesc<{dtype}[1,{constexprs[block[0]]},{constexprs[block[1]]}]>"
        elif name in fp_scalars:
            sig[name] = "fp32"
        elif name in ints:
            sig[name] = "i32"
        elif name in {"Q", "K", "V", "H", "DH", "DQ", "DK", "DV", "A", "B", "DC_ST", "C_ST"}:
            sig[name] = f"*{dtype}"
        else:
            sig[name] = "*fp32"
    return sig


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """``ptxas -v`` on ``ptx`` for sm_90a: (registers, spill-store bytes) per thread. The ptxas is the one this
    Triton compiles sm_90 with (from 3.9 on the newer of its two: the older one refuses its PTX version)."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(90).path
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as fh:
        fh.write(ptx)
        fh.flush()
        out = subprocess.run([ptxas, "-arch=sm_90a", "-v", fh.name, "-o", os.devnull], capture_output=True, text=True)
    text = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", text)
    stores = re.search(r"(\d+) bytes spill stores", text)
    return (int(regs.group(1)) if regs else -1, int(stores.group(1)) if stores else -1)


@dataclass(frozen=True)
class CompiledFacts:
    """What a kernel compiled for sm_90 asks of the GPU: ``shared`` bytes of shared memory per block,
    ``registers`` per thread and ``spill_bytes`` stored to local memory per thread (-1: ptxas did not run)."""

    shared: int
    registers: int = -1
    spill_bytes: int = -1


def compile_sm90(
    kernel: triton.JITFunction,
    dtype: str,
    constexprs: dict[str, object],
    num_warps: int = 4,
    num_stages: int = 2,
    usage: bool = False,
    aligned: bool = False,
) -> CompiledFacts:
    """``kernel`` compiled for sm_90 with ``constexprs`` (``signature``'s argument types for ``dtype``); ``usage``
    runs ptxas for registers and spills; ``aligned`` specializes pointers and ``ALIGNED_INTS`` as multiples of 16,
    as the JIT does at real shapes (the register count then matches the device's). Raises what Triton raises."""
    sig = signature(kernel, dtype, constexprs)
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(kernel.arg_names)
        if aligned and (sig[name].startswith("*") or name in ALIGNED_INTS)
    }
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": num_stages})
    if not usage:
        return CompiledFacts(compiled.metadata.shared)
    return CompiledFacts(compiled.metadata.shared, *ptxas_usage(compiled.asm["ptx"]))
