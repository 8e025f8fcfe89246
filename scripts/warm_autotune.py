"""Compile the Triton autotune candidates of a sweep's kernels in parallel, before the sweep measures them.

A baseline whose Triton kernels autotune compiles every candidate of each autotuner, one after another, in the
first config of that kernel it runs: FLA's ``chunk_gla`` backward has 36 candidates in each of several kernels, and
at the 7B head dims (256 / 512) its first fwbw config did not finish within 6.9 minutes on the H200, longer than a
device call. Here ``--procs`` processes each run the first problem of every kernel (fwbw where the grid has it: its
forward is the fw mode's) with a 1/procs share of every autotuner's candidates, so every candidate's binary is in
Triton's on-disk cache when the sweep's own autotuning runs. They run it at batch ``--batch`` (default 2): FLA's
binaries depend on the head dims, the dtype and the sequence length (kept), while the batch only sizes their grids
(a binary the warm-up missed is compiled by the sweep, as without it), and at the 7B shape and the sweep's batch of
32 each process would hold gigabytes of chunk states and their gradients (2, not 1: Triton compiles an integer
argument equal to 1 apart). That autotuning is unchanged: all candidates, timed in
the sweep's worker, its result cached under a key that names the whole candidate list (a share's result has another
key and is never used). It then only loads binaries and benchmarks.

    python scripts/warm_autotune.py --preset consttoken7b --kernels 'fla.*' --seq-len 2048,8192 [--procs 6] [--batch 2]

Prints one line per kernel and share (seconds, or the error: a share that fails, e.g. out of memory, only leaves
its candidates to the sweep). Exit 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import queue
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def share(configs: list, index: int, count: int) -> list:
    """Share ``index`` of ``count`` of an autotuner's candidates (every ``count``-th from ``index``); one candidate
    when there are fewer candidates than shares, so that every share runs the kernel."""
    mine = [c for j, c in enumerate(configs) if j % count == index]
    return mine or [configs[index % len(configs)]]


def _keep_share(index: int, count: int) -> None:
    """Every Triton autotuner made from now on (FLA's are made when its modules are imported) keeps share
    ``index`` of its candidates."""
    from triton.runtime import autotuner

    init = autotuner.Autotuner.__init__

    def init_share(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        init(self, *args, **kwargs)
        if len(self.configs) > 1:
            self.configs = share(self.configs, index, count)

    autotuner.Autotuner.__init__ = init_share


def _run_share(
    index: int, count: int, preset: str, overrides: dict[str, object], batch: int, results: mp.Queue
) -> None:
    """Child process: share ``index``'s candidates of every kernel's first problem at ``batch`` (0: the grid's);
    one result per kernel."""
    _keep_share(index, count)
    import torch

    from bench.measure import build_step

    for spec, problem in first_problems(preset, overrides):
        problem = problem.with_(batch=batch or problem.batch)
        start = time.monotonic()
        try:
            step, _ = build_step(spec, spec.make_inputs(problem), problem.mode)
            step()
            if problem.device == "cuda":
                torch.cuda.synchronize()
            results.put((spec.name, index, f"{time.monotonic() - start:.0f} s"))
        except Exception as e:  # noqa: BLE001 - a failed share leaves its candidates to the sweep
            last = traceback.format_exception_only(e)[-1].strip()
            results.put((spec.name, index, f"failed after {time.monotonic() - start:.0f} s: {last[:160]}"))
        if problem.device == "cuda":
            torch.cuda.empty_cache()


def first_problems(preset: str, overrides: dict[str, object]) -> list:
    """Each available kernel of the grid with the first problem the sweep gives it (its fwbw one where the grid
    has fwbw)."""
    from bench.grid import load_preset

    chosen: dict[str, tuple] = {}
    for spec, problem in load_preset(preset).with_overrides(**overrides).configs():
        if spec.available() is not None or spec.supports(problem) is not None:
            continue
        if spec.name not in chosen or (problem.mode == "fwbw" and chosen[spec.name][1].mode != "fwbw"):
            chosen[spec.name] = (spec, problem)
    return list(chosen.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--kernels", help="comma-separated names or globs (default: the preset's)")
    parser.add_argument("--seq-len", help="e.g. 2048,8192 (default: the preset's)")
    parser.add_argument("--procs", type=int, default=6, help="processes, each compiling a share (default 6)")
    parser.add_argument("--batch", type=int, default=2, help="batch of the warm-up runs (default 2; 0: the grid's)")
    args = parser.parse_args(argv)
    if args.procs < 1:
        parser.error(f"--procs must be at least 1; got {args.procs}")
    if args.batch < 0:
        parser.error(f"--batch must be 0 (the grid's) or more; got {args.batch}")
    overrides: dict[str, object] = {}
    if args.kernels:
        overrides["kernels"] = [k.strip() for k in args.kernels.split(",") if k.strip()]
    if args.seq_len:
        try:
            overrides["seq_len"] = [int(s) for s in args.seq_len.split(",")]
        except ValueError:
            parser.error(f"--seq-len takes comma-separated integers; got {args.seq_len!r}")
    try:
        kernels = [spec.name for spec, _ in first_problems(args.preset, overrides)]
    except ValueError as e:
        parser.error(str(e))
    if not kernels:
        print("warm_autotune: no available kernel in the grid; nothing to compile")
        return 0
    context = mp.get_context("spawn")
    results = context.Queue()
    start = time.monotonic()
    procs = [
        context.Process(target=_run_share, args=(i, args.procs, args.preset, overrides, args.batch, results))
        for i in range(args.procs)
    ]
    for p in procs:
        p.start()
    lines = []
    while len(lines) < len(kernels) * args.procs and (any(p.is_alive() for p in procs) or not results.empty()):
        with contextlib.suppress(queue.Empty):
            lines.append(results.get(timeout=1))
    for p in procs:
        p.join()
    lines.sort()
    for name, index, outcome in lines:
        print(f"{name} share {index + 1}/{args.procs}: {outcome}")
    missing = len(kernels) * args.procs - len(lines)
    print(
        f"warm_autotune: {len(kernels)} kernels x {args.procs} shares in {time.monotonic() - start:.0f} s"
        + (f"; {missing} shares ended without a result (crashed)" if missing else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
