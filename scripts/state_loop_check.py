"""Device check of the pipelined state loops (``KernelTiles.state_stages``) of the ``STATE_READERS``: runs one
fwbw pass with the GPU tile table three times (every output and gradient must be bit-identical: no race) and once
with each reader's state loop in 1 stage over the same slices (must be bit-identical too), per variant and chunk.
Usage: ``python scripts/state_loop_check.py [--shape 8,8,8192,256,512] [--chunks 128,256,512,1024]`` (CUDA only;
exit 1 on a difference). Results: ``results/h100/logs/state_loop_pipelined_v7.log``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

import kernels.mlstm.tiles as T
from bench.profile import tfla_inputs, tfla_pass
from kernels.mlstm.accuracy import relative_error as rel
from kernels.mlstm.launch import gpu_sm_count

NAMES = ("h", "dq", "dk", "dv", "di", "df")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="8,8,8192,256,512", help="B,NH,S,DHQK,DHHV")
    p.add_argument("--chunks", default="128,256,512,1024")
    a = p.parse_args()
    shape = tuple(int(x) for x in a.shape.split(","))
    B, NH, _, DK, DV = shape
    inputs = tfla_inputs(shape)
    dh = torch.randn_like(inputs[2])
    sm = gpu_sm_count(inputs[0].device)
    failed = False
    for variant in ("exp", "sig"):
        for chunk in (int(c) for c in a.chunks.split(",")):
            table = T.choose_tiles(chunk, DK, DV, False, torch.bfloat16, B * NH, sm)
            ref = tfla_pass(inputs, dh, variant, chunk, table)
            runs = {f"table, run {r}": table for r in (2, 3)}
            for name in T.STATE_READERS:
                runs[f"{name} state loop in 1 stage"] = replace(
                    table, **{name: replace(getattr(table, name), state_stages=1)}
                )
            for label, tiles in runs.items():
                got = tfla_pass(inputs, dh, variant, chunk, tiles)
                same = [torch.equal(x, y) for x, y in zip(got, ref)]
                failed |= not all(same)
                diffs = " ".join(f"{n}={'=' if s else f'{rel(x, y):.1e}'}" for n, s, x, y in zip(NAMES, same, got, ref))
                print(f"{variant} chunk {chunk:5d} {label:34s} {diffs}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
