"""Tile tuning for the TFLA kernels on the GPU: per-kernel times of one fwbw pass for candidate tiles.

For each kernel (``kernels.mlstm.tiles.KERNELS``) and each candidate ``KernelTiles`` the other kernels keep
the current table (``choose_tiles``); every kernel's CUDA time is read from ``torch.profiler`` over a few
fwbw passes, and the outputs are compared with the current table's (bf16: must agree to 2e-2). Compiles
run first in ``--jobs`` spawned processes on small inputs (same specialization), so the timing pass only
hits Triton's cache. Prints the best candidate per kernel and writes every row to ``--out`` (CSV).
Usage: ``python scripts/tune_tiles.py --shape 8,8,8192,256,512 [--chunk 128] [--variant sig] [--out t.csv]
[--family rolled|unrolled|all|small]`` (``unrolled``: the ``unroll_slices`` tiles of the intra-chunk kernels;
``small``: whole head-dim tiles for head dims up to 128).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace

import torch
import triton

from bench.profile import kernel_times, tfla_inputs, tfla_pass
from kernels.mlstm.accuracy import relative_error as rel
from kernels.mlstm.launch import gpu_sm_count
from kernels.mlstm.tiles import (
    INTRA_CHUNK,
    KERNELS,
    STATE_READERS,
    KernelTiles,
    TileConfig,
    choose_tiles,
    unrolls_head_slices,
)

# Kernel -> (the head-dim tile its grid is split over, the one it loops over inside).
SPLIT = {"fw_states": ("BK", "BV"), "bw_states": ("BK", "BV"), **{k: v[:2] for k, v in INTRA_CHUNK.items()}}
PROFILE_NAMES = {
    "fw_states": "fw_chunk_states_kernel",
    "fw_output": "fw_chunk_output_kernel",
    "bw_states": "bw_chunk_state_grads_kernel",
    "bw_dq": "bw_chunk_dq_kernel",
    "bw_dk": "bw_chunk_dk_kernel",
    "bw_dv": "bw_chunk_dv_kernel",
}


def candidates(kernel: str, pipelined_states: bool = False, chunk: int = 128) -> list[KernelTiles]:
    """Head-dim tiles 64..256 on the split dim, 64/128 inside; 4/8 warps; 2/3 stages (1 as well for the
    kernels that read the chunk states; the ``STATE_READERS``' state-loading loop runs 1 stage for 16-bit states
    unless ``pipelined_states`` gives it the kernel's stages); token tiles 64 (and 128; fw_states also 32).
    From chunk 256 on, where the intra-chunk products dominate, also token tiles of 128 x 64, 64 x 128 and
    128 x 128 with 8 warps, and for fw_output the whole-width BV 512 (no recomputed q k^T at DHHV 512)."""
    split, inner = SPLIT[kernel]
    reader = kernel in STATE_READERS
    stages = (1, 2, 3) if reader else (2, 3)
    out = []
    for s, i, w, st in itertools.product((64, 128, 256), (64, 128), (4, 8), stages):
        state_stages = st if reader and pipelined_states else None
        out.append(KernelTiles(**{split: s, inner: i}, num_warps=w, num_stages=st, state_stages=state_stages))
    for s in (64, 128):
        out.append(KernelTiles(BQ=128, BKV=128, **{split: s, inner: 64}, num_warps=8, num_stages=2))
    if kernel in ("fw_states", "bw_states"):  # token slices of 32 and 128 (one slice per chunk at chunk 128)
        for bq, s, w in itertools.product((32, 128), (64, 128), (4, 8)):
            out.append(KernelTiles(BQ=bq, BKV=bq, BK=s, BV=128, num_warps=w, num_stages=2))
    if kernel in ("fw_output", "bw_dq"):
        out.append(KernelTiles(BQ=128, BKV=64, **{split: 64, inner: 64}, num_warps=8, num_stages=2))
    if kernel in ("bw_dk", "bw_dv"):
        out.append(KernelTiles(BQ=64, BKV=128, **{split: 64, inner: 64}, num_warps=8, num_stages=2))
    if chunk >= 256 and kernel not in ("fw_states", "bw_states"):
        for (bq, bkv), s, i in itertools.product(((128, 64), (64, 128), (128, 128)), (128, 256), (64, 128)):
            out.append(KernelTiles(BQ=bq, BKV=bkv, **{split: s, inner: i}, num_warps=8, num_stages=2))
        if kernel == "fw_output":
            for i, w in itertools.product((64, 128), (4, 8)):
                out.append(KernelTiles(BV=512, BK=i, num_warps=w, num_stages=2))
    return list(dict.fromkeys(out))


def unrolled_candidates(kernel: str, dhqk: int, dhhv: int) -> list[KernelTiles]:
    """``unroll_slices`` tiles of an intra-chunk kernel: the sliced head dim whole (its operand loads once) or in
    halves, split tiles 128..512, fixed x streamed token tiles 64 x 32, 64 x 64, 128 x 64; 4/8 warps, 2/3 stages;
    kept where the fp32 accumulator takes at most 128 registers a thread and the bf16 tiles fit
    (``unrolls_head_slices``)."""
    if kernel not in INTRA_CHUNK:
        return []
    split, inner, streamed = INTRA_CHUNK[kernel]
    d, other = (dhqk, dhhv) if inner == "BK" else (dhhv, dhqk)
    fixed = "BQ" if streamed == "BKV" else "BKV"
    out = []
    whole = triton.next_power_of_2(d)
    for s, i, (f, st), w, stages in itertools.product(
        (128, 256, 512), (whole, whole // 2), ((64, 32), (64, 64), (128, 64)), (4, 8), (2, 3)
    ):
        t = KernelTiles(
            **{split: s, inner: i, fixed: f, streamed: st}, num_warps=w, num_stages=stages, unroll_slices=True
        )
        if (
            s <= triton.next_power_of_2(other)
            and f * s <= 4096 * w
            and unrolls_head_slices(kernel, t, dhqk, dhhv, input_bytes=2)
        ):
            out.append(t)
    return out


def small_candidates(kernel: str, dhqk: int, dhhv: int) -> list[KernelTiles]:
    """Tiles for small head dims (both at most 128): each head dim in one tile, so the token tiles carry the work:
    32..128 query and key tokens, 2/4/8 warps, 2/3 stages, intra-chunk kernels rolled and ``unroll_slices``."""
    if max(dhqk, dhhv) > 128:
        return []
    heads = {"BK": triton.next_power_of_2(dhqk), "BV": triton.next_power_of_2(dhhv)}
    tokens = ((64, 64), (128, 64), (64, 128), (128, 128), (32, 64), (64, 32))
    if kernel in ("fw_states", "bw_states"):  # BQ is their token slice
        tokens = ((32, 32), (64, 64), (128, 128))
    unroll = (False, True) if kernel in INTRA_CHUNK else (False,)
    return [
        KernelTiles(BQ=bq, BKV=bkv, **heads, num_warps=w, num_stages=st, unroll_slices=u)
        for (bq, bkv), w, st, u in itertools.product(tokens, (2, 4, 8), (2, 3), unroll)
    ]


def compile_one(shape: tuple[int, ...], variant: str, chunk: int, tiles: TileConfig) -> str:
    """Run once on a (1, 1, S, ...) problem so Triton compiles this config; '' or the error."""
    try:
        small = (1, 1, *shape[2:])
        inputs = tfla_inputs(small)
        tfla_pass(inputs, torch.randn_like(inputs[2]), variant, chunk, tiles)
        torch.cuda.synchronize()
        return ""
    except Exception as e:  # noqa: BLE001 - reported per candidate
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


def _times(run, passes: int) -> dict[str, float]:  # noqa: ANN001
    """CUDA us per pass of every kernel ``run`` launches, by kernel name."""
    return {t.name: t.us for t in kernel_times(run, passes)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="8,8,8192,256,512", help="B,NH,S,DHQK,DHHV")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--variant", default="sig")
    p.add_argument("--kernels", default=",".join(KERNELS))
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--jobs", type=int, default=12)
    p.add_argument("--out", default="")
    p.add_argument(
        "--family",
        choices=("rolled", "unrolled", "all", "small"),
        default="all",
        help="candidates: rolled head-dim slices (candidates), unroll_slices ones (unrolled_candidates), both, or"
        " whole head-dim tiles for head dims up to 128 (small_candidates)",
    )
    p.add_argument(
        "--pipelined-states",
        action="store_true",
        help="the readers' state loops run the candidate's stages (check with check_state_loads.py first)",
    )
    a = p.parse_args()
    shape = tuple(int(x) for x in a.shape.split(","))
    base = choose_tiles(
        a.chunk, shape[3], shape[4], False, torch.bfloat16, shape[0] * shape[1], gpu_sm_count(torch.device("cuda"))
    )

    def family(kernel: str) -> list[KernelTiles]:
        if a.family == "small":
            return small_candidates(kernel, shape[3], shape[4])
        rolled = candidates(kernel, a.pipelined_states, a.chunk) if a.family != "unrolled" else []
        return rolled + (unrolled_candidates(kernel, shape[3], shape[4]) if a.family != "rolled" else [])

    trials = [
        (kernel, cand)
        for kernel in a.kernels.split(",")
        for cand in family(kernel)
        if cand.fit(a.chunk, shape[3], shape[4]) == cand
    ]
    configs = [replace(base, **{kernel: cand}) for kernel, cand in trials]
    t0 = time.time()
    with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn")) as pool:
        errors = list(pool.map(compile_one, *zip(*[(shape, a.variant, a.chunk, c) for c in [base, *configs]])))
    print(f"compiled {len(configs) + 1} configs in {time.time() - t0:.0f}s", flush=True)
    if errors[0]:
        print(f"current table fails: {errors[0]}")
        return 1
    inputs = tfla_inputs(shape)
    dh = torch.randn_like(inputs[2])
    ref = tfla_pass(inputs, dh, a.variant, a.chunk, base)
    base_times = _times(lambda: tfla_pass(inputs, dh, a.variant, a.chunk, base), a.iters)
    rows = []
    for (kernel, cand), cfg, err in zip(trials, configs, errors[1:]):
        row = {"shape": a.shape, "chunk": a.chunk, "variant": a.variant, "kernel": kernel, **asdict(cand)}
        if err:
            rows.append({**row, "status": err, "us": float("nan"), "base_us": float("nan"), "max_rel": float("nan")})
            continue
        out = tfla_pass(inputs, dh, a.variant, a.chunk, cfg)
        worst = max(rel(x, y) for x, y in zip(out, ref))
        times = _times(lambda cfg=cfg: tfla_pass(inputs, dh, a.variant, a.chunk, cfg), a.iters)
        name = next((key for key in base_times if PROFILE_NAMES[kernel] in key), PROFILE_NAMES[kernel])
        status = "ok" if worst < 2e-2 else "wrong"
        rows.append(
            {
                **row,
                "status": status,
                "us": times.get(name, float("nan")),
                "base_us": base_times.get(name, float("nan")),
                "max_rel": worst,
            }
        )
    if a.out:
        with open(a.out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    print(f"shape {a.shape} chunk {a.chunk} {a.variant}: best per kernel (us; current table in brackets)")
    total_base = total_best = 0.0
    for kernel in a.kernels.split(","):
        ok = [r for r in rows if r["kernel"] == kernel and r["status"] == "ok"]
        fails = sum(r["kernel"] == kernel and r["status"] != "ok" for r in rows)
        if not ok:
            continue
        best = min(ok, key=lambda r: r["us"])
        total_base += best["base_us"]
        total_best += min(best["us"], best["base_us"])
        fields = ("BQ", "BKV", "BK", "BV", "num_warps", "num_stages", "state_stages", "unroll_slices")
        tiles = {k: best[k] for k in fields}
        print(f"  {kernel:10s} {best['us']:9.1f} [{best['base_us']:9.1f}] {tiles} (failed: {fails})")
    print(f"  total      {total_best:9.1f} [{total_base:9.1f}] us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
