"""Gluon kernels: compiled for sm_90 here without a GPU (Triton's ptxas), run against float64 on the device."""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

gluon = pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper", reason="this Triton has no Gluon")

from kernels.gluon import support, ws_matmul  # noqa: E402
from tests.gluon_cases import (  # noqa: E402
    FW_OUTPUT_KERNELS,
    LAUNCHES,
    bw_states_against_float64,
    gluon_against_triton,
    pin_launches,
)

ROOT = Path(__file__).resolve().parents[1]
HOPPER_SMEM_BYTES = 227 * 1024  # the most dynamic shared memory one block of an sm_90 GPU may take


@functools.cache
def _compiled() -> dict:
    """``tests.gluon_cases.report()`` in a child process without ``TRITON_INTERPRET`` and with an empty Triton
    cache, so every kernel really goes through the front end, LLVM and ptxas."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as cache:
        env["TRITON_CACHE_DIR"] = cache
        done = subprocess.run(
            [sys.executable, "-m", "tests.gluon_cases"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _case(name: str) -> dict:
    facts = _compiled()[name]
    assert "error" not in facts, facts.get("error")
    return facts


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_ws_matmul_lowers_to_warp_specialized_wgmma(dtype: str) -> None:
    """The kernel compiles to a cubin whose PTX has the asynchronous wgmma, the TMA loads, the mbarrier waits and
    the per-partition register split (``setmaxnreg``) of a warp-specialized kernel, in sm_90's shared memory."""
    facts = _case(f"ws_matmul {dtype}")
    assert all(facts["has"].values()), facts["has"]
    assert facts["cubin_bytes"] > 0 and facts["wgmma"].endswith(f".{dtype.replace('fp', 'f')}")
    assert 3 * (128 * 64 + 64 * 128) * 2 <= facts["shared"] <= HOPPER_SMEM_BYTES


@pytest.mark.parametrize(("block_m", "block_n", "num_warps"), [(128, 128, 4), (64, 256, 4), (128, 256, 8)])
def test_instr_n_is_a_legal_wgmma_width(block_m: int, block_n: int, num_warps: int) -> None:
    n = ws_matmul.instr_n(block_m, block_n, num_warps)
    assert n % 8 == 0 and 8 <= n <= 256 and block_n % n == 0


def test_unavailable_reason_names_the_gpu_when_there_is_none() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert "GPU" in (support.unavailable_reason() or "")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("m", "n", "k"), [(256, 256, 512), (300, 136, 200), (1024, 2048, 4096)])
def test_ws_matmul_matches_float64(m: int, n: int, k: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh random inputs, shapes that are not multiples of the blocks, output poisoned with NaN beforehand."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if (reason := support.unavailable_reason()) is not None:
        pytest.skip(reason)
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % 2**31)
    a = torch.randn(m, k, device="cuda", dtype=dtype, generator=gen)
    b = torch.randn(k, n, device="cuda", dtype=dtype, generator=gen)
    out = ws_matmul.ws_matmul(a, b, out=torch.full((m, n), float("nan"), device="cuda", dtype=dtype)).double()
    ref = a.double() @ b.double()
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < (5e-3 if dtype == torch.float16 else 2e-2), f"relative error {err:.2e}"


@pytest.mark.parametrize("kernel", ["fw_output", "fw_output_ws"])
@pytest.mark.parametrize("variant", ["exp", "sig", "pieces"])
@pytest.mark.parametrize("dims", ["256x512", "64x64"])
def test_fw_output_lowers_to_wgmma_in_hopper_shared_memory(kernel: str, variant: str, dims: str) -> None:
    """Both kernels compile to wgmma and TMA in sm_90's shared memory; the warp-specialized one splits the
    registers between its partitions (``setmaxnreg``), the other does not. ``pieces``: the state slice in pieces,
    which is what lets BV 256 (a 64 x 256 x 16 wgmma) fit beside the 7B head dims."""
    facts = _case(f"{kernel} {variant} {dims}")
    if variant == "pieces" and dims == "256x512":
        assert facts.get("wgmma", "").startswith("wgmma.mma_async.sync.aligned.m64n256k16"), facts
    assert facts["has"]["wgmma.mma_async"] and facts["has"]["cp.async.bulk.tensor"] and facts["cubin_bytes"] > 0
    assert facts["has"]["setmaxnreg"] == (kernel == "fw_output_ws")
    assert facts["shared"] <= HOPPER_SMEM_BYTES


@pytest.mark.parametrize("pingpong", ["", " pingpong"])
@pytest.mark.parametrize("dims", ["256x512", "128x256", "64x64"])
def test_two_consumer_fw_output_lowers_to_warp_specialized_wgmma(dims: str, pingpong: str) -> None:
    """Two consumer warpgroups and the load warp: registers split by ``setmaxnreg``, BV 256 (the 64 x 256 x 16 wgmma)
    beside the 7B and the paper's head dims within sm_90's shared memory (the output tile through the query buffer
    where their shapes match); the same with the consumers' products in ping-pong turns."""
    facts = _case(f"fw_output_ws2{pingpong} pieces {dims}")
    assert facts["has"]["setmaxnreg"] and facts["has"]["cp.async.bulk.tensor"] and facts["shared"] <= HOPPER_SMEM_BYTES
    assert facts["wgmma"].startswith("wgmma.mma_async.sync.aligned.m64n" + ("64" if dims == "64x64" else "256"))


