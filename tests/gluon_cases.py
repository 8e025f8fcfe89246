"""The Gluon kernels compiled for sm_90 without a GPU, as facts the tests check (``tests/test_gluon.py`` runs
``report()`` in a child process without ``TRITON_INTERPRET``: under it Gluon's own helpers, such as ``gl.sum``,
are interpreted functions the compiler refuses)."""

from __future__ import annotations

import json
import sys
from typing import NamedTuple

import torch

from kernels.gluon import mlstm_fw_output as fwo
from kernels.gluon import support, ws_matmul
from kernels.mlstm.sm90_compile import ptxas_usage

# The Gluon output kernels by their launch options (``launch_args``): plain or warp-specialized (1 or 2 consumer
# warpgroups, the second only with the state in pieces: whole, it does not fit beside two query tiles at 7B), the
# state slice whole or in 64-row pieces (with BV 256, clamped to the head dim). The GPU tests and the CPU
# simulator's tests run each.
FW_OUTPUT_KERNELS: dict[str, dict[str, object]] = {
    "plain": {"warp_specialized": False},
    "plain pieces": {"warp_specialized": False, "state_pieces": True, "bv": 256},
    "ws": {"warp_specialized": True},
    "ws pieces": {"warp_specialized": True, "state_pieces": True, "bv": 256},
    "ws2 pieces": {"warp_specialized": True, "state_pieces": True, "bv": 256, "consumers": 2},
    "ws2 pieces pingpong": {
        "warp_specialized": True,
        "state_pieces": True,
        "bv": 256,
        "consumers": 2,
        "pingpong": True,
    },
    # two consumers on the same queries, a 32-column half each: both halves inside the test's value head dims
    "shared scores": {"state_pieces": True, "bkv": 32, "bv": 32, "consumers": 2, "shared_scores": True},
}
INSTRUCTIONS = ("wgmma.mma_async", "cp.async.bulk.tensor", "mbarrier.try_wait", "setmaxnreg")


def _facts(compiled: object) -> dict:
    ptx = compiled.asm["ptx"]  # type: ignore[attr-defined]
    wgmma = next((x.strip() for x in ptx.splitlines() if "wgmma.mma_async" in x), "")
    return {
        "has": {name: name in ptx for name in INSTRUCTIONS},
        "wgmma": wgmma.split()[0] if wgmma else "",
        "shared": compiled.metadata.shared,  # type: ignore[attr-defined]
        "cubin_bytes": len(compiled.asm["cubin"]),  # type: ignore[attr-defined]
    }


def ws_matmul_case(dtype: torch.dtype) -> dict:
    m, n, k = 256, 256, 512
    a, b, c = torch.empty(m, k, dtype=dtype), torch.empty(k, n, dtype=dtype), torch.empty(m, n, dtype=dtype)
    a_desc, b_desc, c_desc = ws_matmul.descriptors(a, b, c, 128, 128, 64)
    return _facts(
        support.compile_for(
            ws_matmul.ws_matmul_kernel,
            {"a_desc": a_desc, "b_desc": b_desc, "c_desc": c_desc, "K": k},
            {"STAGES": 3, "INSTR_N": ws_matmul.instr_n(128, 128, 4), "num_warps": 4},
        )
    )


def fw_output_tensors(dqk: int, dv: int, seq: int, chunk: int) -> tuple[torch.Tensor, ...]:
    """``launch_fw_output``'s tensors for a ``ForwardState`` of two heads, on the CPU (only their types count):
    ``q, k, v, gate_b, gate_i, c_st, n_st, m_st, h, m_tok, z_tok``."""
    bh, nc, dtype, f32 = 2, seq // chunk, torch.bfloat16, torch.float32
    q, k = torch.empty(bh, seq, dqk, dtype=dtype), torch.empty(bh, seq, dqk, dtype=dtype)
    v, h = torch.empty(bh, seq, dv, dtype=dtype), torch.empty(bh, seq, dv, dtype=dtype)
    c_st = torch.empty(bh, nc, dqk, dv, dtype=dtype)
    gate_b, gate_i, m_tok, z_tok = (torch.empty(bh, seq, dtype=f32) for _ in range(4))
    n_st, m_st = torch.empty(bh, nc + 1, dqk, dtype=f32), torch.empty(bh, nc + 1, dtype=f32)
    return q, k, v, gate_b, gate_i, c_st, n_st, m_st, h, m_tok, z_tok


