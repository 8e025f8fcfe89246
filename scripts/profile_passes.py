"""Run a few TFLA passes at one shape so a profiler can attach (Nsight Compute on the H100).

Usage, e.g. the 7B forward kernels' counters (the first pass compiles and is skipped)::

    ncu --clock-control none -k regex:fw_chunk --launch-skip 2 --launch-count 2 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats \
        python3 scripts/profile_passes.py --shape 8,8,8192,256,512 --mode fw --passes 2

``--shape B,NH,S,DHQK,DHHV``; inputs are bf16 random with forget gates near 1 (as in ``tune_tiles.py``).
"""

from __future__ import annotations

import argparse

import torch

from kernels.mlstm.tfla import mlstm_tfla


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="8,8,8192,256,512", help="B,NH,S,DHQK,DHHV")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--variant", default="sig", choices=("sig", "exp"))
    p.add_argument("--mode", default="fw", choices=("fw", "fwbw"))
    p.add_argument("--passes", type=int, default=2)
    a = p.parse_args()
    B, NH, S, DK, DV = (int(x) for x in a.shape.split(","))
    g = torch.Generator(device="cuda").manual_seed(0)
    kw = dict(device="cuda", generator=g)
    q, k = (torch.randn(B, NH, S, DK, **kw).bfloat16() for _ in range(2))
    v = torch.randn(B, NH, S, DV, **kw).bfloat16()
    i, f = torch.randn(B, NH, S, **kw) * 2, torch.randn(B, NH, S, **kw) * 2 + 3
    inputs = [q, k, v, i, f]
    if a.mode == "fwbw":
        inputs = [x.requires_grad_() for x in inputs]
    dh = torch.randn_like(v)
    for _ in range(a.passes):
        h = mlstm_tfla(*inputs, variant=a.variant, chunk_size=a.chunk)
        if a.mode == "fwbw":
            h.backward(dh)
    torch.cuda.synchronize()
    print(f"{a.passes} {a.mode} passes at {a.shape}, chunk {a.chunk}, {a.variant}: done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