@pytest.mark.parametrize("state", ["pieces", "whole"])
@pytest.mark.parametrize("dims", ["256x512", "128x256", "64x64"])
def test_bw_dv_lowers_to_warp_specialized_wgmma_in_hopper_shared_memory(state: str, dims: str) -> None:
    """The Gluon ``dv`` kernel: the load warp and one consumer warpgroup (``setmaxnreg``), TMA, wgmma within sm_90's
    shared memory; with the state gradient in pieces ``BV`` 256 (the 64 x 256 x 16 wgmma) beside the 7B head dims,
    whole ``BV`` 128."""
    facts = _case(f"bw_dv {state} {dims}")
    assert facts["has"]["setmaxnreg"] and facts["has"]["cp.async.bulk.tensor"] and facts["shared"] <= HOPPER_SMEM_BYTES
    widest = "64" if dims == "64x64" else "256" if state == "pieces" else "128"
    assert facts["wgmma"].startswith(f"wgmma.mma_async.sync.aligned.m64n{widest}"), facts


@pytest.mark.parametrize("pingpong", ["", " pingpong"])
@pytest.mark.parametrize("dims", ["256x512", "128x256", "64x64"])
def test_two_consumer_bw_dv_lowers_within_hopper_shared_memory(dims: str, pingpong: str) -> None:
    """Two consumer warpgroups of 64 keys, the state gradient in pieces, BV 256 beside the 7B head dims; free or in
    ping-pong turns."""
    facts = _case(f"bw_dv2{pingpong} pieces {dims}")
    assert facts["has"]["setmaxnreg"] and facts["has"]["cp.async.bulk.tensor"] and facts["shared"] <= HOPPER_SMEM_BYTES
    assert facts["wgmma"].startswith("wgmma.mma_async.sync.aligned.m64n" + ("64" if dims == "64x64" else "256"))


@pytest.mark.parametrize("warps", [4, 8])
@pytest.mark.parametrize("mma", ["", " async"])
@pytest.mark.parametrize("dims", ["256x512", "128x256", "64x64"])
@pytest.mark.parametrize("kernel", ["bw_dq", "bw_dk", "bw_dq_dk"])
def test_bw_dq_dk_lower_to_warp_specialized_wgmma_in_hopper_shared_memory(
    kernel: str, dims: str, mma: str, warps: int
) -> None:
    """The Gluon ``dq`` and ``dk`` kernels, apart and in one launch (``bw_dq_dk``): the load warp and the consumer
    (``setmaxnreg``), TMA and wgmmas as wide as the q/k head dim (the inter term's, the first: m64n256k16 at 7B with one warpgroup; with two each takes half
    the columns) within sm_90's shared memory at the deepest ring that fits; the chained products synchronous or one
    in flight."""
    facts = _case(f"{kernel}{mma} w{warps} {dims}")
    assert facts["has"]["setmaxnreg"] and facts["has"]["cp.async.bulk.tensor"] and facts["shared"] <= HOPPER_SMEM_BYTES
    width = int(dims.split("x")[0]) // (warps // 4)
    assert facts["wgmma"].startswith(f"wgmma.mma_async.sync.aligned.m64n{width}k16"), facts


@pytest.mark.parametrize(
    ("setup", "bv"), [("", 128), ("", 256), (" init", 128), (" init", 256), (" ws2", 64), (" ws2", 128)]
)
@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_fw_states_lowers_to_warp_specialized_wgmma_in_hopper_shared_memory(variant: str, setup: str, bv: int) -> None:
    """The Gluon state kernel at the 7B head dims: the load warp and the consumer (``setmaxnreg``), TMA loads and
    stores, a ``64 x BV`` wgmma with ``(k w)^T`` from registers, within sm_90's shared memory; with and without
    initial states, one consumer warpgroup or two."""
    facts = _case(f"fw_states {variant}{setup} bv{bv}")
    assert facts["has"]["setmaxnreg"] and facts["has"]["cp.async.bulk.tensor"] and facts["shared"] <= HOPPER_SMEM_BYTES
    assert facts["wgmma"].startswith(f"wgmma.mma_async.sync.aligned.m64n{bv}k16"), facts


# (dq, dk) spill bytes a thread at 7B, one warpgroup, by Triton version: the GPU machine's 3.6 and CI's newest 3.9
# (dk spilled 56 / 300 when its off-diagonal gate-gradient sum asked for the causal mask again, docs v38)
DQ_DK_SPILLS = {"3.6": (0, 16), "3.9": (112, 288)}


def test_bw_dq_dk_at_7b_spill_no_more_than_measured() -> None:
    """One warpgroup at the 7B head dims (the backend's choice): the spills of ``DQ_DK_SPILLS`` at most (with Triton
    3.6, the GPU machine's: ``dq`` none, ``dk`` at most 16 bytes a thread)."""
    import triton

    bound = DQ_DK_SPILLS.get(".".join(triton.__version__.split(".")[:2]))
    if bound is None:
        pytest.skip(f"spills known for Triton {', '.join(DQ_DK_SPILLS)}; this is {triton.__version__}")
    dq, dk = _case("bw_dq w4 256x512"), _case("bw_dk w4 256x512")
    assert dq["spill_bytes"] <= bound[0] and dk["spill_bytes"] <= bound[1], (dq, dk)


