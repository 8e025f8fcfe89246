"""The Gluon kernels on the CPU through ``kernels.gluon.simulator``: their results against float64 and the Triton
kernels, and the simulator's own rules (each planted bug below is one it must report, not compute through)."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch

pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper", reason="this Triton has no Gluon")

from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import mbarrier  # noqa: E402
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: E402

from kernels.gluon import compat, ws_matmul  # noqa: E402
from kernels.gluon.intra_chunk import init_turns, invalidate_turns, pass_turn, wait_turn  # noqa: E402
from kernels.gluon.simulator import LANDINGS, SimulationError, simulate  # noqa: E402
from tests.gluon_cases import (  # noqa: E402
    FW_OUTPUT_KERNELS,
    bw_states_against_float64,
    forget_gate_parts_error,
    gluon_against_triton,
    pin_launches,
    state_grads_reference,
)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("landing", LANDINGS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("m", "n", "k"), [(256, 256, 512), (200, 136, 200)])
def test_ws_matmul_matches_float64(m: int, n: int, k: int, dtype: torch.dtype, landing: str) -> None:
    """The warp-specialized matmul (a TMA ring of 3 stages, asynchronous wgmma): every element written, within the
    output dtype's rounding of the float64 product; sizes that are not multiples of the blocks."""
    torch.manual_seed(torch.seed() % 2**31)
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    c = torch.full((m, n), float("nan"), dtype=dtype)
    a_desc, b_desc, c_desc = ws_matmul.descriptors(a, b, c, 128, 128, 64)
    grid = (-(-m // 128), -(-n // 128))
    args = {"a_desc": a_desc, "b_desc": b_desc, "c_desc": c_desc, "K": k}
    simulate(ws_matmul.ws_matmul_kernel, grid, args, {"STAGES": 3, "INSTR_N": 128, "num_warps": 4}, landing=landing)
    assert not c.isnan().any()
    assert rel(c, a.double() @ b.double()) < (2e-3 if dtype == torch.float16 else 1e-2)


@pytest.fixture(
    scope="module", params=[(200, 64, 64, 64), (256, 128, 128, 128), (160, 32, 48, 64), (300, 64, 64, 256)], ids=str
)
def forward(request: pytest.FixtureRequest) -> dict:
    """The Triton forward's states and output (interpreter, float16) on fresh random inputs, for both variants:
    ``seq, dqk, dv, chunk`` with S not a multiple of the chunk, state pieces (q/k head dim 128: two), and head dims
    below a tile (32 / 48: zero-padded loads, clipped stores); chunk 256: two consumers share up to three key tiles
    (ping-pong turns over several tiles)."""
    from kernels.mlstm.reference import mlstm_parallel
    from kernels.mlstm.tfla import tfla_fwd
    from kernels.mlstm.tiles import choose_tiles, unpipelined_state_loads

    seq, dqk, dv, chunk = request.param
    torch.manual_seed(torch.seed() % 2**31)
    dtype, (b, nh) = torch.float16, (1, 2)
    q, k = torch.randn(b, nh, seq, dqk, dtype=dtype), torch.randn(b, nh, seq, dqk, dtype=dtype)
    v = torch.randn(b, nh, seq, dv, dtype=dtype)
    i, f = torch.randn(b, nh, seq, dtype=dtype), (torch.randn(b, nh, seq) + 3.0).to(dtype)
    tiles = unpipelined_state_loads(choose_tiles(chunk, dqk, dv, True, dtype, b * nh, 0), dtype)
    out = {"chunk": chunk, "seq": seq, "inputs": (q, k, v)}
    for variant in ("exp", "sig"):
        normalize = variant == "exp"
        h, _, st = tfla_fwd(q, k, v, i, f, None, variant, normalize, chunk, 1e-6, tiles)
        ref = mlstm_parallel(*(x.double() for x in (q, k, v, i, f)), variant=variant, normalize=normalize)
        out[variant] = (h, st, ref)
    return out


@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize("kernel", list(FW_OUTPUT_KERNELS))
def test_fw_output_kernels_match_the_triton_kernel_and_float64(forward: dict, kernel: str, variant: str) -> None:
    """Each Gluon output kernel, on the states the Triton forward leaves, writes the Triton kernel's ``h`` and
    ``z_tok`` (outputs poisoned with NaN first) and ``h`` within float16 rounding of float64, under both landing
    orders of its TMA loads."""
    from kernels.gluon import mlstm_fw_output as fwo

    options, chunk, seq = FW_OUTPUT_KERNELS[kernel], forward["chunk"], forward["seq"]
    q, k, v = forward["inputs"]
    h, st, ref = forward[variant]
    for landing in LANDINGS:
        h2, z2 = torch.full_like(h, float("nan")), torch.full_like(st.z_tok, float("nan"))
        try:
            launch = fwo.launch_args(
                q, k, v, st.gate_b, st.gate_i, st.c_st, st.n_st, st.m_st, h2, st.m_tok, z2, chunk, variant == "exp",
                variant == "exp", 1e-6, **options,
            )  # fmt: skip
        except ValueError as err:  # the launch options' own checks (tested in test_gluon.py)
            pytest.skip(f"{kernel} cannot take this shape: {err}")
        simulate(*launch, landing=landing)
        assert not h2.isnan().any(), f"{landing}: h has unwritten elements"
        assert rel(h2, h) < 1e-3, f"{landing}: h against the Triton kernel: {rel(h2, h):.2e}"
        assert rel(z2[:, :seq], st.z_tok[:, :seq]) < 1e-3, f"{landing}: z_tok against the Triton kernel"
        assert rel(h2, ref) < 5e-3, f"{landing}: h against float64: {rel(h2, ref):.2e}"


BW_DV_OPTIONS = {
    "default": {},
    "whole state": {"state_pieces": False},
    "3 stages": {"stages": 3},
    "BV 32": {"bv": 32},
    "2 consumers": {"consumers": 2},
    "2 consumers, whole state": {"consumers": 2, "state_pieces": False},
    "2 consumers, ping-pong": {"consumers": 2, "pingpong": True},
}


@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize(("seq", "dqk", "dv", "chunk"), [(300, 64, 64, 256), (256, 128, 64, 128), (100, 32, 48, 64)])
def test_bw_dv_matches_the_triton_kernel(
    seq: int, dqk: int, dv: int, chunk: int, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Gluon ``dv`` kernel on the very arguments the Triton backward hands its own ``dv`` kernel (recorded
    from a float16 backward on fresh random inputs): the same ``dv`` (poisoned with NaN first) with the state
    gradient whole or in pieces (0, 1, 2 pieces over these head dims), 2 or 3 stages, a narrow ``BV``, and two
    consumer warpgroups where 128 keys divide the chunk."""
    from kernels.gluon import mlstm_bw_dv
    from kernels.mlstm import tfla

    calls = []
    triton_dv = tfla.launch_bw_dv
    monkeypatch.setattr(tfla, "launch_bw_dv", lambda *a: (calls.append(a), triton_dv(*a)))
    torch.manual_seed(torch.seed() % 2**31)
    dtype, (b, nh) = torch.float16, (1, 2)
    x = [torch.randn(b, nh, seq, d, dtype=dtype, requires_grad=True) for d in (dqk, dqk, dv)]
    x += [
        torch.randn(b, nh, seq, dtype=dtype).requires_grad_(),
        (torch.randn(b, nh, seq) + 3).to(dtype).requires_grad_(),
    ]
    h = tfla.mlstm_tfla(*x, variant=variant, normalize=variant == "exp", chunk_size=chunk, backend="triton")
    h.backward(torch.randn_like(h))
    ((q, k, dh, gate_b, gate_i, inv_den, dc_st, m_st, m_tok, dv_triton, _, exp, _),) = calls
    for name, options in BW_DV_OPTIONS.items():
        out = torch.full_like(dv_triton, float("nan"))
        try:
            launch = mlstm_bw_dv.launch_args(q, k, dh, gate_b, gate_i, inv_den, dc_st, m_st, m_tok, out, chunk, exp,
                                             **options)  # fmt: skip
        except ValueError:
            continue  # pieces need a padded q/k head dim of 64, two consumers a chunk of 128 (test_gluon.py)
        simulate(*launch)
        assert not out.isnan().any(), f"{name}: dv has unwritten elements"
        assert rel(out, dv_triton) < 1e-3, f"{name}: dv against the Triton kernel: {rel(out, dv_triton):.2e}"


def dq_reference(q, k, v, dh, gate_b, gate_i, inv_den, dz, c_st, n_st, m_st, m_tok, chunk, exp):  # noqa: ANN001, ANN201
    """``bw_chunk_dq_kernel``'s ``dq`` and ``q . dq`` (without the diagonal) in float64, chunk by chunk: the
    inter-chunk term ``w (dh C_c^T / den + dz n_c)`` plus ``a k`` with ``a = D * (dh v^T / den + dz)``, ``D`` the
    causal gate matrix ``exp(b_t - m_t + i_s - b_s)``, all times ``DHQK ** -0.5``."""
    f64 = [x.double() for x in (q, k, v, dh, gate_b, gate_i, inv_den, dz, c_st, n_st, m_st, m_tok)]
    q, k, v, dh, gate_b, gate_i, inv_den, dz, c_st, n_st, m_st, m_tok = f64
    bh, seq, dqk = q.shape
    dq, qdq = torch.zeros_like(q), torch.zeros(bh, seq, dtype=torch.float64)
    for c in range(c_st.shape[1]):
        t = slice(c * chunk, min((c + 1) * chunk, seq))
        n = t.stop - t.start
        b, m = gate_b[:, t], (m_tok[:, t] if exp else torch.zeros_like(gate_b[:, t]))
        w = torch.exp(b + m_st[:, c, None] - m) if exp else torch.exp(b)
        inter = w[..., None] * (
            dh[:, t] @ c_st[:, c].transpose(1, 2) * inv_den[:, t, None] + dz[:, t, None] * n_st[:, c, None]
        )
        log_d = (b - m)[:, :, None] + (gate_i[:, t] - b)[:, None, :]
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        a = torch.where(causal, torch.exp(log_d), 0.0) * (
            dh[:, t] @ v[:, t].transpose(1, 2) * inv_den[:, t, None] + dz[:, t, None]
        )
        dq[:, t] = (inter + a @ k[:, t]) * dqk**-0.5
        scores = q[:, t] @ k[:, t].transpose(1, 2)
        strict = torch.ones(n, n, dtype=torch.bool).tril(-1)
        qdq[:, t] = ((q[:, t] * inter).sum(-1) + torch.where(strict, a * scores, 0.0).sum(-1)) * dqk**-0.5
    return dq, qdq


def key_side_gates(gate_b, gate_i, m_st, m_tok, seq, chunk, c, exp):  # noqa: ANN001, ANN201
    """Chunk ``c``'s tokens ``t`` (a slice) and, for its keys ``s``, the weight of the term from later chunks ``w_s =
    exp(g_c - b_s + i_s - m_{c+1})`` and ``D^T`` (``exp(i_s - b_s + b_t - m_t)`` for ``t >= s``, else 0), in
    float64: what ``dk_reference`` and ``dv_reference`` share."""
    t = slice(c * chunk, min((c + 1) * chunk, seq))
    n = t.stop - t.start
    b, i = gate_b[:, t], gate_i[:, t]
    m = m_tok[:, t] if exp else torch.zeros_like(b)
    g = gate_b[:, c * chunk + chunk - 1, None]
    w = torch.exp(g - b + i - (m_st[:, c + 1, None] if exp else 0.0))
    causal = torch.ones(n, n, dtype=torch.bool).triu()
    d_t = torch.where(causal, torch.exp((i - b)[:, :, None] + (b - m)[:, None, :]), 0.0)
    return t, w, d_t


def dk_reference(q, k, v, dh, gate_b, gate_i, inv_den, dz, dc_st, dn_st, m_st, m_tok, chunk, exp):  # noqa: ANN001, ANN201
    """``bw_chunk_dk_kernel``'s ``dk`` and ``k . dk`` (all, from later chunks, intra-chunk without the diagonal) in
    float64, chunk by chunk: the term from later chunks ``w_s (v_s dC_{c+1}^T + dn_{c+1})`` with ``w_s = exp(g_c - b_s
    + i_s - m_{c+1})`` (``g_c`` the chunk's summed forget gate), plus ``a^T q`` with ``a^T = D^T * (v dh^T / den_t +
    dz_t) DHQK ** -0.5``, ``D^T[s, t] = exp(i_s - b_s + b_t - m_t)`` for ``t >= s``."""
    f64 = [x.double() for x in (q, k, v, dh, gate_b, gate_i, inv_den, dz, dc_st, dn_st, m_st, m_tok)]
    q, k, v, dh, gate_b, gate_i, inv_den, dz, dc_st, dn_st, m_st, m_tok = f64
    bh, seq, dqk = q.shape
    dk = torch.zeros_like(k)
    kdk, kdk_inter, kdk_off = (torch.zeros(bh, seq, dtype=torch.float64) for _ in range(3))
    for c in range(dc_st.shape[1] - 1):
        t, w, d_t = key_side_gates(gate_b, gate_i, m_st, m_tok, seq, chunk, c, exp)
        inter = w[..., None] * (v[:, t] @ dc_st[:, c + 1].transpose(1, 2) + dn_st[:, c + 1, None])
        at = d_t * (v[:, t] @ dh[:, t].transpose(1, 2) * inv_den[:, None, t] + dz[:, None, t]) * dqk**-0.5
        dk[:, t] = inter + at @ q[:, t]
        d_gate = at * (k[:, t] @ q[:, t].transpose(1, 2))  # zero below the diagonal, as D^T
        kdk_inter[:, t] = (k[:, t] * inter).sum(-1)
        kdk_off[:, t] = d_gate.triu(1).sum(-1)
        kdk[:, t] = kdk_inter[:, t] + d_gate.sum(-1)
    return dk, kdk, kdk_inter, kdk_off


def dv_reference(q, k, dh, gate_b, gate_i, inv_den, dc_st, m_st, m_tok, chunk, exp):  # noqa: ANN001, ANN201
    """``bw_chunk_dv_kernel``'s ``dv`` in float64, chunk by chunk: the term from later chunks ``w_s k_s dC_{c+1}``
    (``w_s`` as ``dk_reference``'s) plus ``P^T dh`` with ``P^T[s, t] = D^T[s, t] (k_s . q_t) / den_t DHQK ** -0.5``
    for ``t >= s``."""
    q, k, dh, gate_b, gate_i, inv_den, dc_st, m_st, m_tok = (
        x.double() for x in (q, k, dh, gate_b, gate_i, inv_den, dc_st, m_st, m_tok)
    )
    seq, dqk = q.shape[1], q.shape[2]
    dv = torch.zeros_like(dh)
    for c in range(dc_st.shape[1] - 1):
        t, w, d_t = key_side_gates(gate_b, gate_i, m_st, m_tok, seq, chunk, c, exp)
        pt = d_t * (k[:, t] @ q[:, t].transpose(1, 2)) * inv_den[:, None, t] * dqk**-0.5
        dv[:, t] = w[..., None] * (k[:, t] @ dc_st[:, c + 1]) + pt @ dh[:, t]
    return dv


def bw_dq_dk_inputs(seq: int, dqk: int, dv: int, chunk: int) -> tuple[torch.Tensor, ...]:
    """Fresh random backward tensors of two heads in ``launch_bw_dq``'s order (float16 operands, fp32 gates, float16
    states ``(BH, NC + 1, DHQK, DHHV)``: ``dq`` reads the first ``NC``, ``dk`` the last ``NC``)."""
    torch.manual_seed(torch.seed() % 2**31)
    bh, nc, f16 = 2, -(-seq // chunk), torch.float16
    sp = nc * chunk
    q, k = torch.randn(bh, seq, dqk, dtype=f16), torch.randn(bh, seq, dqk, dtype=f16)
    v, dh = torch.randn(bh, seq, dv, dtype=f16), torch.randn(bh, seq, dv, dtype=f16)
    gate_b = -torch.rand(bh, nc, chunk).cumsum(-1).reshape(bh, sp) * 0.05  # log forget gates, summed in each chunk
    gate_i, inv_den, dz = torch.randn(bh, sp) * 0.5, torch.rand(bh, sp) + 0.5, torch.randn(bh, sp) * 0.1
    m_tok, m_st = torch.rand(bh, sp), torch.rand(bh, nc + 1)
    states, vec_st = (torch.randn(bh, nc + 1, dqk, dv) * 0.1).to(f16), torch.randn(bh, nc + 1, dqk)
    return q, k, v, dh, gate_b, gate_i, inv_den, dz, states, vec_st, m_st, m_tok


BW_DQ_DK_CASES = [  # seq, q/k head dim, value head dim, chunk, ring stages
    (300, 64, 64, 256, 2),
    (256, 128, 64, 128, 6),
    (100, 48, 48, 64, 3),
    (128, 256, 512, 64, 4),
    (128, 256, 64, 64, 5),
    (200, 64, 160, 64, 3),
]


@pytest.mark.parametrize("exp", [True, False])
@pytest.mark.parametrize(("seq", "dqk", "dv", "chunk", "stages"), BW_DQ_DK_CASES)
@pytest.mark.parametrize("kernel", ["bw_dq", "bw_dk"])
def test_bw_dq_dk_match_float64(kernel: str, seq: int, dqk: int, dv: int, chunk: int, stages: int, exp: bool) -> None:
    """The Gluon ``dq`` and ``dk`` kernels on fresh random inputs (``bw_dq_dk_inputs``) against ``dq_reference`` /
    ``dk_reference``: the gradient (poisoned with NaN first) and its sums for the gate gradients (``q . dq``; ``k .
    dk``, its inter part, its off-diagonal part), with q/k head dims 48 (padded to 64) to 256, value head dims
    narrower than, as wide as and wider than those (two value-side slots at 7B, three at 64 x 160 with the last one
    partly past the end), S not a multiple of the chunk, the deepest ring that fits and shallower ones, and the TMA
    loads landing lazily or eagerly, the chained products synchronous or one in flight, one warpgroup or two.
    (``tests/test_gluon_time.py`` checks them against the Triton kernels.)"""
    from kernels.gluon import mlstm_bw_dq_dk

    tensors = bw_dq_dk_inputs(seq, dqk, dv, chunk)
    if kernel == "bw_dq":  # the states before each chunk, not after
        tensors = (*tensors[:8], tensors[8][:, :-1].contiguous(), *tensors[9:])
        ref, *ref_sums = dq_reference(*tensors, chunk, exp)
        names = ("q . dq",)
    else:
        ref, *ref_sums = dk_reference(*tensors, chunk, exp)
        names = ("k . dk", "its inter part", "its off-diagonal part")
    for landing, async_mma, warps in itertools.product(LANDINGS, (False, True), (4, 8)):
        case = f"{kernel}, {landing}, async_mma={async_mma}, num_warps={warps}"
        out = torch.full_like(tensors[0], float("nan"))
        options = dict(
            stages=min(stages, mlstm_bw_dq_dk.ring_stages(dqk, dv, warps)), async_mma=async_mma, num_warps=warps
        )
        kernel_fn, grid, args, constexprs = mlstm_bw_dq_dk.launch_args(kernel, *tensors, out, chunk, exp, **options)
        simulate(kernel_fn, grid, args, constexprs, landing=landing)
        assert not out.isnan().any(), f"{case}: the gradient has unwritten elements"
        assert rel(out, ref) < 2e-3, f"{case}: the gradient against float64: {rel(out, ref):.2e}"
        for name, got, want in zip(names, args["SUMS"], ref_sums, strict=True):
            assert rel(got[:, :seq], want) < 1e-4, f"{case}: {name} against float64: {rel(got[:, :seq], want):.2e}"


def one_launch_references(
    tensors: tuple[torch.Tensor, ...], chunk: int, exp: bool
) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """For ``bw_dq_dk_inputs``' ``tensors``: ``dq``'s tensors (the states before each chunk and ``n`` states of its
    own, so that a role that read the other's would show), the float64 ``dq`` and ``dk`` by name, and the four sums
    (``q . dq``, ``k . dk``, its inter part, its off-diagonal part)."""
    n_st = torch.randn_like(tensors[9])
    dq_tensors = (*tensors[:8], tensors[8][:, :-1].contiguous(), n_st, *tensors[10:])
    ref_dq, ref_qdq = dq_reference(*dq_tensors, chunk, exp)
    ref_dk, *ref_k_sums = dk_reference(*tensors, chunk, exp)
    return dq_tensors, {"dq": ref_dq, "dk": ref_dk}, (ref_qdq, *ref_k_sums)


def assert_one_launch_matches(
    case: str, grads: dict[str, torch.Tensor], refs: dict[str, torch.Tensor], args: dict, ref_sums: tuple, seq: int
) -> None:
    """Each gradient of ``grads`` written everywhere and within 2e-3 of its float64 reference, and the sums in
    ``args["SUMS_Q"]`` / ``args["SUMS_K"]`` within 1e-4 of ``ref_sums``."""
    for name, got in grads.items():
        assert not got.isnan().any(), f"{case}: {name} has unwritten elements"
        assert rel(got, refs[name]) < 2e-3, f"{case}: {name} against float64: {rel(got, refs[name]):.2e}"
    sums = (args["SUMS_Q"][0], *args["SUMS_K"])
    for name, got, want in zip(("q . dq", "k . dk", "its inter part", "its off-diagonal part"), sums, ref_sums,
                               strict=True):  # fmt: skip
        assert rel(got[:, :seq], want) < 1e-4, f"{case}: {name} against float64: {rel(got[:, :seq], want):.2e}"


@pytest.mark.parametrize("exp", [True, False])
@pytest.mark.parametrize(("seq", "dqk", "dv", "chunk", "stages"), BW_DQ_DK_CASES)
def test_bw_dq_dk_in_one_launch_match_float64(seq: int, dqk: int, dv: int, chunk: int, stages: int, exp: bool) -> None:
    """``dq`` and ``dk`` in one launch (``launch_bw_dq_dk``: ``bw_dq_dk_pair_kernel``, the role a runtime flag) on
    ``test_bw_dq_dk_match_float64``'s cases: both gradients (poisoned with NaN first) and all four sums against
    ``dq_reference`` / ``dk_reference``, over both landings, the products synchronous or one in flight, one
    warpgroup or two."""
    from kernels.gluon import mlstm_bw_dq_dk

    tensors = bw_dq_dk_inputs(seq, dqk, dv, chunk)
    dq_tensors, refs, ref_sums = one_launch_references(tensors, chunk, exp)
    for landing, async_mma, warps in itertools.product(LANDINGS, (False, True), (4, 8)):
        case = f"one launch, {landing}, async_mma={async_mma}, num_warps={warps}"
        dq, dk = torch.full_like(tensors[0], float("nan")), torch.full_like(tensors[1], float("nan"))
        options = dict(
            stages=min(stages, mlstm_bw_dq_dk.ring_stages(dqk, dv, warps)), async_mma=async_mma, num_warps=warps
        )
        kernel_fn, grid, args, constexprs = mlstm_bw_dq_dk.pair_launch_args(
            (*dq_tensors, dq), (*tensors, dk), chunk, exp, **options
        )
        assert grid[0] == 2 * (-(-seq // chunk)) * chunk // 64, case
        simulate(kernel_fn, grid, args, constexprs, landing=landing)
        assert_one_launch_matches(case, {"dq": dq, "dk": dk}, refs, args, ref_sums, seq)


@pytest.mark.parametrize("exp", [True, False])
@pytest.mark.parametrize(("seq", "dqk", "dv", "chunk", "stages"), BW_DQ_DK_CASES)
def test_bw_grads_in_one_launch_match_float64(seq: int, dqk: int, dv: int, chunk: int, stages: int, exp: bool) -> None:
    """``dq``, ``dk`` and ``dv`` in one launch (``mlstm_bw_grads.launch_args``: each row tile's ``dq``, ``dk`` and
    ``dv`` programs side by side) on ``test_bw_dq_dk_match_float64``'s cases: the three gradients (poisoned with NaN
    first) against ``dq_reference``, ``dk_reference`` and ``dv_reference``, and the four sums, over both landings,
    the ``dv`` programs' ring 2 or 3 deep, one warpgroup or two."""
    from kernels.gluon import mlstm_bw_dq_dk, mlstm_bw_grads

    tensors = bw_dq_dk_inputs(seq, dqk, dv, chunk)
    q, k, v, dh, gate_b, gate_i, inv_den, _, states, _, m_st, m_tok = tensors
    dq_tensors, refs, ref_sums = one_launch_references(tensors, chunk, exp)
    dv_tensors = (q, k, dh, gate_b, gate_i, inv_den, states, m_st, m_tok)
    refs["dv"] = dv_reference(*dv_tensors, chunk, exp)
    for landing, (dv_stages, warps) in itertools.product(LANDINGS, ((2, 4), (3, 8))):
        case = f"one launch with dv, {landing}, dv_stages={dv_stages}, num_warps={warps}"
        dq, dk, dv_out = (torch.full_like(x, float("nan")) for x in (q, k, v))
        kernel_fn, grid, args, constexprs = mlstm_bw_grads.launch_args(
            (*dq_tensors, dq), (*tensors, dk), (*dv_tensors, dv_out), chunk, exp, dv_stages=dv_stages,
            stages=min(stages, mlstm_bw_dq_dk.ring_stages(dqk, dv, warps)), num_warps=warps,
        )  # fmt: skip
        assert grid[0] == (2 + -(-dv // args["DV_D"].block_shape[2])) * -(-seq // chunk) * chunk // 64, case
        simulate(kernel_fn, grid, args, constexprs, landing=landing)
        assert_one_launch_matches(case, {"dq": dq, "dk": dk, "dv": dv_out}, refs, args, ref_sums, seq)


@pytest.mark.parametrize("kernel", ["bw_dq", "bw_dk"])
def test_bw_dq_dk_refuse_what_they_cannot_take(kernel: str) -> None:
    from kernels.gluon import mlstm_bw_dq_dk

    def q(d: int, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        return torch.empty(1, 64, d, dtype=dtype)

    for bad, chunk, dhhv, match in (
        (q(64, torch.float32), 64, 64, f"the Gluon {kernel} takes float16 or bfloat16"),
        (q(320), 64, 64, "head dim from 33 to 256"),
        (q(32), 64, 64, "head dim from 33 to 256"),
        (q(64), 96, 64, "chunk size that is a multiple of 64; got 96"),
        (q(256), 64, 2048, "head dims 256 x 2048 leave no room in shared memory for a ring of two slots"),
    ):
        with pytest.raises(ValueError, match=match):
            mlstm_bw_dq_dk.check(kernel, bad, chunk, dhhv)
    assert mlstm_bw_dq_dk.ring_stages(256, 512) == 4 and mlstm_bw_dq_dk.ring_stages(128, 256) == 8
    tensors = [torch.empty(1, 64, 64, dtype=torch.float16) for _ in range(4)] + [torch.empty(1, 64) for _ in range(4)]
    tensors += [
        torch.empty(1, 2, 64, 64, dtype=torch.float16),
        torch.empty(1, 2, 64),
        torch.empty(1, 2),
        torch.empty(1, 64),
    ]
    grad = torch.empty(1, 64, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="num_warps is 4"):
        mlstm_bw_dq_dk.launch_args(kernel, *tensors, grad, 64, True, num_warps=2)
    with pytest.raises(ValueError, match="stages is 2 to 8 at head dims 64 x 64 \\(shared memory\\); got 9"):
        mlstm_bw_dq_dk.launch_args(kernel, *tensors, grad, 64, True, stages=9)


@pytest.mark.parametrize(
    "variant,shape,chunk,launches",
    [
        ("exp", (1, 2, 100, 32, 64), 64, "apart"),
        ("sig", (1, 2, 100, 32, 64), 64, "apart"),
        ("sig", (1, 1, 200, 64, 64), 128, "apart"),
        ("exp", (1, 2, 200, 64, 64), 128, "dq + dk"),
        ("sig", (1, 2, 200, 64, 160), 64, "dq + dk + dv"),
    ],
)
def test_the_gluon_backend_runs_simulated_on_the_cpu(
    variant: str, shape: tuple[int, ...], chunk: int, launches: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mlstm_tfla(backend="gluon")`` on CPU tensors runs the Gluon state, output, state-gradient and ``dv``
    kernels in the simulator with the options ``kernels.gluon.config`` picks (chunk 128: two consumer warpgroups each
    in the output and ``dv`` kernels; from a q/k head dim of 64 the ``dq`` and ``dk`` kernels, in two launches or
    one, or one with ``dv``): output and every gradient as ``backend="triton"`` (float16, S not a multiple of the
    chunk); ``auto`` never picks it there."""
    from kernels.gluon import mlstm_bw_dq_dk, mlstm_bw_grads, mlstm_bw_states, mlstm_fw_states
    from kernels.mlstm.backends import choose_backend

    calls: dict[str, list[dict]] = {"fw_states": [], "bw_states": []}
    for module, kernel in ((mlstm_fw_states, "fw_states"), (mlstm_bw_states, "bw_states")):
        launch = getattr(module, f"launch_{kernel}")
        recorded = lambda *a, launch=launch, kernel=kernel, **o: (calls[kernel].append(o), launch(*a, **o))[1]  # noqa: E731
        monkeypatch.setattr(module, f"launch_{kernel}", recorded)
    pin_launches(monkeypatch, launches)
    launched: dict[str, list[tuple]] = {"dq + dk": [], "dq + dk + dv": []}
    for module, name, key in (
        (mlstm_bw_dq_dk, "pair_launch_args", "dq + dk"),
        (mlstm_bw_grads, "launch_args", "dq + dk + dv"),
    ):
        launch = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda *a, launch=launch, key=key, **o: (launched[key].append(a), launch(*a, **o))[1]
        )
    errors = gluon_against_triton("cpu", torch.float16, shape, variant, chunk)
    assert all(err < 2e-3 for err in errors.values()), errors
    # once in the Gluon pass where pinned (the launch with dv builds on the pair's arguments)
    assert len(launched["dq + dk + dv"]) == int(launches == "dq + dk + dv"), launches
    assert len(launched["dq + dk"]) == int(launches != "apart"), launches
    for kernel, options in calls.items():  # the Gluon state kernels ran, one call a pass
        assert len(options) == 1 and options[0]["bl"] == min(chunk, 128), (kernel, options)
    assert choose_backend("auto", torch.device("cpu"), torch.float16, 32, 64) == "triton"


# ----------------------------------------------------------------------------------------------------------------
# Planted bugs: small kernels that do one thing wrong.


@gluon.jit
def copy_kernel(X_D, OUT, PARITY: gl.constexpr, WAITS: gl.constexpr, EXPECTS: gl.constexpr):
    """One TMA load of X_D's block into shared memory, ``EXPECTS`` expects, ``WAITS`` waits on parity ``PARITY``,
    then the block to ``OUT`` (row-major)."""
    R: gl.constexpr = X_D.block_type.shape[0]
    C: gl.constexpr = X_D.block_type.shape[1]
    layout: gl.constexpr = gl.BlockedLayout([1, 1], [4, 8], [4, 1], [1, 0])
    smem = gl.allocate_shared_memory(X_D.dtype, [R, C], X_D.layout)
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    for _ in gl.static_range(EXPECTS):
        mbarrier.expect(bar, X_D.block_type.nbytes)
    compat.tma_load(X_D, [0, 0], bar, smem)
    for w in gl.static_range(WAITS):
        mbarrier.wait(bar, PARITY ^ (w & 1))
    rows = gl.arange(0, R, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, C, layout=gl.SliceLayout(0, layout))
    gl.store(OUT + rows[:, None] * C + cols[None, :], smem.load(layout))
    mbarrier.invalidate(bar)


def _copy(
    parity: int = 0, waits: int = 1, expects: int = 1, landing: str = "lazy"
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(32, 64, dtype=torch.float16)
    out = torch.full_like(x, float("nan"))
    desc = TensorDescriptor.from_tensor(x, [32, 64], gl.NVMMASharedLayout.get_default_for([32, 64], gl.float16))
    simulate(copy_kernel, (1,), {"X_D": desc, "OUT": out}, {"PARITY": parity, "WAITS": waits, "EXPECTS": expects},
             landing=landing)  # fmt: skip
    return x, out


def test_a_correct_copy_copies() -> None:
    for landing in LANDINGS:
        x, out = _copy(landing=landing)
        assert torch.equal(out, x)


def test_a_wait_on_the_wrong_parity_is_caught_in_either_landing_order() -> None:
    """``wait(bar, 1)`` on a fresh barrier returns at once: with lazy landing the read sees the NaN poison; with
    eager landing the load has completed phase 0 already, so the wait is for a phase nobody completes."""
    _, out = _copy(parity=1, landing="lazy")
    assert out.isnan().all()
    with pytest.raises(SimulationError, match="deadlock"):
        _copy(parity=1, landing="eager")


def test_waiting_for_a_phase_nobody_completes_is_a_deadlock_not_a_hang() -> None:
    with pytest.raises(SimulationError, match=r"deadlock in program \(0, 0, 0\): every thread waits: barrier 0"):
        _copy(waits=2)


def test_more_arrivals_than_the_count_are_refused() -> None:
    with pytest.raises(SimulationError, match="more arrivals than its count 1"):
        _copy(expects=2)


@gluon.jit
def _ping(a, b):
    mbarrier.wait(a, 0)
    mbarrier.arrive(b, count=1)


@gluon.jit
def crossed_kernel(ORDERED: gl.constexpr):
    """Two partitions, each arriving on the barrier the other waits for; crossed (not ``ORDERED``), each waits
    first: a deadlock across threads."""
    bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(bars.index(0), count=1)
    mbarrier.init(bars.index(1), count=1)
    if ORDERED:
        mbarrier.arrive(bars.index(0), count=1)
    gl.warp_specialize([(_ping, (bars.index(0), bars.index(1))), (_ping, (bars.index(1), bars.index(0)))], [1], [24])


def test_partitions_waiting_on_each_other_are_a_deadlock_not_a_hang() -> None:
    simulate(crossed_kernel, (1,), {}, {"ORDERED": True})
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            simulate(crossed_kernel, (1,), {}, {"ORDERED": False})
        except SimulationError as err:
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the simulator hung instead of reporting the deadlock"
    assert (
        outcome and "deadlock" in str(outcome[0]) and "barrier 0" in str(outcome[0]) and "barrier 1" in str(outcome[0])
    )


@gluon.jit
def _turn_taker(turns, LOG, ME: gl.constexpr, TURNS: gl.constexpr):
    """``TURNS`` turns of consumer ``ME`` (``intra_chunk.wait_turn``, first and second product alternately), each
    appending ``ME`` to the log ``LOG[1:]`` (``LOG[0]``: its length) while it holds the turn."""
    for k in gl.static_range(TURNS):
        wait_turn(turns, ME, k % 2)
        n = gl.load(LOG)
        gl.store(LOG + 1 + n, ME)
        gl.store(LOG, n + 1)
        pass_turn(turns, ME)


@gluon.jit
def turns_kernel(LOG, TURNS: gl.constexpr, SECOND_ME: gl.constexpr):
    """Two consumers taking ``TURNS`` turns each; ``SECOND_ME`` is the second one's consumer index (1; 0 plants the
    bug of a consumer that waits on the first one's barrier)."""
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    init_turns(turns)
    gl.warp_specialize(
        [(_turn_taker, (turns, LOG, 0, TURNS)), (_turn_taker, (turns, LOG, SECOND_ME, TURNS))], [4], [24]
    )
    invalidate_turns(turns)


def test_ping_pong_turns_alternate_strictly() -> None:
    """The two consumers' turns interleave 0, 1, 0, 1, ... whatever the thread schedule (each appends to a log only
    while it holds the turn); a consumer waiting on the other's barrier is a deadlock the simulator reports."""
    for _ in range(3):
        log = torch.full((1 + 12,), -1, dtype=torch.int32)
        log[0] = 0
        simulate(turns_kernel, (1,), {"LOG": log}, {"TURNS": 6, "SECOND_ME": 1})
        assert log.tolist() == [12] + [0, 1] * 6
    with pytest.raises(SimulationError, match="deadlock"):
        simulate(turns_kernel, (1,), {"LOG": torch.zeros(13, dtype=torch.int32)}, {"TURNS": 6, "SECOND_ME": 0})


@gluon.jit
def oob_kernel(X, N, USE: gl.constexpr):
    offs = gl.arange(0, 64, layout=gl.BlockedLayout([1], [32], [4], [0]))
    if USE == 0:
        gl.store(X + offs, gl.load(X + offs) + 1.0)
    elif USE == 1:
        gl.store(X + offs, gl.load(X + offs, mask=offs < N, other=0.0) + 1.0, mask=offs < N)
    else:
        gl.store(X + offs, gl.histogram(offs, 8))


def test_unmasked_out_of_bounds_accesses_and_unknown_operations_are_reported() -> None:
    x = torch.zeros(40)
    with pytest.raises(SimulationError, match="gl.load at element 40 of a tensor of 40"):
        simulate(oob_kernel, (1,), {"X": x, "N": 40}, {"USE": 0})
    simulate(oob_kernel, (1,), {"X": x, "N": 40}, {"USE": 1})
    assert torch.equal(x, torch.ones(40))
    with pytest.raises(SimulationError, match="does not implement gl.histogram"):
        simulate(oob_kernel, (1,), {"X": x, "N": 40}, {"USE": 2})
    with pytest.raises(SimulationError, match="contiguous CPU tensors; got a non-contiguous one"):
        simulate(oob_kernel, (1,), {"X": torch.zeros(40, 2).t(), "N": 40}, {"USE": 1})


def test_bad_landing_is_refused() -> None:
    with pytest.raises(ValueError, match="landing must be one of lazy, eager; got 'soon'"):
        simulate(oob_kernel, (1,), {}, {}, landing="soon")


def states_reference(k, v, gate_b, gate_i, init, chunk, exp):  # noqa: ANN001, ANN201
    """``fw_chunk_states_kernel``'s states in float64, chunk by chunk: the state before each chunk ``C_c, n_c, m_c``,
    then the stabilizer's move to ``m' = max(g + m, max_t g - b_t + i_t)`` (mLSTMexp; 0 for mLSTMsig), the decay
    ``exp(g + m - m')`` and the chunk's ``sum_t w_t k_t^T v_t`` with ``w_t = exp(g - m' - b_t + i_t)``."""
    k, v, gate_b, gate_i = (x.double() for x in (k, v, gate_b, gate_i))
    bh, seq, dqk = k.shape
    nc = gate_b.shape[1] // chunk
    pad = nc * chunk - seq
    k, v = torch.nn.functional.pad(k, (0, 0, 0, pad)), torch.nn.functional.pad(v, (0, 0, 0, pad))
    C = init[0].double().clone() if init else torch.zeros(bh, dqk, v.shape[-1], dtype=torch.float64)
    n = init[1].double().clone() if init else torch.zeros(bh, dqk, dtype=torch.float64)
    m = init[2].double().clone() if init and exp else torch.zeros(bh, dtype=torch.float64)
    c_st, n_st, m_st = [], [], []
    for c in range(nc):
        c_st.append(C.clone()), n_st.append(n.clone()), m_st.append(m.clone())
        t = slice(c * chunk, (c + 1) * chunk)
        g = gate_b[:, c * chunk + chunk - 1]
        i_b = gate_i[:, t] - gate_b[:, t]
        m_new = torch.maximum(g + m, g + i_b.amax(-1)) if exp else torch.zeros_like(m)
        decay = torch.exp(g + m - m_new)
        w = torch.exp((g - m_new)[:, None] + i_b)
        C = decay[:, None, None] * C + (k[:, t] * w[..., None]).transpose(1, 2) @ v[:, t]
        n = decay[:, None] * n + (k[:, t] * w[..., None]).sum(1)
        m = m_new
    n_st.append(n), m_st.append(m)
    return torch.stack(c_st, 1), torch.stack(n_st, 1), torch.stack(m_st, 1), C


@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("exp", [True, False])
@pytest.mark.parametrize(
    ("seq", "dqk", "dv", "chunk", "options"),
    [
        (300, 64, 128, 128, dict(bl=64, bv=128, stages=3)),
        (200, 96, 80, 64, dict(bl=32, bv=64, stages=2)),
        (512, 64, 256, 256, dict(bl=128, bv=256, stages=2)),
        # two consumer warpgroups a program: whole 64-row tiles each, and the second one's rows partly past 96
        (300, 128, 64, 128, dict(bl=64, bv=64, stages=3, consumers=2)),
        (200, 96, 80, 64, dict(bl=32, bv=64, stages=2, consumers=2)),
        # the gates loaded one token a thread (fewer tokens than threads at 32 and 64 a slice: held twice or more)
        (512, 64, 256, 256, dict(bl=128, bv=256, stages=2, packed_gates=True)),
        (300, 128, 64, 128, dict(bl=64, bv=64, stages=3, consumers=2, packed_gates=True)),
        (200, 96, 80, 64, dict(bl=32, bv=64, stages=2, consumers=2, packed_gates=True)),
        # one shared buffer a consumer for the states' stores (every store waited for before the next is written)
        (300, 128, 256, 128, dict(bl=64, bv=256, stages=3, consumers=2, packed_gates=True, store_bufs=1)),
        (200, 96, 80, 64, dict(bl=32, bv=64, stages=2, store_bufs=1)),
    ],
)
def test_fw_states_matches_float64(
    seq: int, dqk: int, dv: int, chunk: int, options: dict, exp: bool, init: bool
) -> None:
    """The Gluon state kernel on fresh random inputs against ``states_reference``: every state before a chunk
    (poisoned with NaN first), ``n`` and ``m`` at every chunk boundary and the last state, with and without initial
    states, head dims that are not multiples of the tile (96 x 80), S not a multiple of the chunk, token slices of
    32..128, one or two consumer warpgroups, the gates in the ``k`` tile's rows or one token a thread, one or two
    shared buffers for the states' stores and the loads landing lazily or eagerly."""
    from kernels.gluon import mlstm_fw_states

    torch.manual_seed(torch.seed() % 2**31)
    bh, nc, f16 = 2, -(-seq // chunk), torch.float16
    sp = nc * chunk
    k, v = torch.randn(bh, seq, dqk, dtype=f16), torch.randn(bh, seq, dv, dtype=f16)
    gate_b = -torch.rand(bh, nc, chunk).cumsum(-1).reshape(bh, sp) * 0.05  # log forget gates, summed in each chunk
    gate_i = torch.randn(bh, sp) * 0.5
    start = (torch.randn(bh, dqk, dv) * 0.1, torch.randn(bh, dqk), torch.rand(bh)) if init else None
    ref_c, ref_n, ref_m, ref_last = states_reference(k, v, gate_b, gate_i, start, chunk, exp)
    for landing in LANDINGS:
        c_st = torch.full((bh, nc, dqk, dv), float("nan"), dtype=f16)
        n_st, m_st = torch.full((bh, nc + 1, dqk), float("nan")), torch.full((bh, nc + 1), float("nan"))
        c_last = torch.full((bh, dqk, dv), float("nan"))
        tensors = (k, v, gate_b, gate_i, start, c_st, n_st, m_st, c_last)
        kernel, grid, args, constexprs = mlstm_fw_states.launch_args(*tensors, chunk, exp, **options)
        simulate(kernel, grid, args, constexprs, landing=landing)
        for name, got, want, bound in (
            ("C before each chunk", c_st, ref_c, 2e-3),
            ("n", n_st, ref_n, 1e-5),
            ("m", m_st, ref_m, 1e-6),
            ("the last C", c_last, ref_last, 1e-3),
        ):
            assert not got.isnan().any(), f"{landing}: {name} has unwritten elements"
            err = rel(got, want) if want.norm() > 0 else (got.double() - want).norm().item()  # mLSTMsig's m: zeros
            assert err < bound, f"{landing}: {name} against float64: {err:.2e}"


def test_fw_states_refuses_what_it_cannot_take() -> None:
    from kernels.gluon import mlstm_fw_states

    k = torch.empty(1, 64, 64, dtype=torch.float16)
    for bad, chunk, tiles, match in (
        (k.float(), 64, (64, 64, 64), "float16 or bfloat16"),
        (k, 64, (64, 128, 64), "BK=64 \\(one wgmma's rows\\); got BK=128"),
        (k, 64, (64, 64, 96), "BV in 16, 32, 64, 128, 256; got BV=96"),
        (k, 96, (64, 64, 64), "dividing the chunk size 96; got BL=64"),
        (k, 64, (8, 64, 64), "got BL=8"),
        (k, 64, (64, 64, 64, 3), "consumers 1 or 2; got 3"),
    ):
        with pytest.raises(ValueError, match=match):
            mlstm_fw_states.check(bad, chunk, *tiles)
    from tests.gluon_cases import fw_states_tensors

    with pytest.raises(ValueError, match="store_bufs 1 or 2; got 3"):
        mlstm_fw_states.launch_args(*fw_states_tensors(64, 64, 128, 64), 64, False, store_bufs=3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("last", [False, True])
@pytest.mark.parametrize("exp", [True, False])
@pytest.mark.parametrize(
    ("seq", "dqk", "dv", "chunk", "options"),
    [
        (300, 128, 64, 128, dict(bl=64, bv=64, stages=3, consumers=2)),
        (200, 96, 80, 64, dict(bl=32, bv=64, stages=2, consumers=2)),
        (256, 64, 128, 128, dict(bl=128, bv=128, stages=2, consumers=1)),
        (600, 128, 64, 256, dict(bl=128, bv=64, stages=2, consumers=2)),
        (700, 128, 64, 512, dict(bl=128, bv=64, stages=2, consumers=2)),  # four slices a chunk, as the backend's 512
        # one forward state slot a consumer (what two consumers of 256 columns fit), head dims inside the tile
        (300, 128, 200, 128, dict(bl=64, bv=256, stages=3, consumers=2, state_slots=1)),
        (200, 64, 64, 64, dict(bl=64, bv=64, stages=2, consumers=1, state_slots=1)),  # one slice a chunk
    ],
)
def test_bw_states_matches_float64(
    seq: int, dqk: int, dv: int, chunk: int, options: dict, exp: bool, last: bool, dtype: torch.dtype
) -> None:
    """The Gluon state-gradient kernel on fresh random inputs against ``state_grads_reference``: every state
    gradient (poisoned with NaN first), ``dn``, the first state's gradient and the forget-gate parts summed over the
    tiles, with and without the last states' gradients, both variants, fp16 (the factors scaled per slice) and bf16
    (the products chained asynchronously), head dims that are not multiples of the tile, S not a multiple of the
    chunk, one or two consumer warpgroups, the loads landing lazily or eagerly."""
    from kernels.gluon import mlstm_bw_states

    torch.manual_seed(torch.seed() % 2**31)
    bh, nc = 2, -(-seq // chunk)
    sp = nc * chunk
    q, dh = torch.randn(bh, seq, dqk, dtype=dtype), torch.randn(bh, seq, dv, dtype=dtype)
    gate_b = -torch.rand(bh, nc, chunk).cumsum(-1).reshape(bh, sp) * 0.05
    inv_den, dz = torch.rand(bh, sp) + 0.5, torch.randn(bh, sp)
    c_st, n_st = torch.randn(bh, nc, dqk, dv).to(dtype), torch.randn(bh, nc + 1, dqk)
    m_st, m_tok = torch.rand(bh, nc + 1), torch.rand(bh, sp)
    grads = (torch.randn(bh, dqk, dv) * 0.1, torch.randn(bh, dqk)) if last else None
    ref = state_grads_reference(q, dh, gate_b, inv_den, dz, c_st, n_st, m_st, m_tok, grads, chunk, exp)
    for landing in LANDINGS:
        dc_st = torch.full((bh, nc + 1, dqk, dv), float("nan"), dtype=dtype)
        dn_st, dc_first = torch.full((bh, nc + 1, dqk), float("nan")), torch.full((bh, dqk, dv), float("nan"))
        dc_last, dn_last = grads or (dc_first, dn_st)  # unread without them
        tensors = (q, dh, gate_b, inv_den, dz, c_st, n_st, m_st, m_tok, dc_last, dn_last, dc_st, dn_st, dc_first)
        kernel, grid, args, constexprs = mlstm_bw_states.launch_args(*tensors, last, chunk, exp, **options)
        simulate(kernel, grid, args, constexprs, landing=landing)
        bound = 1e-2 if dtype == torch.bfloat16 else 3e-3
        parts = args["X_PART"].sum(0)
        for name, got, err in (
            ("dC after each chunk", dc_st[:, 1:], rel(dc_st[:, 1:], ref.dc)),
            ("dn", dn_st, rel(dn_st, ref.dn)),
            ("the first dC", dc_first, rel(dc_first, ref.first)),
            ("the forget-gate parts", parts, forget_gate_parts_error(parts, ref)),
        ):
            assert not got.isnan().any(), f"{landing}: {name} has unwritten elements"
            assert err < bound, f"{landing}: {name} against float64: {err:.2e}"


def test_bw_states_refuses_state_slots_outside_one_and_two() -> None:
    from kernels.gluon import mlstm_bw_states
    from tests.gluon_cases import bw_states_tensors

    with pytest.raises(ValueError, match="state_slots 1 or 2; got 0"):
        mlstm_bw_states.launch_args(*bw_states_tensors(64, 64, 256, 128), False, 128, False, state_slots=0)


def test_bw_states_keeps_tiny_factors_in_float16() -> None:
    """fp16: per-token factors near e^-20 (a long-forgotten stabilizer) would flush ``q a`` to zero in the operand;
    the kernel scales them to the slice's largest and back in fp32, so the gradients still match float64."""
    from kernels.gluon import mlstm_bw_states

    torch.manual_seed(torch.seed() % 2**31)
    bh, seq, dqk, dv, chunk, f16 = 2, 128, 64, 64, 64, torch.float16
    q, dh = torch.randn(bh, seq, dqk, dtype=f16), torch.randn(bh, seq, dv, dtype=f16)
    gate_b, inv_den, dz = -torch.rand(bh, seq) * 0.1, torch.rand(bh, seq) + 0.5, torch.randn(bh, seq)
    c_st, n_st = torch.randn(bh, 2, dqk, dv).to(f16), torch.randn(bh, 3, dqk)
    m_st, m_tok = torch.rand(bh, 3), torch.rand(bh, seq) + 20.0  # w_t ~ e^-20
    ref_first = state_grads_reference(q, dh, gate_b, inv_den, dz, c_st, n_st, m_st, m_tok, None, chunk, True).first
    dc_st, dn_st, dc_first = torch.zeros(bh, 3, dqk, dv, dtype=f16), torch.zeros(bh, 3, dqk), torch.zeros(bh, dqk, dv)
    tensors = (q, dh, gate_b, inv_den, dz, c_st, n_st, m_st, m_tok, dc_first, dn_st, dc_st, dn_st, dc_first)
    kernel, grid, args, constexprs = mlstm_bw_states.launch_args(*tensors, False, chunk, True, bl=64, bv=64)
    simulate(kernel, grid, args, constexprs)
    assert rel(dc_first, ref_first) < 3e-3, rel(dc_first, ref_first)


def test_bw_states_is_as_accurate_as_the_triton_kernel_on_a_real_backward() -> None:
    """The GPU test's check (``bw_states_against_float64``) on the CPU: a float16 Triton backward through the
    interpreter hands its state kernel's arguments to the simulated Gluon kernel; both against float64."""
    for name, (gluon_err, triton_err) in bw_states_against_float64("cpu", torch.float16, 200, 128, 64, 64).items():
        assert gluon_err < max(2 * triton_err, 1e-3), f"{name}: Gluon {gluon_err:.2e}, Triton {triton_err:.2e}"
