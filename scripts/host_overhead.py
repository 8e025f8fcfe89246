"""Is a TFLA row timing the kernels or the host? For each head dim of the headdim preset (B=4, S=8192, width 4096,
DHQK = DHHV / 2, chunk 128): the harness's timing (``triton.testing.do_bench`` median, three times), the host time
per call (``--calls`` calls without synchronizing) and the sum of the CUDA kernel times (``torch.profiler``). Where
the host time reaches the kernel time, the row measures the host.

Usage on the device: ``python scripts/host_overhead.py [--mode fw|fwbw] [--dv 32,64,128,256,512]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import triton.testing
from profile_passes import fwbw, kernel_times, make_inputs

from kernels.mlstm.tfla import mlstm_tfla


def host_ms(run: callable, calls: int) -> float:
    """Host time per call (ms) of ``calls`` calls issued without synchronizing."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        run()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e3


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="fwbw", choices=("fw", "fwbw"))
    p.add_argument("--dv", default="32,64,128,256,512", help="DHHV values (heads = 4096 / DHHV, DHQK = DHHV / 2)")
    p.add_argument("--calls", type=int, default=20)
    a = p.parse_args()
    print(f"{a.mode}: {'var':4s} {'DHHV':>5s} {'bench ms (3 runs)':>20s} {'host ms/call':>12s} {'kernels ms':>10s}")
    for dv in (int(x) for x in a.dv.split(",")):
        inputs = make_inputs((4, 4096 // dv, 8192, dv // 2, dv), grad=a.mode == "fwbw")
        dh = torch.randn_like(inputs[2])
        for variant in ("sig", "exp"):

            def run(variant: str = variant) -> None:
                if a.mode == "fwbw":
                    fwbw(inputs, dh, variant, 128)
                else:
                    mlstm_tfla(*inputs, variant=variant, chunk_size=128)

            run()
            bench = [triton.testing.do_bench(run, return_mode="median") for _ in range(3)]
            host = host_ms(run, a.calls)
            kernels = sum(kernel_times(run, 5).values()) / 1e3
            runs = " ".join(f"{b:.3f}" for b in bench)
            print(f"{a.mode}: {variant:4s} {dv:5d} {runs:>20s} {host:12.3f} {kernels:10.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
