"""Time the one-pass inference forward (``kernels.mlstm.chunk_fused``) against the two-pass forward on the same
inputs, on the GPU: each ``--fused`` option (chunk, BV, warps, stages) runs ``tfla_fwd_fused`` (``gate_arrays`` + ``fw_fused_kernel``); each
``--two-pass`` chunk runs ``mlstm_tfla`` under ``torch.no_grad`` with ``--backend``. Prints one row per run: time
(``triton.testing.do_bench``, ms, median), its ratio to the fastest two-pass run, and the relative difference of
its ``h`` from the first two-pass run's (a kernel that does not compile or launch gets its error instead).
Usage: ``python scripts/fused_time.py [--shape B,NH,S,DHQK,DHHV] [--variant sig] [--fused "64,64,8,2;..."]
[--two-pass 128,256] [--backend auto] [--csv out.csv]``.
"""

from __future__ import annotations

import argparse
import csv

import torch
import triton

from kernels.mlstm.tfla import mlstm_tfla, tfla_fwd_fused
from kernels.mlstm.tiles import KernelTiles

FUSED_FORM = "chunk,BV,num_warps,num_stages"


def fused_options(text: str) -> list[tuple[int, int, int, int]]:
    """``--fused``: ``FUSED_FORM`` tuples separated by ``;`` (argparse exits 2 otherwise)."""
    try:
        options = [tuple(int(x) for x in part.split(",")) for part in text.split(";")]
    except ValueError:
        options = []
    if not options or any(len(o) != 4 for o in options):
        raise argparse.ArgumentTypeError(f"want '{FUSED_FORM}' (integers) per option; got {text!r}")
    return options  # type: ignore[return-value]


def ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"want integers separated by ','; got {text!r}") from err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=ints, default=[8, 8, 8192, 256, 512], help="B,NH,S,DHQK,DHHV")
    parser.add_argument("--variant", choices=("sig", "exp"), default="sig")
    parser.add_argument("--fused", type=fused_options, default=fused_options("64,64,8,2"), help=FUSED_FORM + ";...")
    parser.add_argument("--two-pass", type=ints, default=[128, 256], help="chunk sizes of the two-pass forward")
    parser.add_argument("--backend", choices=("auto", "triton", "gluon"), default="auto")
    parser.add_argument("--csv", default=None)
    args = parser.parse_args()
    B, NH, S, DHQK, DHHV = args.shape
    torch.manual_seed(0)
    dev = dict(device="cuda", dtype=torch.bfloat16)
    q, k = torch.randn(B, NH, S, DHQK, **dev), torch.randn(B, NH, S, DHQK, **dev)
    v = torch.randn(B, NH, S, DHHV, **dev)
    i = torch.randn(B, NH, S, device="cuda")
    f = torch.randn(B, NH, S, device="cuda") + 3.0
    normalize = args.variant == "exp"
    rows: list[dict[str, object]] = []
    ref = None
    for chunk in args.two_pass:

        def run(chunk: int = chunk) -> torch.Tensor:
            with torch.no_grad():
                return mlstm_tfla(
                    q, k, v, i, f, variant=args.variant, normalize=normalize, chunk_size=chunk, backend=args.backend
                )

        h = run()
        ref = h.float() if ref is None else ref
        ms = triton.testing.do_bench(run, warmup=25, rep=200)
        rows.append(
            dict(
                run=f"two-pass {args.backend} chunk {chunk}", ms=ms, diff=((h.float() - ref).norm() / ref.norm()).item()
            )
        )
    best = min(r["ms"] for r in rows)
    for chunk, bv, warps, stages in args.fused:
        t = KernelTiles(BV=bv, num_warps=warps, num_stages=stages)
        name = f"fused chunk {chunk} BV {bv} w{warps} s{stages}"
        try:

            def run_fused(chunk: int = chunk, t: KernelTiles = t) -> torch.Tensor:
                return tfla_fwd_fused(q, k, v, i, f, None, args.variant, normalize, chunk, 1e-6, t)[0]

            h = run_fused()
            ms = triton.testing.do_bench(run_fused, warmup=25, rep=200)
            rows.append(dict(run=name, ms=ms, diff=((h.float() - ref).norm() / ref.norm()).item()))
        except Exception as err:  # a config that does not compile or launch: its reason, the others still run
            rows.append(dict(run=name, ms=float("nan"), diff=float("nan"), error=str(err).splitlines()[0][:120]))
        torch.cuda.synchronize()
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}, triton {triton.__version__}, shape {args.shape}, {args.variant}")
    print(f"{'run':<38} {'ms':>8} {'ratio':>7} {'rel diff':>9}")
    for r in rows:
        print(f"{r['run']:<38} {r['ms']:8.3f} {r['ms'] / best:7.3f} {r['diff']:9.2e} {r.get('error', '')}")
    if args.csv:
        with open(args.csv, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["gpu", "shape", "variant", "run", "ms", "diff", "error"])
            if fh.tell() == 0:
                w.writeheader()
            for r in rows:
                w.writerow(dict(gpu=gpu, shape=",".join(map(str, args.shape)), variant=args.variant, **r))


if __name__ == "__main__":
    main()