# dq and dk in one launch at 7B, spill bytes a thread with one warpgroup and with two, by Triton version (measured:
# 3.6 4 / 0, 3.9 216 / 28; the causal compare on signed token indices, a column vector more, spilled 164 on 3.6)
DQ_DK_ONE_LAUNCH_SPILLS = {"3.6": (8, 0), "3.9": (224, 32)}


def test_bw_dq_dk_in_one_launch_at_7b_spill_no_more_than_measured() -> None:
    """``bw_dq_dk_pair_kernel`` at the 7B head dims: the spills of ``DQ_DK_ONE_LAUNCH_SPILLS`` at most (Triton 3.6,
    the GPU machine's: 4 bytes a thread with one warpgroup, none with two)."""
    import triton

    bound = DQ_DK_ONE_LAUNCH_SPILLS.get(".".join(triton.__version__.split(".")[:2]))
    if bound is None:
        pytest.skip(f"spills known for Triton {', '.join(DQ_DK_ONE_LAUNCH_SPILLS)}; this is {triton.__version__}")
    w4, w8 = _case("bw_dq_dk w4 256x512"), _case("bw_dq_dk w8 256x512")
    assert w4["spill_bytes"] <= bound[0] and w8["spill_bytes"] <= bound[1], (w4, w8)


# bw_grads_kernel's spill bytes a thread at 7B with one warpgroup and with two, at most, by Triton version (the
# single-launch pair's 4..8 and the dv kernel's 0 with Triton 3.6: LLVM and ptxas see both bodies in one function).
GRADS_SPILLS = {"3.6": (88, 48), "3.9": (536, 108)}


@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_bw_grads_in_one_launch_take_the_larger_kinds_shared_memory(variant: str) -> None:
    """``dq``, ``dk`` and ``dv`` in one launch: the two program kinds' shared buffers overlap, so the kernel takes
    the pair's shared memory with the ``dv`` ring 2 deep and the ``dv`` programs' with it 3 deep (7B:
    ``dv_ring_stages``), within sm_90's; spills at most ``GRADS_SPILLS`` at 7B, at most 4 bytes at the paper's
    head dims."""
    import triton

    from kernels.gluon import mlstm_bw_dv, mlstm_bw_grads

    pair, w4, w4_deep = (_case(n) for n in ("bw_dq_dk w4 256x512", f"bw_grads {variant} w4 dv2 256x512",
                                            f"bw_grads {variant} w4 dv3 256x512"))  # fmt: skip
    assert w4["shared"] == pair["shared"], (pair, w4)  # dv's 2-deep ring lies within the pair's buffers
    assert mlstm_bw_dv.shared_bytes(256, 512, 3) <= w4_deep["shared"] <= HOPPER_SMEM_BYTES, (pair, w4_deep)
    assert w4_deep["shared"] < pair["shared"] + mlstm_bw_dv.shared_bytes(256, 512, 2)  # overlapping, not side by side
    assert mlstm_bw_grads.dv_ring_stages(256, 512) == 3
    paper = _case(f"bw_grads {variant} w4 dv3 128x256")
    assert paper["shared"] <= HOPPER_SMEM_BYTES and paper["spill_bytes"] <= 4, paper
    bound = GRADS_SPILLS.get(".".join(triton.__version__.split(".")[:2]))
    if bound is None:
        pytest.skip(f"spills known for Triton {', '.join(GRADS_SPILLS)}; this is {triton.__version__}")
    w8 = _case(f"bw_grads {variant} w8 dv2 256x512")
    assert max(w4["spill_bytes"], w4_deep["spill_bytes"]) <= bound[0] and w8["spill_bytes"] <= bound[1], (w4, w8)


@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_fw_states_takes_256_columns_without_spills(variant: str) -> None:
    """The state kernel at the 7B head dims with two consumers of 256-column tiles (a ``64 x 256`` wgmma): their
    64-token slices 3 deep beside one store buffer each within sm_90's shared memory, and no registers spilled (the
    last state's offsets are made after the walk: held through it they spilled 576 bytes a thread)."""
    facts = _case(f"fw_states {variant} ws2 bv256 one store buffer")
    assert facts["wgmma"].startswith("wgmma.mma_async.sync.aligned.m64n256k16"), facts
    assert facts["shared"] <= HOPPER_SMEM_BYTES and facts["spill_bytes"] == 0, facts


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_bw_states_takes_256_columns_and_spills_nothing_at_128(variant: str, dtype: str) -> None:
    """The state-gradient walk at the 7B head dims: with two consumers of 128 columns (the backend's tiles) no
    register spilled (``<dC, C_c>`` reduced as ``C_c`` is read; held as a second tile it spilled 224..508 bytes);
    with two of 256 columns (a ``64 x 256`` wgmma) 64-token slices 3 deep beside one forward state slot each within
    sm_90's shared memory, and at most a few registers spilled (32..92 bytes with Triton 3.6; 2444 with fp16's
    scaled products in an accumulator of their own)."""
    narrow = _case(f"bw_states {variant} {dtype} ws2")
    wide = _case(f"bw_states {variant} {dtype} ws2 bv256 one slot")
    assert narrow["spill_bytes"] == 0, narrow
    assert wide["wgmma"].startswith("wgmma.mma_async.sync.aligned.m64n256k16"), wide
    assert wide["shared"] <= HOPPER_SMEM_BYTES and wide["spill_bytes"] <= 128, wide


