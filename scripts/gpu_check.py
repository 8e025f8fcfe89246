"""GPU check of the TFLA kernels (issue 3): bf16 forward and backward against the float64 reference.

Runs the full problem (default B=8, NH=8, S=8192, DHQK=256, DHHV=512) through our kernels for each
chunk size and compares two (batch, head) slices with the float64 parallel reference (heads are
independent). Also compares mLSTMsig with the official ``mlstm_kernels`` ``xl_chunk_siging`` kernel when
it is importable, and prints fw / fwbw times (``triton.testing.do_bench``, median ms). ``--reader-stages N``
runs the kernels that read the 16-bit chunk states (``STATE_READERS``) with N pipeline stages, ``--state-stages N``
only their state-loading loop.
Usage: ``python scripts/gpu_check.py [--seq-len 8192] [--chunks 64,128,256,512,1024] [--out results.csv]``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch
import triton.testing

from kernels.mlstm.accuracy import relative_error as rel
from kernels.mlstm.reference import mlstm_parallel
from kernels.mlstm.tfla import mlstm_tfla
from kernels.mlstm.tiles import STATE_READERS, TileConfig, choose_tiles

NAMES = ("h", "dq", "dk", "dv", "di", "df")


def reader_tiles(chunk: int, dhqk: int, dhhv: int, stages: int, state_stages: int) -> TileConfig | None:
    """The GPU tile table with ``stages`` pipeline stages for the ``STATE_READERS`` and ``state_stages`` for
    their state-loading loop (0: the table's; None when both are 0)."""
    if stages == 0 and state_stages == 0:
        return None
    tiles = choose_tiles(chunk, dhqk, dhhv, interpret=False)
    override = {"num_stages": stages} if stages else {}
    if state_stages:
        override["state_stages"] = state_stages
    return replace(tiles, **{n: replace(getattr(tiles, n), **override) for n in STATE_READERS})


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--dqk", type=int, default=256)
    p.add_argument("--dv", type=int, default=512)
    p.add_argument("--chunks", default="64,128,256,512,1024")
    p.add_argument("--tol", type=float, default=2e-2)
    p.add_argument("--reader-stages", type=int, default=0, help="stages of the STATE_READERS (0: the table's)")
    p.add_argument("--state-stages", type=int, default=0, help="stages of their state loop (0: 1 for 16-bit states)")
    p.add_argument("--out", default="")
    a = p.parse_args()
    B, NH, S, DK, DV = a.batch, a.heads, a.seq_len, a.dqk, a.dv
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    q = torch.randn(B, NH, S, DK, device=dev, dtype=dt)
    k = torch.randn(B, NH, S, DK, device=dev, dtype=dt)
    v = torch.randn(B, NH, S, DV, device=dev, dtype=dt)
    i = torch.randn(B, NH, S, device=dev) * 2
    f = torch.randn(B, NH, S, device=dev) * 2 + 3
    dh = torch.randn(B, NH, S, DV, device=dev, dtype=dt)
    slices = [(0, 0), (B - 1, NH - 1)]
    rows, failed = [], False
    for variant in ("exp", "sig"):
        refs = []
        for bi, hi in slices:
            ins = [x[bi : bi + 1, hi : hi + 1].double().requires_grad_() for x in (q, k, v, i, f)]
            h_ref = mlstm_parallel(*ins, variant=variant)
            grads = torch.autograd.grad(h_ref, ins, dh[bi : bi + 1, hi : hi + 1].double())
            refs.append((h_ref.detach(), *grads))
            del h_ref, grads, ins
        for L in [int(c) for c in a.chunks.split(",")]:
            ins = [x.clone().requires_grad_() for x in (q, k, v, i, f)]
            tiles = reader_tiles(L, DK, DV, a.reader_stages, a.state_stages)
            h = mlstm_tfla(*ins, variant=variant, chunk_size=L, tiles=tiles)
            got = (h, *torch.autograd.grad(h, ins, dh))
            errs = [
                max(rel(g[bi : bi + 1, hi : hi + 1], r[j]) for (bi, hi), r in zip(slices, refs))
                for j, g in enumerate(got)
            ]
            nan = any(not torch.isfinite(g).all() for g in got)
            fw_ms = triton.testing.do_bench(
                lambda: mlstm_tfla(q, k, v, i, f, variant=variant, chunk_size=L, tiles=tiles),
                return_mode="median",
            )

            def fwbw() -> None:
                xs = [x.detach().requires_grad_() for x in (q, k, v, i, f)]
                mlstm_tfla(*xs, variant=variant, chunk_size=L, tiles=tiles).backward(dh)

            fwbw_ms = triton.testing.do_bench(fwbw, return_mode="median")
            ok = not nan and max(errs) < a.tol
            failed |= not ok
            rows.append(
                (
                    f"tfla.mlstm_{variant}",
                    L,
                    *errs,
                    fw_ms,
                    fwbw_ms,
                    "ok" if ok else "FAIL",
                )
            )
            del got, h, ins
            torch.cuda.empty_cache()
    try:
        from mlstm_kernels.torch.chunkwise.triton_xl_chunk_siging import (
            mlstm_siging_chunkwise__xl_chunk,
        )
    except ImportError as err:
        print(f"official mlstm_kernels not importable: {err}")
    else:
        try:
            for L in (64, 128, 256):
                ins = [x.clone().requires_grad_() for x in (q, k, v, i, f)]
                h_off = mlstm_siging_chunkwise__xl_chunk(
                    *ins,
                    chunk_size=L,
                    normalize=True,
                    autocast_kernel_dtype=torch.bfloat16,
                )
                got = (h_off, *torch.autograd.grad(h_off, ins, dh))
                ours = [x.clone().requires_grad_() for x in (q, k, v, i, f)]
                h = mlstm_tfla(*ours, variant="sig", chunk_size=L)
                mine = (h, *torch.autograd.grad(h, ours, dh))
                errs = [rel(m, o) for m, o in zip(mine, got)]
                fw_ms = triton.testing.do_bench(
                    lambda: mlstm_siging_chunkwise__xl_chunk(
                        q,
                        k,
                        v,
                        i,
                        f,
                        chunk_size=L,
                        normalize=True,
                        autocast_kernel_dtype=torch.bfloat16,
                    ),
                    return_mode="median",
                )

                def fwbw_off() -> None:
                    xs = [x.detach().requires_grad_() for x in (q, k, v, i, f)]
                    mlstm_siging_chunkwise__xl_chunk(
                        *xs,
                        chunk_size=L,
                        normalize=True,
                        autocast_kernel_dtype=torch.bfloat16,
                    ).backward(dh)

                rows.append(
                    (
                        "official xl_chunk_siging (err: ours vs it)",
                        L,
                        *errs,
                        fw_ms,
                        triton.testing.do_bench(fwbw_off, return_mode="median"),
                        "info",
                    )
                )
                del got, mine, h, h_off
                torch.cuda.empty_cache()
        except Exception as err:  # noqa: BLE001 - the official kernel is only a comparison
            print(f"official xl_chunk_siging failed: {type(err).__name__}: {err}")
    header = (
        "kernel",
        "chunk",
        *[f"err_{n}" for n in NAMES],
        "fw_ms",
        "fwbw_ms",
        "status",
    )
    lines = [",".join(header)] + [",".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in r) for r in rows]
    if a.out:
        with open(a.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    print(f"B={B} NH={NH} S={S} DHQK={DK} DHHV={DV} bf16 on {torch.cuda.get_device_name()}, tolerance {a.tol}")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