def fw_output_case(exp: bool, dqk: int, dv: int, ws: bool, seq: int = 256, chunk: int = 128, **tiles: object) -> dict:
    """What ``launch_fw_output`` would launch on ``fw_output_tensors``, with ``tiles`` (``launch_args``' options:
    ``bv``, ``state_pieces``, ``consumers``, ...) beside the defaults."""
    tensors = fw_output_tensors(dqk, dv, seq, chunk)
    kernel, _, args, constexprs = fwo.launch_args(*tensors, chunk, exp, exp, 1e-6, warp_specialized=ws, **tiles)
    return _facts(support.compile_for(kernel, args, constexprs))


def bw_dv_tensors(dqk: int, dv: int, seq: int, chunk: int) -> tuple[torch.Tensor, ...]:
    """``launch_bw_dv``'s tensors for a backward of two heads, on the CPU (only their types count): ``q, k, dh,
    gate_b, gate_i, inv_den, dc_st, m_st, m_tok, dv``."""
    bh, nc, dtype, f32 = 2, seq // chunk, torch.bfloat16, torch.float32
    q, k = torch.empty(bh, seq, dqk, dtype=dtype), torch.empty(bh, seq, dqk, dtype=dtype)
    dh, dvt = torch.empty(bh, seq, dv, dtype=dtype), torch.empty(bh, seq, dv, dtype=dtype)
    dc_st = torch.empty(bh, nc + 1, dqk, dv, dtype=dtype)
    gate_b, gate_i, inv_den, m_tok = (torch.empty(bh, seq, dtype=f32) for _ in range(4))
    m_st = torch.empty(bh, nc + 1, dtype=f32)
    return q, k, dh, gate_b, gate_i, inv_den, dc_st, m_st, m_tok, dvt


def bw_dv_case(exp: bool, dqk: int, dv: int, seq: int = 256, chunk: int = 128, **tiles: object) -> dict:
    """What ``kernels.gluon.mlstm_bw_dv.launch_bw_dv`` would launch on ``bw_dv_tensors``."""
    from kernels.gluon import mlstm_bw_dv

    launch = mlstm_bw_dv.launch_args(*bw_dv_tensors(dqk, dv, seq, chunk), chunk, exp, **tiles)
    kernel, _, args, constexprs = launch
    return _facts(support.compile_for(kernel, args, constexprs))


