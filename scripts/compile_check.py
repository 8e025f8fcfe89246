"""Compile every TFLA kernel for sm_90 without a GPU (Triton front end, LLVM and ptxas run on the CPU).

Catches typing and lowering errors that the interpreter (which runs plain Python) cannot see. ``--spills``
also runs Triton's bundled ``ptxas -v`` on each kernel's PTX and prints its register spills (bytes per thread).
Usage: ``python scripts/compile_check.py [--spills]`` (exit 1 on the first kernel that does not compile).
"""

from __future__ import annotations

import argparse
import sys

from kernels.mlstm import chunk_bw, chunk_fw, gates
from kernels.mlstm.sm90_compile import compile_sm90

# The intra-chunk kernels' head-dim slice loops: rolled, unrolled, and one slice (its operand loaded once).
SLICE_LOOPS = (
    {"UNROLL": False, "NSLICE": 2, "BS": 64},
    {"UNROLL": True, "NSLICE": 2, "BS": 64},
    {"UNROLL": True, "NSLICE": 1, "BS": 32},
)


PIPED = {"UNROLL": True, "NSLICE": 1, "BS": 32}


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
        try:
            facts = compile_sm90(kernel, dtype, constexprs, num_warps=4, num_stages=2, usage=show_spills)
        except Exception as err:  # noqa: BLE001 - report which kernel failed, then stop
            print(f"FAIL {kernel.__name__} {dtype} EXP={constexprs.get('EXP')}: {err}")
            return 1
        extra = f" regs={facts.registers} spill_stores={facts.spill_bytes}" if show_spills else ""
        print(
            f"ok   {kernel.__name__:32s} {dtype} EXP={constexprs.get('EXP')!s:5s} UNROLL={constexprs.get('UNROLL')!s:5s}"
            f" shared={facts.shared}{extra}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
