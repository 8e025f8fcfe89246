"""The TFLA backward's three intra-chunk gradients, ``dq``, ``dk`` and ``dv``, in one launch (Gluon, Hopper).

Row tile ``t`` (64 tokens) of a chunk has ``2 + NV`` programs side by side in the grid: the ``dq`` and ``dk``
programs of ``mlstm_bw_dq_dk.bw_dq_dk_pair_kernel`` (``pair_program``) and ``NV`` programs of
``mlstm_bw_dv.bw_dv_kernel`` (``dv_program``: one consumer warpgroup of the tile's 64 keys, ``BV`` columns of ``dv``
each). All of them read the chunk's ``q``, ``k`` and ``dh`` tiles (``dq`` and ``dk`` also ``v``; ``dk`` and ``dv`` the
state gradient ``dC``) while they are resident together, so each tile comes from DRAM about once a launch instead of
once a kernel: at 7B, S 8192, chunk 256 the pair and ``dv`` move 3.24 + 2.16 GB as two launches and about 3.78 GB as
one (``kernels.mlstm.cost``).

Both program kinds are one consumer warpgroup beside the one-warp load partition, so the branch on the program's
kind chooses between two ``warp_specialize`` regions of the same partition shape (regions with different worker
warps do not lower: ``setmaxnreg`` out of range); their shared buffers overlap, so the kernel takes the larger of
the two kinds' shared memory.
"""

from __future__ import annotations

from typing import Any

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from kernels.gluon import intra_chunk
from kernels.gluon import mlstm_bw_dq_dk as dq_dk
from kernels.gluon import mlstm_bw_dv as dv_kernel
from kernels.gluon.mlstm_bw_dq_dk import pair_program
from kernels.gluon.mlstm_bw_dv import dv_program
from kernels.mlstm.sm90_compile import HOPPER_SMEM_BYTES

MAX_DV_STAGES = 4


@gluon.jit
def bw_grads_kernel(
    Q_D,
    K_D,
    V_D,
    DH_D,
    C_D,
    DC_D,
    DQ_D,
    DK_D,
    GATE_B,
    GATE_I,
    INV_DEN,
    DZ,
    N_ST,
    DN_ST,
    M_ST,
    M_TOK,
    SUMS_Q,
    SUMS_K,
    SP,
    NC,
    DHQK,
    qk_scale,
    DV_Q_D,
    DV_K_D,
    DV_DH_D,
    DV_DC_D,
    DV_D,
    L: gl.constexpr,
    EXP: gl.constexpr,
    NVH: gl.constexpr,
    STAGES: gl.constexpr,
    ASYNC: gl.constexpr,
    NV: gl.constexpr,
    DV_S_INSTR_N: gl.constexpr,
    DV_O_INSTR_N: gl.constexpr,
    DV_STAGES: gl.constexpr,
    DV_STATE_PIECES: gl.constexpr,
    num_warps: gl.constexpr,
):
    """Grid ``((2 + NV) * NC * L / 64, BH, 1)``: program ``(2 + NV) t + r`` of row tile ``t`` is its ``dq`` (``r``
    0) or ``dk`` (1) program, or its ``dv`` program of columns ``(r - 2) BV ..``. The pair's arguments are
    ``bw_dq_dk_pair_kernel``'s, ``DV_*`` and ``DV_D`` ``bw_dv_kernel``'s (``Q_D``, ``K_D``, ``DH_D``, ``DC_D``,
    ``DV_D``; one consumer, ``BKV`` = ``BQ`` = 64)."""
    group: gl.constexpr = 2 + NV
    pid = gl.program_id(0)
    bh = gl.program_id(1)
    tile = pid // group
    r = pid % group
    if r < 2:
        pair_program(
            Q_D, K_D, V_D, DH_D, C_D, DC_D, DQ_D, DK_D, GATE_B, GATE_I, INV_DEN, DZ, N_ST, DN_ST, M_ST, M_TOK, SUMS_Q,
            SUMS_K, SP, NC, DHQK, qk_scale, L, 2 * tile + r, bh, EXP, NVH, STAGES, ASYNC, num_warps,
        )  # fmt: skip
    else:
        dv_program(
            DV_Q_D, DV_K_D, DV_DH_D, DV_DC_D, DV_D, GATE_B, GATE_I, INV_DEN, M_ST, M_TOK, SP, NC, qk_scale, r - 2, tile,
            bh, L, EXP, DV_S_INSTR_N, DV_O_INSTR_N, DV_STAGES, DV_STATE_PIECES, 1, False, num_warps,
        )  # fmt: skip