def bw_dq_dk_case(
    kernel: str, dqk: int, dv: int, seq: int = 256, chunk: int = 128, exp: bool = True, **options: object
) -> dict:
    """What ``kernels.gluon.mlstm_bw_dq_dk.launch_<kernel>`` (``bw_dq`` or ``bw_dk``; ``bw_dq_dk``: both in one
    launch, ``pair_launch_args``; ``bw_grads``: those and ``dv`` in one launch, ``mlstm_bw_grads.launch_args``) would
    launch on a backward's tensors of two heads (CPU, only their types count; the states shaped as ``dk``'s, the one
    more that ``dq`` does not read is harmless), with ptxas' spill-store bytes per thread (``spill_bytes``)."""
    from kernels.gluon import mlstm_bw_dq_dk, mlstm_bw_grads

    bh, nc, dtype, f32 = 2, seq // chunk, torch.bfloat16, torch.float32
    q, k, grad = (torch.empty(bh, seq, dqk, dtype=dtype) for _ in range(3))
    v, dh = (torch.empty(bh, seq, dv, dtype=dtype) for _ in range(2))
    states = torch.empty(bh, nc + 1, dqk, dv, dtype=dtype)
    gate_b, gate_i, inv_den, dz, m_tok = (torch.empty(bh, seq, dtype=f32) for _ in range(5))
    vec_st, m_st = torch.empty(bh, nc + 1, dqk, dtype=f32), torch.empty(bh, nc + 1, dtype=f32)
    tensors = (q, k, v, dh, gate_b, gate_i, inv_den, dz, states, vec_st, m_st, m_tok, grad)
    dv_tensors = (q, k, dh, gate_b, gate_i, inv_den, states, m_st, m_tok, torch.empty_like(v))
    if kernel == "bw_grads":
        launch = mlstm_bw_grads.launch_args(tensors, tensors, dv_tensors, chunk, exp, **options)
    elif kernel == "bw_dq_dk":
        launch = mlstm_bw_dq_dk.pair_launch_args(tensors, tensors, chunk, exp, **options)
    else:
        launch = mlstm_bw_dq_dk.launch_args(kernel, *tensors, chunk, exp, **options)
    kernel_fn, _, args, constexprs = launch
    compiled = support.compile_for(kernel_fn, args, constexprs)
    return {**_facts(compiled), "spill_bytes": ptxas_usage(compiled.asm["ptx"])[1]}


def fw_states_tensors(dqk: int, dv: int, seq: int, chunk: int, init: bool = False) -> tuple[torch.Tensor | None, ...]:
    """``launch_fw_states``' tensors for a forward of two heads, on the CPU (only their types count): ``k, v, gate_b,
    gate_i, init (C0, n0, m0 or None), c_st, n_st, m_st, c_last``."""
    bh, nc, dtype, f32 = 2, seq // chunk, torch.bfloat16, torch.float32
    k, v = torch.empty(bh, seq, dqk, dtype=dtype), torch.empty(bh, seq, dv, dtype=dtype)
    gate_b, gate_i = torch.empty(bh, seq, dtype=f32), torch.empty(bh, seq, dtype=f32)
    c_st, c_last = torch.empty(bh, nc, dqk, dv, dtype=dtype), torch.empty(bh, dqk, dv, dtype=f32)
    n_st, m_st = torch.empty(bh, nc + 1, dqk, dtype=f32), torch.empty(bh, nc + 1, dtype=f32)
    start = (c_last, n_st[:, 0], m_st[:, 0]) if init else None
    return k, v, gate_b, gate_i, start, c_st, n_st, m_st, c_last


def fw_states_case(
    exp: bool, dqk: int, dv: int, init: bool, seq: int = 256, chunk: int = 128, **options: object
) -> dict:
    """What ``kernels.gluon.mlstm_fw_states.launch_fw_states`` would launch on ``fw_states_tensors``, with ptxas'
    spill-store bytes per thread (``spill_bytes``)."""
    from kernels.gluon import mlstm_fw_states

    tensors = fw_states_tensors(dqk, dv, seq, chunk, init)
    kernel, _, args, constexprs = mlstm_fw_states.launch_args(*tensors, chunk, exp, **options)
    compiled = support.compile_for(kernel, args, constexprs)
    return {**_facts(compiled), "spill_bytes": ptxas_usage(compiled.asm["ptx"])[1]}


def bw_states_tensors(
    dqk: int, dv: int, seq: int, chunk: int, dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, ...]:
    """``launch_bw_states``' tensors for a backward of two heads, on the CPU (only their types count): ``q, dh,
    gate_b, inv_den, dz, c_st, n_st, m_st, m_tok, dc_last, dn_last, dc_st, dn_st, dc_first``."""
    bh, nc, f32 = 2, seq // chunk, torch.float32
    q, dh = torch.empty(bh, seq, dqk, dtype=dtype), torch.empty(bh, seq, dv, dtype=dtype)
    gate_b, inv_den, dz, m_tok = (torch.empty(bh, seq, dtype=f32) for _ in range(4))
    c_st, dc_st = torch.empty(bh, nc, dqk, dv, dtype=dtype), torch.empty(bh, nc + 1, dqk, dv, dtype=dtype)
    n_st, m_st, first = torch.empty(bh, nc + 1, dqk), torch.empty(bh, nc + 1), torch.empty(bh, dqk, dv)
    return q, dh, gate_b, inv_den, dz, c_st, n_st, m_st, m_tok, first, n_st, dc_st, n_st, first


