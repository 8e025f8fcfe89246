"""Time the forward's output kernel on the GPU: the Triton ``fw_chunk_output_kernel`` (the table's tiles) against
the Gluon ``fw_output_kernel`` and ``fw_output_ws_kernel`` on the same ``tfla_fwd`` states; prints a table with
each one's time (``triton.testing.do_bench``, ms), its ratio to the Triton kernel and its relative difference.
Usage: ``python scripts/gluon_fw_output_time.py [--shape 8,8,8192,256,512] [--chunk 128] [--variant sig]
[--gluon "64,64,128,4,0;64,64,256,4,1,1,2;..."]``: Gluon tiles
``BQ,BKV,BV,num_warps,warp_specialized[,state_pieces[,consumers]]``.
"""

from __future__ import annotations

import argparse

import torch
import triton

from kernels.gluon import mlstm_fw_output as fwo
from kernels.mlstm.chunk_fw import launch_fw_output
from kernels.mlstm.launch import gpu_sm_count
from kernels.mlstm.tfla import tfla_fwd
from kernels.mlstm.tiles import choose_tiles, unpipelined_state_loads

TILE_FORM = "BQ,BKV,BV,num_warps,warp_specialized[,state_pieces[,consumers]]"
OPTIONAL_DEFAULTS = (0, 1)  # state_pieces, consumers


def gluon_tiles(text: str) -> list[tuple[int, ...]]:
    """``--gluon``: tiles ``TILE_FORM`` separated by ``;`` (argparse exits 2 otherwise); ``state_pieces`` defaults to
    0, ``consumers`` to 1."""
    try:
        tiles = [tuple(int(x) for x in tile.split(",")) for tile in text.split(";")]
    except ValueError:
        tiles = []
    if not tiles or any(len(t) not in (5, 6, 7) for t in tiles):
        raise argparse.ArgumentTypeError(f"want '{TILE_FORM}' (integers) per tile; got {text!r}")
    return [(*t, *OPTIONAL_DEFAULTS[len(t) - 5 :]) for t in tiles]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="8,8,8192,256,512", help="B,NH,S,DHQK,DHHV")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--variant", default="sig", choices=("sig", "exp"))
    p.add_argument(
        "--gluon",
        type=gluon_tiles,
        default="64,64,128,4,0;64,64,128,4,1;64,64,256,4,0,1;64,64,256,4,1,1;64,64,256,4,1,1,2;64,32,256,4,1,1,2",
        help=f"Gluon tiles to time, '{TILE_FORM}' separated by ';'",
    )
    a = p.parse_args()
    b, nh, s, dqk, dv = (int(x) for x in a.shape.split(","))
    dev, dtype = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    q, k = (torch.randn(b, nh, s, dqk, device=dev, dtype=dtype) for _ in range(2))
    v = torch.randn(b, nh, s, dv, device=dev, dtype=dtype)
    i = torch.randn(b, nh, s, device=dev, dtype=dtype)
    f = (torch.randn(b, nh, s, device=dev) + 3.0).to(dtype)
    exp, normalize = a.variant == "exp", a.variant == "exp"
    tiles = unpipelined_state_loads(choose_tiles(a.chunk, dqk, dv, False, dtype, b * nh, gpu_sm_count(dev)), dtype)
    h, _, st = tfla_fwd(q, k, v, i, f, None, a.variant, normalize, a.chunk, 1e-6, tiles)
    common = (q, k, v, st.gate_b, st.gate_i, st.c_st, st.n_st, st.m_st)

    def triton_kernel(out: torch.Tensor, z: torch.Tensor) -> None:
        launch_fw_output(*common, out, st.m_tok, z, a.chunk, exp, normalize, 1e-6, tiles.fw_output)

    runs = {"triton (table)": triton_kernel}
    for bq, bkv, bv, warps, ws, pieces, consumers in a.gluon:
        name = f"gluon {f'ws{consumers} ' if ws else ''}BQ={bq} BKV={bkv} BV={bv} warps={warps}" + (
            " pieces" if pieces else ""
        )
        options = dict(
            bq=bq, bkv=bkv, bv=bv, num_warps=warps, warp_specialized=bool(ws), state_pieces=bool(pieces),
            consumers=consumers,
        )  # fmt: skip
        runs[name] = lambda out, z, options=options: fwo.launch_fw_output(
            *common, out, st.m_tok, z, a.chunk, exp, normalize, 1e-6, **options
        )
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}, shape {a.shape}, chunk {a.chunk}, {a.variant}")
    print("kernel | ms | / triton | rel diff of h")
    base = None
    for name, run in runs.items():
        out, z = torch.full_like(h, float("nan")), torch.empty_like(st.z_tok)
        try:
            run(out, z)
            torch.cuda.synchronize()
            ms = triton.testing.do_bench(lambda run=run, out=out, z=z: run(out, z), rep=200)
        except Exception as e:  # noqa: BLE001 - a tile that does not fit is a line of the table
            print(f"{name} | - | - | {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        base = base or ms
        diff = ((out.double() - h.double()).norm() / h.double().norm()).item()
        print(f"{name} | {ms:.3f} | {ms / base:.3f} | {diff:.2e}")


if __name__ == "__main__":
    main()
