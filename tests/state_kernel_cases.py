"""Every state-kernel launch the tile tables make, compiled for sm_90 on the CPU: ``python -m tests.state_kernel_cases``
prints one JSON object (case name -> shared bytes, registers, spilled bytes, whether bw_states reads the state
ahead; or the error) for ``tests/test_state_kernel_fit.py``. Run it without ``TRITON_INTERPRET`` (the test does).
The tables are walked at chunks 64..256, head dims 16/32 to 256/512 and every dtype, for mLSTMexp (it asks more
shared memory and registers than mLSTMsig); launches that compile alike (same tiles, dtype and one or several
slices a chunk) are compiled once."""

from __future__ import annotations

import itertools
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor

CHUNKS = (64, 128, 256)
HEAD_DIMS = ((16, 32), (32, 32), (64, 64), (128, 128), (128, 256), (256, 512))
DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def launches() -> dict[str, tuple[str, str, dict[str, object]]]:
    """Case name -> (kernel name, dtype, constexprs with warps and stages), one per distinct compilation."""
    import torch

    from kernels.mlstm.chunk_bw import bw_states_constexprs
    from kernels.mlstm.chunk_fw import fw_states_constexprs
    from kernels.mlstm.tiles import choose_tiles

    cases: dict[str, tuple[str, str, dict[str, object]]] = {}
    for (name, dt), chunk, (dqk, dv) in itertools.product(DTYPES.items(), CHUNKS, HEAD_DIMS):
        dtype = getattr(torch, name)
        tiles = choose_tiles(chunk, dqk, dv, False, dtype)
        for kernel, t, make in (
            ("fw_chunk_states_kernel", tiles.fw_states, fw_states_constexprs),
            ("bw_chunk_state_grads_kernel", tiles.bw_states, bw_states_constexprs),
        ):
            constexprs = make(t, chunk, dtype, True, False)  # mLSTMexp: more shared memory and registers than sig
            # one slice a chunk, or several: the loop compiles alike for any count of several
            constexprs["L"] = t.BQ if chunk == t.BQ else 2 * t.BQ
            key = f"{kernel} {dt} " + " ".join(f"{k}={v}" for k, v in sorted(constexprs.items()))
            cases[key] = (kernel, dt, constexprs)
    return cases


def _compile(case: tuple[str, str, dict[str, object]]) -> dict[str, object]:
    from kernels.mlstm import chunk_bw, chunk_fw
    from kernels.mlstm.sm90_compile import compile_sm90

    kernel_name, dtype, constexprs = case
    kernel = getattr(chunk_fw if kernel_name.startswith("fw") else chunk_bw, kernel_name)
    launch = {k: constexprs[k] for k in ("num_warps", "num_stages")}
    args = {k: v for k, v in constexprs.items() if k not in launch}
    try:
        facts = compile_sm90(kernel, dtype, args, **launch, usage=True, aligned=True)
    except Exception as err:  # noqa: BLE001 - the test reports which case failed and why
        return {"error": f"{type(err).__name__}: {err}"[:500]}
    return {
        "shared": facts.shared,
        "registers": facts.registers,
        "spill_bytes": facts.spill_bytes,
        "state_ahead": bool(args.get("STATE_AHEAD", False)),
    }


def report() -> dict[str, dict[str, object]]:
    cases = launches()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(cases, pool.map(_compile, cases.values())))


if __name__ == "__main__":
    json.dump(report(), sys.stdout, indent=1)