def dv_ring_stages(dhqk: int, dhhv: int) -> int:
    """The deepest ring (2 to ``MAX_DV_STAGES``) of the ``dv`` programs that fits sm_90's shared memory beside 1 KiB
    of barriers (the kernel takes the larger of its two kinds' shared memory, so up to the pair's it is free); 0
    where not even two fit."""
    fits = [
        s
        for s in range(2, MAX_DV_STAGES + 1)
        if dv_kernel.shared_bytes(dhqk, dhhv, s, dq_dk.TILE.value, dq_dk.TILE.value) + 1024 <= HOPPER_SMEM_BYTES
    ]
    return max(fits, default=0)


DV_ARGS = ("Q_D", "K_D", "DH_D", "DC_D")  # bw_dv_kernel's descriptors, as DV_<name> here (DV_D as it is)


def launch_args(
    dq_tensors: tuple[Any, ...],
    dk_tensors: tuple[Any, ...],
    dv_tensors: tuple[Any, ...],
    chunk_size: int,
    exp: bool,
    dv_stages: int | None = None,
    **options: Any,
) -> tuple[Any, tuple[int, int, int], dict[str, Any], dict[str, Any]]:
    """What ``launch_bw_grads`` launches: kernel, grid, runtime arguments and constexprs, by name, from the tensors
    ``launch_bw_dq``, ``launch_bw_dk`` and ``launch_bw_dv`` each take (without ``chunk_size, exp``). ``options``:
    the pair's (``mlstm_bw_dq_dk.launch_args``'); ``dv_stages``: the ``dv`` programs' ring depth (default
    ``dv_ring_stages``). ``ValueError`` from either."""
    _, (pair_programs, bh, _), args, constexprs = dq_dk.pair_launch_args(
        dq_tensors, dk_tensors, chunk_size, exp, **options
    )
    dv_stages = dv_stages or dv_ring_stages(dq_tensors[0].shape[-1], dv_tensors[-1].shape[-1])
    _, (nv, dv_tiles, _), dv_args, dv_constexprs = dv_kernel.launch_args(
        *dv_tensors, chunk_size, exp, bq=dq_dk.TILE.value, bkv=dq_dk.TILE.value, num_warps=constexprs["num_warps"],
        stages=dv_stages,
    )  # fmt: skip
    assert 2 * dv_tiles == pair_programs, (dv_tiles, pair_programs)  # both: a program a 64-token row tile
    args |= {f"DV_{name}": dv_args[name] for name in DV_ARGS} | {"DV_D": dv_args["DV_D"]}
    del args["L"]
    constexprs |= {
        "L": chunk_size,
        "NV": nv,
        "DV_S_INSTR_N": dv_constexprs["S_INSTR_N"],
        "DV_O_INSTR_N": dv_constexprs["O_INSTR_N"],
        "DV_STAGES": dv_stages,
        "DV_STATE_PIECES": dv_constexprs["STATE_PIECES"],
    }
    return bw_grads_kernel, ((2 + nv) * dv_tiles, bh, 1), args, constexprs


def launch_bw_grads(
    dq_tensors: tuple[Any, ...], dk_tensors: tuple[Any, ...], dv_tensors: tuple[Any, ...], chunk_size: int, exp: bool,
    **options: Any,
) -> tuple[Any, Any, Any, Any]:  # fmt: skip
    """``dq``, ``dk`` and ``dv`` in one launch (``launch_args``): writes the three gradients, returns ``qdq, kdk,
    kdk_inter, kdk_off`` as ``mlstm_bw_dq_dk.launch_bw_dq_dk``."""
    kernel, grid, args, constexprs = launch_args(dq_tensors, dk_tensors, dv_tensors, chunk_size, exp, **options)
    intra_chunk.launch(kernel, grid, args, constexprs, dq_tensors[0].device)
    return (args["SUMS_Q"], *dq_dk.key_sums(args["SUMS_K"]))
