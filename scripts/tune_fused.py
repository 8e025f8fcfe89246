"""Tile tuning for the fused inference forward (``kernels.mlstm.fused_fw``) on the GPU.

For each candidate ``KernelTiles`` (token block ``BQ``, value slice ``BV``, warps, stages; ``BK`` is always the
padded DHQK) times ``mlstm_tfla(..., fused=True)`` under ``torch.no_grad`` (``triton.testing.do_bench``,
median ms) next to the two-kernel forward (``fused=False``), and checks ``h`` against the current choice
(bf16: must agree to 2e-2). Compiles run first in ``--jobs`` spawned processes on a (1, 1, S, ...) problem.
Usage: ``python scripts/tune_fused.py --shape 8,8,8192,256,512 [--chunk 128] [--variant sig] [--out f.csv]``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

import torch
import triton
import triton.testing

import kernels.mlstm.tfla as tfla
from kernels.mlstm.tfla import KernelTiles, mlstm_tfla
from scripts.tune_tiles import make_inputs, rel


def candidates(dhqk: int) -> list[KernelTiles]:
    """Token blocks 32 / 64, value slices 32..128 (64 at most for DHQK > 128), 4 / 8 warps, 1..3 stages."""
    bk = triton.next_power_of_2(dhqk)
    out = []
    for bq, bv, w, st in itertools.product((32, 64), (32, 64, 128), (4, 8), (1, 2, 3)):
        if bk * bv <= 256 * 64:
            out.append(KernelTiles(BQ=bq, BK=bk, BV=bv, num_warps=w, num_stages=st))
    return out


def forward(inputs: list[torch.Tensor], variant: str, chunk: int, tiles: KernelTiles | None) -> torch.Tensor:
    """``h`` of the fused forward with ``tiles`` (the current choice for None)."""
    choose = tfla.fused_tiles
    if tiles is not None:
        tfla.fused_tiles = lambda *args: tiles.fit(chunk, inputs[0].shape[-1], inputs[2].shape[-1])
    try:
        with torch.no_grad():
            return mlstm_tfla(*inputs, variant=variant, normalize=variant == "exp", chunk_size=chunk, fused=True)
    finally:
        tfla.fused_tiles = choose


def compile_one(shape: tuple[int, ...], variant: str, chunk: int, tiles: KernelTiles) -> str:
    try:
        forward(make_inputs((1, 1, *shape[2:])), variant, chunk, tiles)
        torch.cuda.synchronize()
        return ""
    except Exception as e:  # noqa: BLE001 - reported per candidate
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="8,8,8192,256,512", help="B,NH,S,DHQK,DHHV")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--variant", default="sig")
    p.add_argument("--jobs", type=int, default=12)
    p.add_argument("--out", default="")
    a = p.parse_args()
    shape = tuple(int(x) for x in a.shape.split(","))
    cands = candidates(shape[3])
    t0 = time.time()
    with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn")) as pool:
        errors = list(pool.map(compile_one, *zip(*[(shape, a.variant, a.chunk, c) for c in cands])))
    print(f"compiled {len(cands)} configs in {time.time() - t0:.0f}s", flush=True)
    inputs = [x.detach() for x in make_inputs(shape)]
    ref = forward(inputs, a.variant, a.chunk, None)
    kw = dict(variant=a.variant, normalize=a.variant == "exp", chunk_size=a.chunk)
    with torch.no_grad():
        two_kernel = triton.testing.do_bench(lambda: mlstm_tfla(*inputs, **kw, fused=False), return_mode="median")
    current = triton.testing.do_bench(lambda: forward(inputs, a.variant, a.chunk, None), return_mode="median")
    rows = []
    for cand, err in zip(cands, errors):
        row = {"shape": a.shape, "chunk": a.chunk, "variant": a.variant, **asdict(cand)}
        if err:
            rows.append({**row, "status": err, "ms": float("nan"), "max_rel": float("nan")})
            continue
        worst = rel(forward(inputs, a.variant, a.chunk, cand), ref)
        ms = triton.testing.do_bench(lambda c=cand: forward(inputs, a.variant, a.chunk, c), return_mode="median")
        rows.append({**row, "status": "ok" if worst < 2e-2 else "wrong", "ms": ms, "max_rel": worst})
    if a.out:
        with open(a.out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["ms"])
    print(
        f"shape {a.shape} chunk {a.chunk} {a.variant}: two-kernel fw {two_kernel:.3f} ms, fused (current) {current:.3f} ms"
    )
    for r in ok[:5]:
        print(f"  {r['ms']:.3f} ms  BQ {r['BQ']} BV {r['BV']} warps {r['num_warps']} stages {r['num_stages']}")
    print(f"  failed or wrong: {sum(r['status'] != 'ok' for r in rows)} of {len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
