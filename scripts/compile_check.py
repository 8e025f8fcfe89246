"""Compile every TFLA kernel for sm_90 without a GPU (Triton front end, LLVM and ptxas run on the CPU).

Catches typing and lowering errors that the interpreter (which runs plain Python) cannot see. ``--spills``
also runs Triton's bundled ``ptxas -v`` on each kernel's PTX and prints its register spills (bytes per thread).
Usage: ``python scripts/compile_check.py [--spills]`` (exit 1 on the first kernel that does not compile).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.mlstm import chunk_bw, chunk_fw, gates

TARGET = GPUTarget("cuda", 90, 32)
# The intra-chunk kernels' head-dim slice loops: rolled, unrolled, and one slice (its operand loaded once).
SLICE_LOOPS = (
    {"UNROLL": False, "NSLICE": 2, "BS": 64},
    {"UNROLL": True, "NSLICE": 2, "BS": 64},
    {"UNROLL": True, "NSLICE": 1, "BS": 32},
)


PIPED = {"UNROLL": True, "NSLICE": 1, "BS": 32}


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


def spills(ptx: str) -> str:
    """``ptxas -v`` on ``ptx`` for sm_90a: registers and spill bytes per thread."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as fh:
        fh.write(ptx)
        fh.flush()
        out = subprocess.run([ptxas, "-arch=sm_90a", "-v", fh.name, "-o", os.devnull], capture_output=True, text=True)
    text = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", text)
    stores = re.search(r"(\d+) bytes spill stores", text)
    return f"regs={regs.group(1) if regs else '?'} spill_stores={stores.group(1) if stores else '?'}"


def main() -> int:
    parser = argparse.ArgumentParser(description="Compile every TFLA kernel for sm_90 on the CPU.")
    parser.add_argument("--spills", action="store_true", help="print registers and spilled bytes per thread (ptxas)")
    show_spills = parser.parse_args().spills
    tiles = dict(BQ=64, BKV=64, BK=64, BV=64)
    cases = []
    for exp in (True, False):
        for dtype in ("bf16", "fp16", "fp32"):
            prec = "ieee" if dtype == "fp32" else "tf32"
            base = dict(L=128, EXP=exp, DOT_PREC=prec)
            cases += [
                *(
                    (chunk_fw.fw_chunk_states_kernel, dtype, dict(base, BL=bl, BK=64, BV=64, HAS_INIT=True))
                    for bl in (64, 128)  # two slices a chunk, one
                ),
                *(
                    (chunk_fw.fw_chunk_output_kernel, dtype, dict(base, NORMALIZE=True, STATE_STAGES=1, **tiles, **u))
                    for u in SLICE_LOOPS
                ),
                *(
                    (
                        chunk_bw.bw_chunk_state_grads_kernel,
                        dtype,
                        dict(base, BL=bl, BK=64, BV=64, HAS_DLAST=True, STATE_AHEAD=ahead, COMPILED=True),
                    )
                    for bl in (64, 128)  # two slices a chunk, one
                    for ahead in ((True, False) if dtype != "fp32" else (False,))  # ahead: 16-bit states
                ),
                *((chunk_bw.bw_chunk_dq_kernel, dtype, dict(base, STATE_STAGES=1, **tiles, **u)) for u in SLICE_LOOPS),
                # the pipelined state loop of the tables' large-chunk fw_output and wide-q/k bw_dq (narrower slices)
                (chunk_fw.fw_chunk_output_kernel, dtype, dict(base, NORMALIZE=True, STATE_STAGES=2, **tiles, **PIPED)),
                (chunk_bw.bw_chunk_dq_kernel, dtype, dict(base, STATE_STAGES=2, **tiles, **PIPED)),
                *((chunk_bw.bw_chunk_dk_kernel, dtype, dict(base, **tiles, **u)) for u in SLICE_LOOPS),
                *((chunk_bw.bw_chunk_dv_kernel, dtype, dict(base, **tiles, **u)) for u in SLICE_LOOPS),
            ]
    for exp in (True, False):  # the per-token gate kernels (a chunk of two scan blocks in gate_grads_kernel)
        cases += [
            (gates.gate_arrays_kernel, "fp32", dict(L=128, BT=128, EXP=exp)),
            (gates.gate_grads_kernel, "fp32", dict(L=2048, BT=1024, EXP=exp)),
        ]
    cases.append((gates.stabilizer_kernel, "fp32", dict(L=2048, BT=1024)))
    cases += [
        (gates.normalizer_grads_kernel, dtype, dict(BT=64, BD=64, NORMALIZE=normalize))
        for dtype in ("bf16", "fp16", "fp32")
        for normalize in (True, False)
    ]
    for kernel, dtype, constexprs in cases:
        src = ASTSource(fn=kernel, signature=signature(kernel, dtype, constexprs), constexprs=constexprs)
        try:
            compiled = triton.compile(src, target=TARGET, options={"num_warps": 4, "num_stages": 2})
        except Exception as err:  # noqa: BLE001 - report which kernel failed, then stop
            print(f"FAIL {kernel.__name__} {dtype} EXP={constexprs.get('EXP')}: {err}")
            return 1
        extra = f" {spills(compiled.asm['ptx'])}" if show_spills else ""
        print(
            f"ok   {kernel.__name__:32s} {dtype} EXP={constexprs.get('EXP')!s:5s} UNROLL={constexprs.get('UNROLL')!s:5s}"
            f" shared={compiled.metadata.shared}{extra}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