@pytest.mark.parametrize(
    ("case", "options"),
    [
        ("bw_states sig bfloat16 ws1", dict(bl=64, bv=128, stages=3, consumers=1, state_slots=2)),
        ("bw_states sig bfloat16 ws2", dict(bl=128, bv=128, stages=2, consumers=2, state_slots=2)),
        ("bw_states exp float16 ws2 bv256 one slot", dict(bl=64, bv=256, stages=3, consumers=2, state_slots=1)),
    ],
)
def test_bw_states_shared_bytes_bounds_what_the_compile_takes(case: str, options: dict) -> None:
    """``mlstm_bw_states.shared_bytes`` (what ``scripts/gluon_time.py`` asks before it times two state slots) is at
    least what the sm_90 compile allocates and at most its scratch allowance above the buffers alone."""
    from kernels.gluon import mlstm_bw_states

    shared = _case(case)["shared"]
    bound = mlstm_bw_states.shared_bytes(**options)
    assert bound - mlstm_bw_states.SCRATCH_PER_CONSUMER * options["consumers"] <= shared <= bound, (shared, bound)
    assert mlstm_bw_states.shared_bytes(64, 256, 3, 2, 2) > HOPPER_SMEM_BYTES  # two slots of 256 columns do not fit


@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_fw_states_with_packed_gates_spills_less(variant: str) -> None:
    """Two consumers with 128-token slices and the gates loaded one token a thread: the same
    kernel in the same shared memory, and fewer registers spilled than with the gates held by every thread of a
    ``k`` row (Triton 3.6: 12 / 20 bytes against 188)."""
    rows, packed = _case(f"fw_states {variant} ws2 bv128"), _case(f"fw_states {variant} ws2 bv128 packed")
    assert packed["wgmma"] == rows["wgmma"] and packed["shared"] <= HOPPER_SMEM_BYTES, packed
    assert packed["spill_bytes"] < rows["spill_bytes"] or packed["spill_bytes"] == 0, (packed, rows)


@pytest.mark.parametrize("consumers", [1, 2])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_bw_states_lowers_to_warp_specialized_wgmma_in_hopper_shared_memory(
    variant: str, dtype: str, consumers: int
) -> None:
    """The Gluon state-gradient kernel at the 7B head dims: the load warp and the consumers (``setmaxnreg``), TMA
    loads and stores, a ``64 x 128`` wgmma with ``(q a)^T`` from registers, within sm_90's shared memory."""
    facts = _case(f"bw_states {variant} {dtype} ws{consumers}")
    assert facts["has"]["setmaxnreg"] and facts["has"]["cp.async.bulk.tensor"] and facts["shared"] <= HOPPER_SMEM_BYTES
    assert facts["wgmma"].startswith("wgmma.mma_async.sync.aligned.m64n128k16"), facts