def bw_states_case(exp: bool, dtype: torch.dtype, seq: int = 256, chunk: int = 128, **options: object) -> dict:
    """What ``kernels.gluon.mlstm_bw_states.launch_bw_states`` would launch on ``bw_states_tensors`` at the 7B
    head dims."""
    from kernels.gluon import mlstm_bw_states

    tensors = bw_states_tensors(256, 512, seq, chunk, dtype)
    kernel, _, args, constexprs = mlstm_bw_states.launch_args(*tensors, True, chunk, exp, **options)
    compiled = support.compile_for(kernel, args, constexprs)
    return {**_facts(compiled), "spill_bytes": ptxas_usage(compiled.asm["ptx"])[1]}


CASES = {
    "ws_matmul fp16": lambda: ws_matmul_case(torch.float16),
    "ws_matmul bf16": lambda: ws_matmul_case(torch.bfloat16),
    **{
        f"fw_output{'_ws' if ws else ''} {'exp' if exp else 'sig'} {dqk}x{dv}": (
            lambda exp=exp, dqk=dqk, dv=dv, ws=ws: fw_output_case(exp, dqk, dv, ws)
        )
        for exp in (True, False)
        for dqk, dv in ((256, 512), (64, 64))
        for ws in (False, True)
    },
    # the state in pieces: BV 256 beside a q/k head dim of 256 (7B), and one piece (head dims 64)
    **{
        f"fw_output{'_ws' if ws else ''} pieces {dqk}x{dv}": (
            lambda dqk=dqk, dv=dv, ws=ws: fw_output_case(False, dqk, dv, ws, bv=min(256, dv), state_pieces=True)
        )
        for dqk, dv in ((256, 512), (64, 64))
        for ws in (False, True)
    },
    # two consumer warpgroups (state in pieces), free or in ping-pong turns: 7B, the paper's head dims, small ones
    **{
        f"fw_output_ws2{' pingpong' if pp else ''} pieces {dqk}x{dv}": (
            lambda dqk=dqk, dv=dv, pp=pp: fw_output_case(
                True, dqk, dv, True, bv=min(256, dv), state_pieces=True, consumers=2, pingpong=pp
            )
        )
        for dqk, dv in ((256, 512), (128, 256), (64, 64))
        for pp in (False, True)
    },
    # two consumers on the same queries, each half of a program's columns (a key tile's scores computed once)
    **{
        f"fw_output_ws2 shared scores {'exp' if exp else 'sig'} {dqk}x{dv}": (
            lambda exp=exp, dqk=dqk, dv=dv: fw_output_case(
                exp, dqk, dv, True, bkv=32, bv=min(256, dv // 2), state_pieces=True, consumers=2, shared_scores=True
            )
        )
        for exp in (True, False)
        for dqk, dv in ((256, 512), (128, 256))
    },
    # the backward's dv kernel: state gradient in pieces (its default where the head dim holds one) or whole
    **{
        f"bw_dv {'pieces' if pieces else 'whole'} {dqk}x{dv}": (
            lambda dqk=dqk, dv=dv, pieces=pieces: bw_dv_case(True, dqk, dv, state_pieces=pieces)
        )
        for dqk, dv in ((256, 512), (128, 256), (64, 64))
        for pieces in (True, False)
    },
    **{
        f"bw_dv2{' pingpong' if pp else ''} pieces {dqk}x{dv}": (
            lambda dqk=dqk, dv=dv, pp=pp: bw_dv_case(True, dqk, dv, consumers=2, pingpong=pp)
        )
        for dqk, dv in ((256, 512), (128, 256), (64, 64))
        for pp in (False, True)
    },
    # the backward's dq and dk kernels: the deepest ring that fits, one or two value-side slots; one or two
    # warpgroups
    **{
        f"{kernel}{' async' if async_mma else ''} w{warps} {dqk}x{dv}": (
            lambda kernel=kernel, dqk=dqk, dv=dv, async_mma=async_mma, warps=warps: bw_dq_dk_case(
                kernel, dqk, dv, async_mma=async_mma, num_warps=warps
            )
        )
        for kernel in ("bw_dq", "bw_dk", "bw_dq_dk")
        for dqk, dv in ((256, 512), (128, 256), (64, 64))
        for async_mma in (False, True)
        for warps in (4, 8)
    },
    # dq, dk and dv in one launch: the dv programs' ring 2 or 3 deep, one or two warpgroups
    **{
        f"bw_grads {'exp' if exp else 'sig'} w{warps} dv{dv_stages} {dqk}x{dv}": (
            lambda exp=exp, dqk=dqk, dv=dv, warps=warps, dv_stages=dv_stages: bw_dq_dk_case(
                "bw_grads", dqk, dv, exp=exp, num_warps=warps, dv_stages=dv_stages
            )
        )
        for exp in (True, False)
        for dqk, dv, warps, dv_stages in ((256, 512, 4, 2), (256, 512, 4, 3), (256, 512, 8, 2), (128, 256, 4, 3))
    },
    # the forward's state recurrence: both variants, with and without initial states, state tiles 64 x 128 / 256
    **{
        f"fw_states {'exp' if exp else 'sig'}{' init' if init else ''} bv{bv}": (
            lambda exp=exp, init=init, bv=bv: fw_states_case(exp, 256, 512, init, bv=bv)
        )
        for exp in (True, False)
        for init in (False, True)
        for bv in (128, 256)
    },
    # two consumer warpgroups a program, sharing each v slice: the backend's options (kernels.gluon.config) at chunk
    # 128 with the gates in the k tile's rows, and 64-token slices 3 deep
    **{
        f"fw_states {'exp' if exp else 'sig'} ws2 bv{bv}": (
            lambda exp=exp, bv=bv: fw_states_case(
                exp,
                256,
                512,
                False,
                **(
                    dict(bl=128, bv=128, stages=2, consumers=2)
                    if bv == 128
                    else dict(bl=64, bv=bv, stages=3, consumers=2)
                ),
            )
        )
        for exp in (True, False)
        for bv in (64, 128)
    },
    # the gates loaded one token a thread; two consumers with 256-column tiles (64-token slices 3 deep, one store
    # buffer a consumer: what fits)
    **{
        f"fw_states {'exp' if exp else 'sig'} ws2 bv128 packed": (
            lambda exp=exp: fw_states_case(
                exp, 256, 512, False, bl=128, bv=128, stages=2, consumers=2, packed_gates=True
            )
        )
        for exp in (True, False)
    },
    **{
        f"fw_states {'exp' if exp else 'sig'} ws2 bv256 one store buffer": (
            lambda exp=exp: fw_states_case(
                exp, 256, 512, False, bl=64, bv=256, stages=3, consumers=2, packed_gates=True, store_bufs=1
            )
        )
        for exp in (True, False)
    },
    # the backward's state-gradient walk: one consumer warpgroup with 64-token slices 3 deep, or two with 128-token
    # slices 2 deep (what fits since the forward state tiles double as the store buffers), fp16 (its factors scaled,
    # products synchronous) and bf16 (chained asynchronously)
    **{
        f"bw_states {'exp' if exp else 'sig'} {dt} ws{consumers}": (
            lambda exp=exp, dt=dt, consumers=consumers: bw_states_case(
                exp, getattr(torch, dt), bl=64 * consumers, stages=4 - consumers, consumers=consumers
            )
        )
        for exp in (True, False)
        for dt in ("bfloat16", "float16")
        for consumers in (1, 2)
    },
    # two consumers of 256 columns: 64-token slices 3 deep beside one forward state slot each
    **{
        f"bw_states {'exp' if exp else 'sig'} {dt} ws2 bv256 one slot": (
            lambda exp=exp, dt=dt: bw_states_case(
                exp, getattr(torch, dt), bl=64, bv=256, stages=3, consumers=2, state_slots=1
            )
        )
        for exp in (True, False)
        for dt in ("bfloat16", "float16")
    },
}


# How the backend may launch dq, dk and dv: the BwDqDkOptions fields that say it.
LAUNCHES = {
    "apart": {"one_launch": False, "with_dv": False},
    "dq + dk": {"one_launch": True, "with_dv": False},
    "dq + dk + dv": {"one_launch": False, "with_dv": True},
}


def pin_launches(monkeypatch: object, launches: str) -> None:
    """The backend's ``dq`` / ``dk`` options with the launches of ``LAUNCHES[launches]`` pinned
    (``kernels.gluon.config.overridden``)."""
    from kernels.gluon import config

    monkeypatch.setattr(config, "bw_dq_dk_options", config.overridden("bw_dq_dk", **LAUNCHES[launches]))  # type: ignore[attr-defined]


def gluon_against_triton(
    device: str, dtype: torch.dtype, shape: tuple[int, int, int, int, int], variant: str, chunk: int
) -> dict[str, float]:
    """``mlstm_tfla(backend="gluon")`` against ``backend="triton"`` on one draw of fresh random inputs of ``shape``
    ``(B, NH, S, DHQK, DHHV)``: the relative difference of the output and of every gradient, by name."""
    from kernels.mlstm.tfla import mlstm_tfla

    b, nh, s, dqk, dv = shape
    torch.manual_seed(torch.seed() % 2**31)
    new = {"device": device, "dtype": dtype}
    base = [torch.randn(b, nh, s, d, **new) for d in (dqk, dqk, dv)]
    base += [torch.randn(b, nh, s, **new), (torch.randn(b, nh, s, device=device) + 3.0).to(dtype)]
    dh = torch.randn(b, nh, s, dv, **new)
    results = {}
    for backend in ("triton", "gluon"):
        x = [t.detach().clone().requires_grad_(True) for t in base]
        h = mlstm_tfla(*x, variant=variant, normalize=variant == "exp", chunk_size=chunk, backend=backend)
        h.backward(dh)
        results[backend] = [h.detach()] + [t.grad for t in x]
    return {
        name: ((a.double() - ref.double()).norm() / ref.double().norm()).item()
        for name, a, ref in zip(("h", "dq", "dk", "dv", "di", "df"), results["gluon"], results["triton"])
    }


class StateGrads(NamedTuple):
    """The state-gradient kernel's outputs in float64 (``state_grads_reference``)."""

    dc: torch.Tensor  # (BH, NC, DHQK, DHHV): dC after chunks 1..NC
    dn: torch.Tensor  # (BH, NC + 1, DHQK): dn at 0..NC
    first: torch.Tensor  # (BH, DHQK, DHHV): the initial state's dC
    x: torch.Tensor  # (BH, NC): the forget-gate parts <dC, C_c> + <dn, n_c>
    x_terms: torch.Tensor  # (BH, NC): the root of the parts' summed squared terms (their size before cancelling)


def forget_gate_parts_error(got: torch.Tensor, ref: StateGrads) -> float:
    """``got`` (BH, NC) against ``ref.x``, relative to ``hypot(x, x_terms)``: a part sums DHQK x (DHHV + 1) terms of
    either sign, which on random inputs cancel to near zero now and then, and the rounding error of its factors
    scales with the root of the squared terms, not with what is left after cancelling (so a plain relative error of
    a few parts exceeds any fixed bound now and then, with no larger absolute error)."""
    scale = torch.hypot(ref.x, ref.x_terms).norm().clamp_min(1e-30)
    return ((got.double() - ref.x).norm() / scale).item()


def state_grads_reference(q, dh, gate_b, inv_den, dz, c_st, n_st, m_st, m_tok, last, chunk, exp) -> StateGrads:  # noqa: ANN001, PLR0913
    """``bw_chunk_state_grads_kernel``'s outputs in float64, walking the chunks from the last: the gradient of the
    state after chunk ``c`` (``dC, dn``), their decay ``exp(g + m_c - m_{c+1})`` over the chunk, the forget-gate part
    ``<dC, C_c> + <dn, n_c>``, then the chunk's ``sum_t a_t q_t^T dh_t`` and ``sum_t w_t dz_t q_t`` with
    ``w_t = exp(b_t + m_c - m_t) / sqrt(DHQK)`` and ``a_t = w_t inv_den_t``."""
    q, dh, gate_b, inv_den, dz, c_st, n_st, m_st, m_tok = (
        x.double() for x in (q, dh, gate_b, inv_den, dz, c_st, n_st, m_st, m_tok)
    )
    bh, seq, dqk = q.shape
    nc = gate_b.shape[1] // chunk
    pad = nc * chunk - seq
    q, dh = torch.nn.functional.pad(q, (0, 0, 0, pad)), torch.nn.functional.pad(dh, (0, 0, 0, pad))
    f64 = {"dtype": torch.float64, "device": q.device}
    dC = last[0].double().clone() if last else torch.zeros(bh, dqk, dh.shape[-1], **f64)
    dn = last[1].double().clone() if last else torch.zeros(bh, dqk, **f64)
    dc_st, dn_st, x, x_terms = [None] * (nc + 1), [None] * (nc + 1), [None] * nc, [None] * nc
    for c in reversed(range(nc)):
        dc_st[c + 1], dn_st[c + 1] = dC.clone(), dn.clone()
        t = slice(c * chunk, (c + 1) * chunk)
        m_before = m_st[:, c] if exp else torch.zeros(bh, **f64)
        m_after = m_st[:, c + 1] if exp else torch.zeros(bh, **f64)
        decay = torch.exp(gate_b[:, c * chunk + chunk - 1] + m_before - m_after)
        dC, dn = decay[:, None, None] * dC, decay[:, None] * dn
        c_terms, n_terms = dC * c_st[:, c], dn * n_st[:, c]
        x[c] = c_terms.sum((1, 2)) + n_terms.sum(1)
        x_terms[c] = (c_terms.square().sum((1, 2)) + n_terms.square().sum(1)).sqrt()
        m_t = m_tok[:, t] if exp else 0.0
        w = torch.exp(gate_b[:, t] + m_before[:, None] - m_t) * dqk**-0.5
        dC = dC + (q[:, t] * (w * inv_den[:, t])[..., None]).transpose(1, 2) @ dh[:, t]
        dn = dn + (q[:, t] * (w * dz[:, t])[..., None]).sum(1)
    dn_st[0] = dn
    return StateGrads(torch.stack(dc_st[1:], 1), torch.stack(dn_st, 1), dC, torch.stack(x, 1), torch.stack(x_terms, 1))


def bw_states_against_float64(
    device: str, dtype: torch.dtype, seq: int, dqk: int, dv: int, chunk: int, variant: str = "exp"
) -> dict[str, tuple[float, float]]:
    """One Triton backward (fresh random inputs, 2 x 2 heads, with the last states' gradients) hands its state kernel
    its arguments (recorded); the Gluon state-gradient kernel runs on them too (one consumer, 64-token slices 3
    deep; and two consumers, 64-token slices 3 deep or 128-token slices 2 deep, where the head dim holds two tiles;
    and two of 256 columns with one forward state slot each, where the v head dim holds 256).
    Returns, per output and Gluon option set, ``(Gluon's, Triton's)`` error against ``state_grads_reference`` in
    float64 (relative; the forget-gate parts' by ``forget_gate_parts_error``): on a real backward (normalized,
    unequal ``inv_den``) both round the factors' products to 16 bits in a different order, so Gluon is judged by
    Triton's error, not by their difference."""
    from kernels.gluon import mlstm_bw_states
    from kernels.mlstm import tfla

    calls = []
    launch = tfla.launch_bw_states
    torch.manual_seed(torch.seed() % 2**31)
    new = {"device": device, "dtype": dtype}
    x = [torch.randn(2, 2, seq, d, **new) for d in (dqk, dqk, dv)]
    x += [torch.randn(2, 2, seq, **new), (torch.randn(2, 2, seq, device=device) + 3).to(dtype)]
    x = [t.requires_grad_(True) for t in x]
    tfla.launch_bw_states = lambda *a: (lambda parts: (calls.append((a, parts)), parts)[1])(launch(*a))
    try:
        h, last = tfla.mlstm_tfla(
            *x, variant=variant, normalize=variant == "exp", chunk_size=chunk, return_last_states=True,
            backend="triton",
        )  # fmt: skip
        (h.float().square().sum() + last.C.square().sum() + last.n.sum()).backward()
    finally:
        tfla.launch_bw_states = launch
    (((*tensors, dc_st, dn_st, dc_first, has_dlast, _, exp, _), x_part),) = calls
    q, dh, gate_b, inv_den, dz, c_st, n_st, m_st, m_tok, dc_last, dn_last = tensors
    bh = c_st.shape[0]
    ref = state_grads_reference(
        q.reshape(bh, seq, dqk), dh.reshape(bh, seq, dv), gate_b, inv_den, dz, c_st, n_st, m_st, m_tok,
        (dc_last.reshape(bh, dqk, dv), dn_last.reshape(bh, dqk)) if has_dlast else None, chunk, exp,
    )  # fmt: skip
    rel = lambda a, b: ((a.double() - b.double()).norm() / max(b.double().norm(), 1e-30)).item()  # noqa: E731

    def errors(dc: torch.Tensor, dn: torch.Tensor, first: torch.Tensor, parts: torch.Tensor) -> dict[str, float]:
        dc = dc[:, 1:]  # slot 0 (before the first chunk) neither kernel writes
        errs = {
            "dC": rel(dc, ref.dc),
            "dn": rel(dn, ref.dn),
            "the first dC": rel(first, ref.first),
            "the forget-gate parts": forget_gate_parts_error(parts.sum(0), ref),
        }
        unwritten = any(t.isnan().any() for t in (dc, dn, first, parts))
        return dict.fromkeys(errs, float("inf")) if unwritten else errs

    triton_errors = errors(dc_st, dn_st, dc_first, x_part)
    out = {}
    two = (dict(bl=64, stages=3, consumers=2), dict(bl=min(128, chunk), stages=2, consumers=2)) if dqk > 64 else ()
    wide = (dict(bl=64, bv=256, stages=3, consumers=2, state_slots=1),) if dqk > 64 and dv >= 256 else ()
    for options in (dict(bl=64, stages=3, consumers=1), *two, *wide):
        got = [torch.full_like(t, float("nan")) for t in (dc_st, dn_st, dc_first)]
        parts = mlstm_bw_states.launch_bw_states(*tensors, *got, has_dlast, chunk, exp, **options)
        for name, err in errors(*got, parts).items():
            out[f"{name} {options}"] = (err, triton_errors[name])
    return out


def report() -> dict:
    """Every case's facts, or its error as ``{"error": ...}``."""
    out = {}
    for name, case in CASES.items():
        try:
            out[name] = case()
        except Exception as err:  # noqa: BLE001 - the test names the case that failed
            out[name] = {"error": f"{type(err).__name__}: {err}"[-3000:]}
    return out


if __name__ == "__main__":
    json.dump(report(), sys.stdout)
