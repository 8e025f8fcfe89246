"""Time a Gluon kernel against its Triton twin on the GPU, on the same inputs: the forward's output kernel
(``--kernel fw_output``: ``fw_chunk_output_kernel`` with the table's tiles against ``fw_output_kernel`` /
``fw_output_ws_kernel`` on ``tfla_fwd``'s states) or the backward's ``dv`` kernel (``--kernel bw_dv``:
``bw_chunk_dv_kernel`` against ``bw_dv_kernel`` on the arguments the Triton backward hands its own; ``--kernel
bw_dq`` / ``bw_dk``: ``bw_chunk_dq_kernel`` / ``bw_chunk_dk_kernel`` against ``bw_dq_dk_kernel`` likewise, one Gluon
run per ring depth of ``--stages`` (default: the deepest that fits), its chained products synchronous and one in
flight; ``--kernel bw_dq_dk``: both, Triton's two kernels against the Gluon kernel as two launches and as one). Prints a table with each one's time (``triton.testing.do_bench``, ms), its ratio to the Triton kernel and its
relative difference.
``--kernel fw_states``: ``fw_chunk_states_kernel`` against ``fw_states_kernel`` (``BQ`` is its token slice ``BL``;
``consumers`` its consumer warpgroups a program; each with its gates in the ``k`` tile's rows and packed, and packed
with one shared buffer a consumer for the state stores instead of two);
``--kernel bw_states``: ``bw_chunk_state_grads_kernel`` against ``bw_states_kernel`` likewise (one run per ring depth
of ``--stages``, default 2 and 3).
Usage: ``python scripts/gluon_time.py [--kernel fw_output|bw_dv|bw_dq|bw_dk|bw_dq_dk|fw_states|bw_states] [--shape 8,8,8192,256,512] [--chunk 128]
[--variant sig] [--gluon "64,64,128,4,0;64,64,256,4,1,1,2,1;..."] [--stages 4,6,8]``: Gluon tiles
``BQ,BKV,BV,num_warps,warp_specialized[,state_pieces[,consumers[,pingpong[,shared_scores]]]]`` (``bw_dv`` is always
warp-specialized; ``bw_dq`` and ``bw_dk`` take only ``num_warps`` from them; ``shared_scores`` is the output kernel's
``fw_output_shared_scores_kernel``, ``BV`` each of its two consumers' columns).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import triton

from kernels.gluon import mlstm_bw_dq_dk, mlstm_bw_dv, mlstm_bw_states, mlstm_fw_states
from kernels.gluon import mlstm_fw_output as fwo
from kernels.mlstm import tfla
from kernels.mlstm.chunk_fw import launch_fw_output
from kernels.mlstm.launch import gpu_sm_count
from kernels.mlstm.sm90_compile import HOPPER_SMEM_BYTES
from kernels.mlstm.tfla import tfla_fwd
from kernels.mlstm.tiles import choose_tiles, unpipelined_state_loads

TILE_FORM = "BQ,BKV,BV,num_warps,warp_specialized[,state_pieces[,consumers[,pingpong[,shared_scores]]]]"
OPTIONAL_DEFAULTS = (0, 1, 0, 0)  # state_pieces, consumers, pingpong, shared_scores


def gluon_tiles(text: str) -> list[tuple[int, ...]]:
    """``--gluon``: tiles ``TILE_FORM`` separated by ``;`` (argparse exits 2 otherwise); ``state_pieces`` defaults to
    0, ``consumers`` to 1, ``pingpong`` and ``shared_scores`` (the output kernel's, ``launch_args``) to 0."""
    try:
        tiles = [tuple(int(x) for x in tile.split(",")) for tile in text.split(";")]
    except ValueError:
        tiles = []
    if not tiles or any(len(t) not in (5, 6, 7, 8, 9) for t in tiles):
        raise argparse.ArgumentTypeError(f"want '{TILE_FORM}' (integers) per tile; got {text!r}")
    return [(*t, *OPTIONAL_DEFAULTS[len(t) - 5 :]) for t in tiles]


def stage_counts(text: str) -> tuple[int, ...]:
    """``--stages``: ring depths separated by ``,``, each at least 2 (argparse exits 2 otherwise)."""
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 2:
        raise argparse.ArgumentTypeError(f"want ring depths of at least 2 separated by ',', e.g. 4,6,8; got {text!r}")
    return counts


def _name(
    bq: int, bkv: int, bv: int, warps: int, ws: int, pieces: int, consumers: int, pingpong: int, shared: int = 0
) -> str:
    ws_part = f"ws{consumers}{' pingpong' if pingpong else ''}{' shared scores' if shared else ''} " if ws else ""
    return f"gluon {ws_part}BQ={bq} BKV={bkv} BV={bv} warps={warps}" + (" pieces" if pieces else "")


def fw_output_runs(a: argparse.Namespace, x: list[torch.Tensor], tiles: object) -> tuple[dict, torch.Tensor]:
    """The output kernels to time on the Triton forward's states, and the Triton ``h`` they must write."""
    q, k, v, i, f = x
    exp = normalize = a.variant == "exp"
    h, _, st = tfla_fwd(q, k, v, i, f, None, a.variant, normalize, a.chunk, 1e-6, tiles)
    common = (q, k, v, st.gate_b, st.gate_i, st.c_st, st.n_st, st.m_st)
    runs = {
        "triton (table)": lambda out: launch_fw_output(
            *common, out, st.m_tok, torch.empty_like(st.z_tok), a.chunk, exp, normalize, 1e-6, tiles.fw_output
        )
    }
    for bq, bkv, bv, warps, ws, pieces, consumers, pingpong, shared in a.gluon:
        options = dict(
            bq=bq, bkv=bkv, bv=bv, num_warps=warps, warp_specialized=bool(ws), state_pieces=bool(pieces),
            consumers=consumers, pingpong=bool(pingpong), shared_scores=bool(shared),
        )  # fmt: skip
        runs[_name(bq, bkv, bv, warps, ws, pieces, consumers, pingpong, shared)] = lambda out, options=options: (
            fwo.launch_fw_output(
                *common, out, st.m_tok, torch.empty_like(st.z_tok), a.chunk, exp, normalize, 1e-6, **options
            )
        )
    return runs, h


def recorded_launches(a: argparse.Namespace, x: list[torch.Tensor], *names: str) -> list[tuple[Callable, tuple]]:
    """For each of ``names``: the Triton launcher ``tfla.<name>`` and the arguments one Triton backward on ``x``
    hands it (recorded; the same backward for all, so that they share its ``dh``)."""
    launchers = {name: getattr(tfla, name) for name in names}
    calls: dict[str, list[tuple]] = {name: [] for name in names}
    for name, launcher in launchers.items():
        setattr(tfla, name, lambda *args, name=name, launcher=launcher: (calls[name].append(args), launcher(*args))[1])
    try:
        x = [t.detach().requires_grad_(True) for t in x]
        h = tfla.mlstm_tfla(*x, variant=a.variant, normalize=a.variant == "exp", chunk_size=a.chunk, backend="triton")
        h.backward(torch.randn_like(h))
    finally:
        for name, launcher in launchers.items():
            setattr(tfla, name, launcher)
    return [(launchers[name], calls[name][0]) for name in names]


def recorded_launch(a: argparse.Namespace, x: list[torch.Tensor], name: str) -> tuple[Callable, tuple]:
    """``recorded_launches`` of one launcher."""
    return recorded_launches(a, x, name)[0]


def bw_dv_runs(a: argparse.Namespace, x: list[torch.Tensor], tiles: object) -> tuple[dict, torch.Tensor]:
    """The ``dv`` kernels to time on the arguments one Triton backward hands its own (recorded), and its ``dv``."""
    triton_dv, (*tensors, dv, chunk, exp, dv_tiles) = recorded_launch(a, x, "launch_bw_dv")
    runs = {"triton (table)": lambda out: triton_dv(*tensors, out, chunk, exp, dv_tiles)}
    for bq, bkv, bv, warps, _, pieces, consumers, pingpong, _ in a.gluon:
        options = dict(
            bq=bq, bkv=bkv, bv=bv, num_warps=warps, state_pieces=bool(pieces), consumers=consumers,
            pingpong=bool(pingpong),
        )  # fmt: skip
        runs[_name(bq, bkv, bv, warps, 1, pieces, consumers, pingpong)] = lambda out, options=options: (
            mlstm_bw_dv.launch_bw_dv(*tensors, out, chunk, exp, **options)
        )
    return runs, dv


def bw_dq_dk_runs(a: argparse.Namespace, x: list[torch.Tensor], tiles: object) -> tuple[dict, torch.Tensor]:
    """The ``dq`` or ``dk`` kernels (``a.kernel``) to time on the arguments one Triton backward hands its own
    (recorded), and its gradient."""
    triton_launch, (*tensors, grad, chunk, exp, grad_tiles) = recorded_launch(a, x, f"launch_{a.kernel}")
    gluon_launch = getattr(mlstm_bw_dq_dk, f"launch_{a.kernel}")
    runs = {"triton (table)": lambda out: triton_launch(*tensors, out, chunk, exp, grad_tiles)}
    for warps in dict.fromkeys(tile[3] for tile in a.gluon):
        for stages in a.stages or (None,):
            for async_mma in (False, True):
                options = {"stages": stages, "num_warps": warps, "async_mma": async_mma}
                name = f"gluon ws1 stages={stages or 'deepest'}{' async' if async_mma else ''}"
                runs[f"{name} warps={warps}"] = lambda out, options=options: gluon_launch(
                    *tensors, out, chunk, exp, **options
                )
    return runs, grad


def bw_dq_dk_pair_runs(a: argparse.Namespace, x: list[torch.Tensor], tiles: object) -> tuple[dict, torch.Tensor]:
    """``dq`` and ``dk`` together (``--kernel bw_dq_dk``): the two Triton kernels, the Gluon kernel as two launches
    and as one (``bw_dq_dk_pair_kernel``), on the arguments one Triton backward hands its own (recorded); the
    expected output is Triton's ``dq`` and ``dk`` stacked, and each run writes its two halves."""
    (dq_launch, (*dq_tensors, dq, chunk, exp, dq_tiles)), (dk_launch, (*dk_tensors, dk, _, _, dk_tiles)) = (
        recorded_launches(a, x, "launch_bw_dq", "launch_bw_dk")
    )
    runs = {
        "triton dq + dk": lambda out: (
            dq_launch(*dq_tensors, out[0], chunk, exp, dq_tiles),
            dk_launch(*dk_tensors, out[1], chunk, exp, dk_tiles),
        )
    }
    for warps in dict.fromkeys(tile[3] for tile in a.gluon):
        for async_mma in (False, True):
            for one_launch in (False, True):
                options = {"num_warps": warps, "async_mma": async_mma, "one_launch": one_launch}
                name = f"gluon {'one launch' if one_launch else 'two launches'}{' async' if async_mma else ''}"
                runs[f"{name} warps={warps}"] = lambda out, options=options: mlstm_bw_dq_dk.launch_bw_dq_dk(
                    (*dq_tensors, out[0]), (*dk_tensors, out[1]), chunk, exp, **options
                )
    return runs, torch.stack([dq, dk])


def fw_states_runs(a: argparse.Namespace, x: list[torch.Tensor], tiles: object) -> tuple[dict, torch.Tensor]:
    """The state kernels to time on the arguments one Triton forward hands its own (recorded), and its chunk states
    (the runs write ``n``, ``m`` and the last state into scratch tensors)."""
    triton_launch, (k, v, gate_b, gate_i, init, c_st, n_st, m_st, c_last, chunk, exp, st_tiles) = recorded_launch(
        a, x, "launch_fw_states"
    )
    scratch = (torch.empty_like(n_st), torch.empty_like(m_st), torch.empty_like(c_last))
    runs = {
        "triton (table)": lambda out: triton_launch(k, v, gate_b, gate_i, init, out, *scratch, chunk, exp, st_tiles)
    }
    for bl, _, bv, _, _, _, consumers, _, _ in a.gluon:
        for stages in a.stages or (2, 4):
            for packed, bufs in ((False, 2), (True, 2), (True, 1)):
                options = {
                    "bl": bl,
                    "bv": bv,
                    "stages": stages,
                    "consumers": consumers,
                    "packed_gates": packed,
                    "store_bufs": bufs,
                }
                name = (
                    f"gluon ws{consumers} BL={bl} BK=64 BV={bv} stages={stages}{' packed gates' if packed else ''}"
                    f"{' one store buffer' if bufs == 1 else ''}"
                )
                runs[name] = lambda out, options=options: mlstm_fw_states.launch_fw_states(
                    k, v, gate_b, gate_i, init, out, *scratch, chunk, exp, **options
                )
    return runs, c_st


def bw_states_runs(a: argparse.Namespace, x: list[torch.Tensor], tiles: object) -> tuple[dict, torch.Tensor]:
    """The state-gradient kernels to time on the arguments one Triton backward hands its own (recorded), and its
    state gradients (the first, which neither kernel writes, zeroed by every run)."""
    triton_launch, (*tensors, dc_st, dn_st, dc_first, has_dlast, chunk, exp, st_tiles) = recorded_launch(
        a, x, "launch_bw_states"
    )
    dc_st[:, 0].zero_()
    scratch = (torch.empty_like(dn_st), torch.empty_like(dc_first))
    runs = {
        "triton (table)": lambda out: (
            out[:, 0].zero_(),
            triton_launch(*tensors, out, *scratch, has_dlast, chunk, exp, st_tiles),
        )
    }
    for bl, _, bv, _, _, _, consumers, _, _ in a.gluon:
        for stages in a.stages or (2, 3):
            # two forward state slots a consumer where they fit in shared memory (two consumers of 256 columns: one)
            two_fit = mlstm_bw_states.shared_bytes(bl, bv, stages, consumers, 2) <= HOPPER_SMEM_BYTES
            for slots in (2, 1) if two_fit else (1,):
                options = {"bl": bl, "bv": bv, "stages": stages, "consumers": consumers, "state_slots": slots}
                name = f"gluon ws{consumers} BL={bl} BK=64 BV={bv} stages={stages}" + (
                    " one slot" if slots == 1 else ""
                )
                runs[name] = lambda out, options=options: (
                    out[:, 0].zero_(),
                    mlstm_bw_states.launch_bw_states(*tensors, out, *scratch, has_dlast, chunk, exp, **options),
                )
    return runs, dc_st


DEFAULT_TILES = {  # v14's fastest (two consumers, pieces) without and with ping-pong turns, beside one consumer
    "fw_output": "64,64,256,4,1,1;64,64,256,4,1,1,2;64,32,256,4,1,1,2;64,64,256,4,1,1,2,1;64,32,256,4,1,1,2,1",
    "bw_dv": "64,64,256,4,1,1;64,64,256,4,1,1,2;64,64,256,4,1,1,2,1",
    "bw_dq": "64,64,64,4,1;64,64,64,8,1",
    "bw_dk": "64,64,64,4,1;64,64,64,8,1",
    "bw_dq_dk": "64,64,64,4,1;64,64,64,8,1",
    "fw_states": "128,64,128,4,1;64,64,128,4,1,0,2;64,64,64,4,1,0,2;128,64,64,4,1,0,2",  # BL, -, BV, ..., consumers
    "bw_states": "128,64,128,4,1,0,2;64,64,128,4,1,0,2;128,64,128,4,1",  # two consumers: 128 or 64 tokens a slice
}
RUNS = {
    "fw_output": fw_output_runs,
    "bw_dv": bw_dv_runs,
    "bw_dq": bw_dq_dk_runs,
    "bw_dk": bw_dq_dk_runs,
    "bw_dq_dk": bw_dq_dk_pair_runs,
    "fw_states": fw_states_runs,
    "bw_states": bw_states_runs,
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kernel", default="fw_output", choices=tuple(DEFAULT_TILES))
    p.add_argument("--shape", default="8,8,8192,256,512", help="B,NH,S,DHQK,DHHV")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--variant", default="sig", choices=("sig", "exp"))
    p.add_argument("--gluon", type=gluon_tiles, help=f"Gluon tiles to time, '{TILE_FORM}' separated by ';'")
    p.add_argument(
        "--stages",
        type=stage_counts,
        help="bw_dq, bw_dk, fw_states, bw_states: ring depths, e.g. 2,3,4 (default: the deepest; fw_states: 2,4; "
        "bw_states: 2,3)",
    )
    a = p.parse_args()
    a.gluon = a.gluon or gluon_tiles(DEFAULT_TILES[a.kernel])
    b, nh, s, dqk, dv = (int(x) for x in a.shape.split(","))
    dev, dtype = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    x = [torch.randn(b, nh, s, d, device=dev, dtype=dtype) for d in (dqk, dqk, dv)]
    x += [torch.randn(b, nh, s, device=dev, dtype=dtype), (torch.randn(b, nh, s, device=dev) + 3.0).to(dtype)]
    tiles = unpipelined_state_loads(choose_tiles(a.chunk, dqk, dv, False, dtype, b * nh, gpu_sm_count(dev)), dtype)
    runs, expected = RUNS[a.kernel](a, x, tiles)
    print(
        f"{torch.cuda.get_device_name()}, triton {triton.__version__}, {a.kernel}, shape {a.shape}, chunk {a.chunk}, "
        f"{a.variant}"
    )
    print(
        f"kernel | ms | / triton | rel diff of "
        f"{dict(fw_output='h', bw_dv='dv', bw_dq='dq', bw_dk='dk', bw_dq_dk='dq, dk', fw_states='C', bw_states='dC')[a.kernel]}"
    )
    base = None
    for name, run in runs.items():
        out = torch.full_like(expected, float("nan"))
        try:
            run(out)
            torch.cuda.synchronize()
            ms = triton.testing.do_bench(lambda run=run, out=out: run(out), rep=200)
        except Exception as e:  # noqa: BLE001 - a tile that does not fit is a line of the table
            print(f"{name} | - | - | {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        base = base or ms
        diff = ((out.double() - expected.double()).norm() / expected.double().norm()).item()
        print(f"{name} | {ms:.3f} | {ms / base:.3f} | {diff:.2e}")


if __name__ == "__main__":
    main()