def triton_backward_launches(
    monkeypatch: pytest.MonkeyPatch, case: tuple[str, int, int, int, int], *names: str
) -> list[tuple[object, tuple]]:
    """For each Triton launcher ``kernels.mlstm.tfla.<name>``: itself and the arguments one bf16 Triton backward on
    the GPU hands it (fresh random inputs of two batches and heads; ``case``: variant, S, q/k and value head dims,
    chunk), all from the same backward."""
    from kernels.mlstm import tfla

    variant, seq, dqk, dv, chunk = case
    calls: dict[str, list[tuple]] = {name: [] for name in names}
    launches = {name: getattr(tfla, name) for name in names}
    for name, launch in launches.items():
        monkeypatch.setattr(tfla, name, lambda *a, name=name, launch=launch: (calls[name].append(a), launch(*a))[1])
    torch.manual_seed(torch.seed() % 2**31)
    dev, dtype, (b, nh) = torch.device("cuda"), torch.bfloat16, (2, 2)
    x = [torch.randn(b, nh, seq, d, device=dev, dtype=dtype, requires_grad=True) for d in (dqk, dqk, dv)]
    x += [
        torch.randn(b, nh, seq, device=dev, dtype=dtype).requires_grad_(),
        (torch.randn(b, nh, seq, device=dev) + 3).to(dtype).requires_grad_(),
    ]
    h = tfla.mlstm_tfla(*x, variant=variant, normalize=variant == "exp", chunk_size=chunk, backend="triton")
    h.backward(torch.randn_like(h))
    return [(launches[name], calls[name][0]) for name in names]


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["bw_dq", "bw_dk"])
@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize(
    ("seq", "dqk", "dv", "chunk"), [(700, 256, 512, 128), (1300, 256, 512, 1024), (640, 128, 256, 256)]
)
def test_bw_dq_dk_match_the_triton_kernels(
    kernel: str,
    variant: str,
    seq: int,
    dqk: int,
    dv: int,
    chunk: int,
    compiled_kernels: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Gluon ``dq`` / ``dk`` kernel on the arguments a bf16 Triton backward hands its own (fresh random inputs,
    S not a multiple of the chunk, 7B and paper head dims): the same gradient (poisoned with NaN first) and the same
    sums for the gate gradients (``q . dq``; ``k . dk`` with its inter and off-diagonal parts), with the value-side
    products synchronous or one in flight, one warpgroup or two."""
    if (reason := support.unavailable_reason()) is not None:
        pytest.skip(reason)
    from kernels.gluon import mlstm_bw_dq_dk

    name = f"launch_{kernel}"
    ((triton_launch, (*tensors, grad_triton, _, exp, tiles)),) = triton_backward_launches(
        monkeypatch, (variant, seq, dqk, dv, chunk), name
    )
    sums_triton = triton_launch(*tensors, torch.empty_like(grad_triton), chunk, exp, tiles)
    sums_triton = [s.sum(0) for s in (sums_triton if kernel == "bw_dk" else (sums_triton,))]
    rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()  # noqa: E731
    for async_mma, warps in itertools.product((False, True), (4, 8)):
        case = f"{kernel}, async_mma={async_mma}, num_warps={warps}"
        out = torch.full_like(grad_triton, float("nan"))
        sums = getattr(mlstm_bw_dq_dk, name)(*tensors, out, chunk, exp, async_mma=async_mma, num_warps=warps)
        sums = [s.sum(0) for s in (sums if kernel == "bw_dk" else (sums,))]
        torch.cuda.synchronize()
        assert not out.isnan().any(), f"{case}: the gradient has unwritten elements"
        assert rel(out, grad_triton) < 1e-2, f"{case}: the gradient against Triton: {rel(out, grad_triton):.2e}"
        for i, (got, want) in enumerate(zip(sums, sums_triton)):
            assert rel(got, want) < 1e-3, f"{case}: sum {i} against Triton: {rel(got, want):.2e}"


def assert_like_triton(case: str, grads: dict[str, tuple], sums: tuple, sums_triton: list) -> None:
    """Each gradient of ``grads`` (name: (Gluon's, Triton's)) written everywhere and within 1e-2 of Triton's, and
    each of the Gluon kernels' ``sums`` within 1e-3 of Triton's (summed over its planes)."""
    rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()  # noqa: E731
    for name, (got, want) in grads.items():
        assert not got.isnan().any(), f"{case}: {name} has unwritten elements"
        assert rel(got, want) < 1e-2, f"{case}: {name} against Triton: {rel(got, want):.2e}"
    for i, (got, want) in enumerate(zip(sums, sums_triton, strict=True)):
        assert rel(got.sum(0), want.sum(0)) < 1e-3, (
            f"{case}: sum {i} against Triton: {rel(got.sum(0), want.sum(0)):.2e}"
        )


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize(
    ("seq", "dqk", "dv", "chunk"), [(700, 256, 512, 128), (1300, 256, 512, 1024), (640, 128, 256, 256)]
)
def test_bw_dq_dk_in_one_launch_match_the_triton_kernels(
    variant: str, seq: int, dqk: int, dv: int, chunk: int, compiled_kernels: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dq`` and ``dk`` in one launch (``launch_bw_dq_dk``) on the arguments one bf16 Triton backward hands its two
    kernels: both gradients (poisoned with NaN first) and the four sums for the gate gradients as Triton's, with
    the products synchronous or one in flight, one warpgroup or two."""
    if (reason := support.unavailable_reason()) is not None:
        pytest.skip(reason)
    from kernels.gluon import mlstm_bw_dq_dk

    (dq_launch, (*dq_tensors, dq_triton, _, exp, dq_tiles)), (dk_launch, (*dk_tensors, dk_triton, _, _, dk_tiles)) = (
        triton_backward_launches(monkeypatch, (variant, seq, dqk, dv, chunk), "launch_bw_dq", "launch_bw_dk")
    )
    sums_triton = [dq_launch(*dq_tensors, torch.empty_like(dq_triton), chunk, exp, dq_tiles)]
    sums_triton += dk_launch(*dk_tensors, torch.empty_like(dk_triton), chunk, exp, dk_tiles)
    for async_mma, warps in itertools.product((False, True), (4, 8)):
        case = f"one launch, async_mma={async_mma}, num_warps={warps}"
        dq, dk = torch.full_like(dq_triton, float("nan")), torch.full_like(dk_triton, float("nan"))
        sums = mlstm_bw_dq_dk.launch_bw_dq_dk(
            (*dq_tensors, dq), (*dk_tensors, dk), chunk, exp, async_mma=async_mma, num_warps=warps
        )
        torch.cuda.synchronize()
        assert_like_triton(case, {"dq": (dq, dq_triton), "dk": (dk, dk_triton)}, sums, sums_triton)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize(
    ("seq", "dqk", "dv", "chunk"), [(700, 256, 512, 128), (1300, 256, 512, 1024), (640, 128, 256, 256)]
)
def test_bw_grads_in_one_launch_match_the_triton_kernels(
    variant: str, seq: int, dqk: int, dv: int, chunk: int, compiled_kernels: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dq``, ``dk`` and ``dv`` in one launch (``mlstm_bw_grads.launch_bw_grads``) on the arguments one bf16 Triton
    backward hands its three kernels: the three gradients (poisoned with NaN first) and the four sums for the gate
    gradients as Triton's, with the ``dv`` programs' ring 2 or 3 deep and the products synchronous or one in
    flight."""
    if (reason := support.unavailable_reason()) is not None:
        pytest.skip(reason)
    from kernels.gluon import mlstm_bw_grads

    (dq_launch, dq_call), (dk_launch, dk_call), (dv_launch, dv_call) = triton_backward_launches(
        monkeypatch, (variant, seq, dqk, dv, chunk), "launch_bw_dq", "launch_bw_dk", "launch_bw_dv"
    )
    (*dq_tensors, dq_triton, _, exp, dq_tiles), (*dk_tensors, dk_triton, _, _, dk_tiles) = dq_call, dk_call
    *dv_tensors, dv_triton, _, _, dv_tiles = dv_call
    sums_triton = [dq_launch(*dq_tensors, torch.empty_like(dq_triton), chunk, exp, dq_tiles)]
    sums_triton += dk_launch(*dk_tensors, torch.empty_like(dk_triton), chunk, exp, dk_tiles)
    dv_launch(*dv_tensors, torch.empty_like(dv_triton), chunk, exp, dv_tiles)
    for dv_stages, async_mma in ((2, False), (3, True)):
        case = f"one launch with dv, dv_stages={dv_stages}, async_mma={async_mma}"
        dq, dk, dv_out = (torch.full_like(x, float("nan")) for x in (dq_triton, dk_triton, dv_triton))
        sums = mlstm_bw_grads.launch_bw_grads(
            (*dq_tensors, dq), (*dk_tensors, dk), (*dv_tensors, dv_out), chunk, exp, dv_stages=dv_stages,
            async_mma=async_mma,
        )  # fmt: skip
        torch.cuda.synchronize()
        grads = {"dq": (dq, dq_triton), "dk": (dk, dk_triton), "dv": (dv_out, dv_triton)}
        assert_like_triton(case, grads, sums, sums_triton)


@pytest.mark.gpu
@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize(
    ("seq", "dqk", "dv", "chunk"),
    [(700, 256, 512, 128), (1300, 256, 512, 256), (640, 128, 256, 64), (1300, 256, 512, 512), (2300, 256, 512, 1024)],
)
def test_fw_states_matches_the_triton_kernel(
    variant: str, init: bool, seq: int, dqk: int, dv: int, chunk: int, compiled_kernels: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The Gluon state kernel on the arguments a bf16 Triton forward hands its own (fresh random inputs, S not a
    multiple of the chunk, 7B and paper head dims, with and without initial states): the same chunk states (poisoned
    with NaN first), ``n``, ``m`` and last state, at token slices of 64 and 128 where they divide the chunk, with one
    consumer warpgroup a program or two, the gates in the ``k`` tile's rows or one token a thread, two shared buffers
    for the states' stores or one (beside 256-column ``v`` slices)."""
    if (reason := support.unavailable_reason()) is not None:
        pytest.skip(reason)
    from kernels.gluon import mlstm_fw_states
    from kernels.mlstm import tfla

    calls = []
    triton_launch = tfla.launch_fw_states
    monkeypatch.setattr(tfla, "launch_fw_states", lambda *a: (calls.append(a), triton_launch(*a))[1])
    torch.manual_seed(torch.seed() % 2**31)
    dev, dtype, (b, nh) = torch.device("cuda"), torch.bfloat16, (2, 2)
    x = [torch.randn(b, nh, seq, d, device=dev, dtype=dtype) for d in (dqk, dqk, dv)]
    x += [torch.randn(b, nh, seq, device=dev, dtype=dtype), (torch.randn(b, nh, seq, device=dev) + 3).to(dtype)]
    start = None
    if init:
        start = tfla.MLSTMStates(
            torch.randn(b, nh, dqk, dv, device=dev) * 0.1,
            torch.randn(b, nh, dqk, device=dev),
            torch.rand(b, nh, device=dev),
        )
    tfla.mlstm_tfla(*x, variant=variant, normalize=variant == "exp", chunk_size=chunk, initial=start, backend="triton")
    ((k, v, gate_b, gate_i, states, *want, _, exp, _),) = calls
    rel = lambda a, b: ((a.double() - b.double()).norm() / max(b.double().norm(), 1e-30)).item()  # noqa: E731
    for options in (
        dict(bl=64),
        dict(bl=128),
        dict(bl=64, stages=3, consumers=2),
        dict(bl=128, stages=2, consumers=2, packed_gates=True),
        dict(bl=64, bv=256, stages=3, consumers=2, packed_gates=True, store_bufs=1),
    ):
        if chunk % options["bl"]:
            continue
        got = [torch.full_like(t, float("nan")) for t in want]
        mlstm_fw_states.launch_fw_states(k, v, gate_b, gate_i, states, *got, chunk, exp, **options)
        torch.cuda.synchronize()
        for name, g, w in zip(("C before each chunk", "n", "m", "the last C"), got, want, strict=True):
            assert not g.isnan().any(), f"{options}: {name} has unwritten elements"
            assert rel(g, w) < 2e-3, f"{options}: {name} against Triton: {rel(g, w):.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize(
    ("seq", "dqk", "dv", "chunk"),
    [(700, 256, 512, 128), (1300, 256, 512, 256), (640, 128, 256, 64), (1300, 256, 512, 512), (2300, 256, 512, 1024)],
)
def test_bw_states_is_as_accurate_as_the_triton_kernel(
    variant: str, dtype: torch.dtype, seq: int, dqk: int, dv: int, chunk: int, compiled_kernels: None
) -> None:
    """The Gluon state-gradient kernel on the arguments a Triton backward hands its own (fresh random inputs, S not a
    multiple of the chunk, 7B and paper head dims, bf16 and fp16, with the last states' gradients): every state
    gradient (poisoned with NaN first), ``dn``, the first state's gradient and the forget-gate parts within 2x the
    Triton kernel's error against float64 (``bw_states_against_float64``; the two differ by bf16 rounding, 3e-3 on
    such a draw), with one consumer warpgroup a program or two."""
    if (reason := support.unavailable_reason()) is not None:
        pytest.skip(reason)
    for name, (gluon_err, triton_err) in bw_states_against_float64("cuda", dtype, seq, dqk, dv, chunk, variant).items():
        assert gluon_err < max(2 * triton_err, 1e-3), f"{name}: Gluon {gluon_err:.2e}, Triton {triton_err:.2e}"


def test_bw_dv_refuses_what_it_cannot_take() -> None:
    from kernels.gluon import mlstm_bw_dv

    q = torch.empty(1, 1, 8, 64, dtype=torch.bfloat16)
    with pytest.raises(
        ValueError, match="BKV \\(a multiple of 64\\) and BQ must divide the chunk size 64; got 128, 64"
    ):
        mlstm_bw_dv.check(q, 64, 64, 128, 64, 64, False)
    with pytest.raises(ValueError, match="state pieces of BQ=64 rows need a padded q/k head dim of at least 64"):
        mlstm_bw_dv.check(torch.empty(1, 1, 8, 32, dtype=torch.bfloat16), 64, 64, 64, 64, 64, True)
    tensors = [q, q, q] + [torch.empty(1, 8)] * 3 + [torch.empty(1, 2, 64, 64, dtype=torch.bfloat16)]
    tensors += [torch.empty(1, 2), torch.empty(1, 8), q]
    with pytest.raises(ValueError, match="consumers is 1 or 2 \\(with consumers \\* BKV dividing the chunk size 64\\)"):
        mlstm_bw_dv.launch_args(*tensors, 64, True, consumers=2)
    with pytest.raises(ValueError, match="pingpong takes turns between two consumer warpgroups; got consumers=1"):
        mlstm_bw_dv.launch_args(*tensors, 64, True, pingpong=True)


def test_two_consumers_halve_the_grid_and_need_the_warp_specialized_kernel() -> None:
    from kernels.gluon import mlstm_fw_output as fwo
    from tests.gluon_cases import fw_output_tensors

    tensors = fw_output_tensors(256, 512, seq=256, chunk=128)
    _, one, _, _ = fwo.launch_args(*tensors, 128, True, True, 1e-6, bv=256, state_pieces=True)
    kernel, two, _, constexprs = fwo.launch_args(
        *tensors, 128, True, True, 1e-6, bv=256, state_pieces=True, consumers=2
    )
    assert kernel is fwo.fw_output_ws_kernel and constexprs["CONSUMERS"] == 2 and constexprs["STATE_PIECES"] == 4
    assert two == (one[0], one[1] // 2, one[2]) == (2, 2, 2)
    with pytest.raises(ValueError, match="consumers is 1 or 2 \\(2 only warp-specialized"):
        fwo.launch_args(*tensors, 128, True, True, 1e-6, consumers=2, warp_specialized=False)
    with pytest.raises(ValueError, match="with 2 \\* BQ dividing the chunk size 64"):
        fwo.launch_args(*fw_output_tensors(64, 64, seq=256, chunk=64), 64, True, True, 1e-6, consumers=2)
    with pytest.raises(ValueError, match="pingpong takes turns between two consumer warpgroups; got consumers=1"):
        fwo.launch_args(*tensors, 128, True, True, 1e-6, pingpong=True)


def test_shared_scores_put_both_consumers_on_one_query_tile() -> None:
    """Two consumers on the same 64 queries, each on 256 of a program's 512 columns: the grid has one program per
    query tile and per 512 columns; only the warp-specialized two-consumer layout with state pieces takes it."""
    from kernels.gluon import mlstm_fw_output as fwo
    from tests.gluon_cases import fw_output_tensors

    tensors = fw_output_tensors(256, 512, seq=256, chunk=128)
    options = {"bkv": 32, "bv": 256, "state_pieces": True, "consumers": 2}
    kernel, grid, _, constexprs = fwo.launch_args(*tensors, 128, True, True, 1e-6, **options, shared_scores=True)
    # one program for the 512 columns, 2 chunks x 2 query tiles, 2 heads
    assert kernel is fwo.fw_output_shared_scores_kernel and grid == (1, 4, 2)
    assert constexprs["STATE_PIECES"] == 8 and constexprs["STAGES"] == 2 and "CONSUMERS" not in constexprs
    _, chunk64, _, _ = fwo.launch_args(
        *fw_output_tensors(64, 64, seq=256, chunk=64), 64, True, True, 1e-6, bkv=32, bv=32, state_pieces=True,
        consumers=2, shared_scores=True,
    )  # fmt: skip
    assert chunk64 == (1, 4, 2)  # one query tile a chunk is enough: both consumers share it
    for wrong in ({"consumers": 1}, {"state_pieces": False}, {"pingpong": True}, {"warp_specialized": False}):
        with pytest.raises(ValueError, match="shared_scores runs warp-specialized with state pieces and two consumers"):
            fwo.launch_args(*tensors, 128, True, True, 1e-6, **(options | wrong), shared_scores=True)


def test_fw_output_refuses_what_it_cannot_take() -> None:
    from kernels.gluon import mlstm_fw_output as fwo

    with pytest.raises(ValueError, match="float16 or bfloat16"):
        fwo.check(torch.empty(1, 1, 8, 64), 64, 64, 64, 64, 64)
    with pytest.raises(ValueError, match="q/k head dim up to 256"):
        fwo.check(torch.empty(1, 1, 8, 512, dtype=torch.bfloat16), 64, 64, 64, 64, 64)
    with pytest.raises(ValueError, match="BQ \\(a multiple of 64\\) and BKV must divide the chunk size 64"):
        fwo.check(torch.empty(1, 1, 8, 64, dtype=torch.bfloat16), 64, 128, 64, 64, 64)
    with pytest.raises(ValueError, match="state pieces of BKV=64 rows need a padded q/k head dim of at least 64"):
        fwo.check(torch.empty(1, 1, 8, 32, dtype=torch.bfloat16), 64, 64, 64, 64, 64, state_pieces=True)
    fwo.check(torch.empty(1, 1, 8, 32, dtype=torch.bfloat16), 64, 64, 64, 64, 64)  # whole: any head dim


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", list(FW_OUTPUT_KERNELS))
@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize(
    ("seq", "dqk", "dv", "chunk"), [(300, 64, 64, 64), (1024, 256, 512, 128), (640, 128, 256, 256)]
)
def test_fw_output_matches_the_triton_kernel_and_float64(
    kernel: str, variant: str, seq: int, dqk: int, dv: int, chunk: int, compiled_kernels: None
) -> None:
    """On the states the Triton forward leaves (``tfla_fwd``), each Gluon output kernel writes the same ``h`` and
    ``z_tok`` (outputs poisoned with NaN first); ``h`` also against the float64 reference. Fresh random inputs,
    bf16, S not always a multiple of the chunk; 1, 2 and 4 state pieces; two consumers where 128 queries divide the
    chunk."""
    options = FW_OUTPUT_KERNELS[kernel]
    if chunk % (64 * options.get("consumers", 1)):
        pytest.skip(f"two consumers of 64 queries need a chunk of 128 or more; this case's chunk is {chunk}")
    if (reason := support.unavailable_reason()) is not None:
        pytest.skip(reason)
    from kernels.gluon import mlstm_fw_output as fwo
    from kernels.mlstm.launch import gpu_sm_count
    from kernels.mlstm.reference import mlstm_parallel
    from kernels.mlstm.tfla import tfla_fwd
    from kernels.mlstm.tiles import choose_tiles, unpipelined_state_loads

    torch.manual_seed(torch.seed() % 2**31)
    b, nh = 2, 2
    dev, dtype = torch.device("cuda"), torch.bfloat16
    q = torch.randn(b, nh, seq, dqk, device=dev, dtype=dtype)
    k = torch.randn(b, nh, seq, dqk, device=dev, dtype=dtype)
    v = torch.randn(b, nh, seq, dv, device=dev, dtype=dtype)
    i = torch.randn(b, nh, seq, device=dev, dtype=dtype)
    f = (torch.randn(b, nh, seq, device=dev) + 3.0).to(dtype)
    tiles = unpipelined_state_loads(choose_tiles(chunk, dqk, dv, False, dtype, b * nh, gpu_sm_count(dev)), dtype)
    normalize = variant == "exp"
    h, _, st = tfla_fwd(q, k, v, i, f, None, variant, normalize, chunk, 1e-6, tiles)
    h2 = torch.full_like(h, float("nan"))
    z2 = torch.full_like(st.z_tok, float("nan"))
    fwo.launch_fw_output(
        q, k, v, st.gate_b, st.gate_i, st.c_st, st.n_st, st.m_st, h2, st.m_tok, z2, chunk, variant == "exp",
        normalize, 1e-6, **options,
    )  # fmt: skip
    torch.cuda.synchronize()
    rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()  # noqa: E731
    assert not h2.isnan().any(), "h has unwritten elements"
    assert rel(h2, h) < 1e-2, f"h against the Triton kernel: {rel(h2, h):.2e}"
    assert rel(z2[:, :seq], st.z_tok[:, :seq]) < 1e-2
    ref = mlstm_parallel(
        q.double(), k.double(), v.double(), i.double(), f.double(), variant=variant, normalize=normalize
    )
    assert rel(h2, ref) < 2e-2, f"h against float64: {rel(h2, ref):.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize(("seq", "chunk"), [(500, 64), (700, 128), (1300, 1024)])
@pytest.mark.parametrize("launches", list(LAUNCHES))
def test_the_gluon_backend_matches_triton_forward_and_backward(
    variant: str, seq: int, chunk: int, launches: str, compiled_kernels: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mlstm_tfla(backend="gluon")`` (every Gluon kernel ``kernels.gluon.config`` picks for the shape, ``dq`` and
    ``dk`` in two launches, in one, or in one with ``dv``) against ``backend="triton"``: the output and every gradient, bf16, 7B head dims, S
    not a multiple of the chunk; chunk 64 walks the states in 64-token slices, chunk 1024 walks 16 key tiles (and
    the Triton state kernels)."""
    if (reason := support.unavailable_reason()) is not None:
        pytest.skip(reason)
    pin_launches(monkeypatch, launches)
    errors = gluon_against_triton("cuda", torch.bfloat16, (2, 2, seq, 256, 512), variant, chunk)
    assert all(err < 2e-2 for err in errors.values()), errors
