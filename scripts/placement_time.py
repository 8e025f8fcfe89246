"""Does where the tensors land in GPU memory set a config's time? (the chunk-512 fwbw spread, docs/performance.md v40)

One process, one kernel and problem. For each pad in ``--pads`` (MiB; a tensor of that size is allocated and held
first, so everything after it lands elsewhere), fresh inputs are made and the step is timed ``--rounds`` times
(``triton.testing.do_bench``, every repetition kept). Printed per pad and round: median, p20, p80 (ms) and the
p20..p80 band in percent of the median; last, the spread of the medians across pads against the mean band within
one.

Reading: narrow bands within a placement with medians that move between placements say placement; wide bands at
every pad say the passes alternate whatever the inputs' addresses (the intermediates' blocks, or something else).
``--graph`` times a captured CUDA graph instead (every address fixed within a capture).

Usage: python scripts/placement_time.py --chunk 512 --pads 0,2,64,130,512 [--mode fwbw] [--graph]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from bench import registry
from bench.measure import build_step
from bench.problem import Problem


def summary(times_ms: list[float]) -> tuple[float, float, float, float]:
    """(median, p20, p80, band in % of the median) of one round's repetitions (ms); quantiles by linear
    interpolation, as ``triton.testing.do_bench``'s."""
    med, p20, p80 = (float(x) for x in np.quantile(times_ms, [0.5, 0.2, 0.8]))
    return med, p20, p80, 100.0 * (p80 - p20) / med


def pad_list(text: str) -> list[int]:
    """``--pads``: comma-separated whole MiB >= 0."""
    try:
        pads = [int(p) for p in text.split(",")]
    except ValueError:
        pads = []
    if not pads or any(p < 0 for p in pads):
        raise argparse.ArgumentTypeError(f"--pads wants comma-separated whole MiB >= 0 (e.g. 0,2,64); got {text!r}")
    return pads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default="tfla.mlstm_sig")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--mode", default="fwbw", choices=["fw", "fwbw"])
    ap.add_argument("--shape", default="8,8,8192,256,512", help="batch,heads,seq_len,head_dim_qk,head_dim_v")
    ap.add_argument("--pads", type=pad_list, default=pad_list("0,2,64,130,512"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rep-ms", type=int, default=400)
    ap.add_argument("--graph", action="store_true")
    a = ap.parse_args()
    if a.rounds < 1 or a.rep_ms < 1:
        ap.error(f"--rounds and --rep-ms must be positive integers; got {a.rounds} and {a.rep_ms}")
    try:
        spec = registry.get(a.kernel)
    except ValueError as err:
        ap.error(f"--kernel: {err}")
    try:
        b, h, s, dqk, dv = (int(x) for x in a.shape.split(","))
        problem = Problem(b, h, s, dqk, dv, chunk_size=a.chunk, mode=a.mode).validate()
    except ValueError as err:
        ap.error(f"--shape / --chunk: {err}")
    import torch
    import triton.testing

    bench = triton.testing.do_bench_cudagraph if a.graph else triton.testing.do_bench
    rows = []
    for pad_mib in a.pads:
        pad = torch.empty(pad_mib << 20, dtype=torch.uint8, device="cuda") if pad_mib else None
        torch.manual_seed(0)
        inputs = spec.make_inputs(problem)
        step, leaves = build_step(spec, inputs, problem.mode)
        address = inputs[0].data_ptr()
        for r in range(a.rounds):
            times = bench(step, rep=a.rep_ms, grad_to_none=leaves or None, return_mode="all")
            med, p20, p80, band = summary(list(times))
            rows.append((pad_mib, r, med, band))
            print(
                f"pad {pad_mib:5d} MiB round {r} q at {address:#x}: median {med:.3f} ms "
                f"(p20 {p20:.3f}, p80 {p80:.3f}, band {band:.1f} %, n {len(times)})",
                flush=True,
            )
        del inputs, step, leaves, pad
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    medians = [m for _, _, m, _ in rows]
    spread = 100.0 * (max(medians) - min(medians)) / statistics.median(medians)
    mean_band = statistics.mean(b for *_, b in rows)
    print(
        f"{a.kernel} {a.mode} chunk {a.chunk} graph={a.graph}: medians {min(medians):.3f}..{max(medians):.3f} ms "
        f"(spread {spread:.1f} % of their median), mean band within a round {mean_band:.1f} %"
    )


if __name__ == "__main__":
    sys.exit(main())
