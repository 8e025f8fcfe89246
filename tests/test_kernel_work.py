"""Each TFLA kernel's FLOPs and bytes (``kernels.mlstm.cost``) and ``bench profile``'s floors built from them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from bench import flops
from bench.problem import Problem
from bench.profile import KernelTime, floors
from bench.registry import get
from cli import _floor_table
from kernels.mlstm.cost import (
    BW_KERNELS,
    FW_KERNELS,
    GRADS,
    LAUNCH_NAMES,
    ONE_LAUNCH,
    PAIR,
    KernelWork,
    part_name,
    tfla_kernel_work,
)
from kernels.mlstm.tiles import KERNELS

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(8, 8, 8192, 256, 512, 128), (8, 16, 8192, 128, 256, 256), (1, 2, 200, 64, 32, 64), (2, 3, 96, 48, 80, 128)]


def _parts(*shape: int, itemsize: int = 2, mode: str = "fwbw") -> dict[str, KernelWork]:
    return {w.kernel: w for w in tfla_kernel_work(*shape, itemsize, mode)}


@pytest.mark.parametrize("b,nh,s,dqk,dv,chunk", SHAPES)
def test_the_forward_adds_up_to_the_harness_count_and_the_backward_names_its_recomputation(
    b: int, nh: int, s: int, dqk: int, dv: int, chunk: int
) -> None:
    parts = _parts(b, nh, s, dqk, dv, chunk)
    fw = sum(parts[k].flops for k in FW_KERNELS)
    assert fw == pytest.approx(flops.chunkwise_flops(b, nh, s, dqk, dv, chunk, "fw"), rel=1e-12)
    L = min(chunk, s)
    pairs = b * nh * -(-s // L) * L * (L + 1) / 2
    recomputed = 2 * pairs * (2 * dqk + dv)  # dq and dk each: dh v^T once more, the gate's scores once each
    bw = sum(parts[k].flops for k in BW_KERNELS)
    assert bw - recomputed == pytest.approx(flops.chunkwise_flops(b, nh, s, dqk, dv, chunk, "bw"), rel=1e-12)


def test_bytes_count_each_operand_once_and_states_shrink_with_the_chunk() -> None:
    b, nh, s, dqk, dv = 2, 4, 1024, 64, 128
    tokens, states = b * nh * s, b * nh * (s // 128) * dqk * dv
    parts = _parts(b, nh, s, dqk, dv, 128, itemsize=4)
    assert parts["fw_states"].bytes == 4 * (tokens * (dqk + dv) + states)  # k, v in; C out
    assert parts["fw_output"].bytes == 4 * (tokens * (2 * dqk + 2 * dv) + states)  # q, k, v, C in; h out
    dstates = b * nh * (s // 128 + 1) * dqk * dv
    assert parts["bw_dv"].bytes == 4 * (tokens * (2 * dqk + 2 * dv) + dstates)  # q, k, dh, dC in; dv out
    wider = _parts(b, nh, s, dqk, dv, 256, itemsize=4)
    assert wider["fw_output"].bytes == parts["fw_output"].bytes - 4 * states / 2  # half the states
    assert wider["fw_output"].flops > parts["fw_output"].flops  # twice the intra-chunk pairs per token
    assert _parts(b, nh, s, dqk, dv, 128, itemsize=2)["fw_states"].bytes == parts["fw_states"].bytes / 2


@pytest.mark.parametrize("b,nh,s,dqk,dv,chunk", SHAPES)
def test_dq_and_dk_in_one_launch_are_one_part_that_reads_q_k_v_dh_once(
    b: int, nh: int, s: int, dqk: int, dv: int, chunk: int
) -> None:
    two = _parts(b, nh, s, dqk, dv, chunk)
    one = {w.kernel: w for w in tfla_kernel_work(b, nh, s, dqk, dv, chunk, 2, "fwbw", one_launch=PAIR)}
    assert list(one) == [*FW_KERNELS, "bw_states", part_name(PAIR), "bw_dv"]
    pair = one[part_name(PAIR)]
    assert pair.flops == two["bw_dq"].flops + two["bw_dk"].flops and pair.launch_names == ONE_LAUNCH[PAIR]
    tokens = b * nh * -(-s // min(chunk, s)) * min(chunk, s)
    read_twice = 2 * tokens * (dqk + dv) * 2  # q, k (dqk) and v, dh (dv), bf16: once fewer in one launch
    assert pair.bytes == two["bw_dq"].bytes + two["bw_dk"].bytes - read_twice
    assert tfla_kernel_work(b, nh, s, dqk, dv, chunk, 2, "fw", one_launch=PAIR) == tfla_kernel_work(
        b, nh, s, dqk, dv, chunk, 2, "fw"
    )


@pytest.mark.parametrize("b,nh,s,dqk,dv,chunk", SHAPES)
def test_dq_dk_and_dv_in_one_launch_are_one_part_that_reads_each_operand_once(
    b: int, nh: int, s: int, dqk: int, dv: int, chunk: int
) -> None:
    apart = _parts(b, nh, s, dqk, dv, chunk)
    pair = {w.kernel: w for w in tfla_kernel_work(b, nh, s, dqk, dv, chunk, 2, "fwbw", one_launch=PAIR)}
    one = {w.kernel: w for w in tfla_kernel_work(b, nh, s, dqk, dv, chunk, 2, "fwbw", one_launch=GRADS)}
    assert list(one) == [*FW_KERNELS, "bw_states", "bw_dq + bw_dk + bw_dv"] and part_name(GRADS) in one
    grads = one[part_name(GRADS)]
    assert grads.flops == sum(apart[k].flops for k in GRADS) and grads.launch_names == ("bw_grads_kernel",)
    tokens = b * nh * -(-s // min(chunk, s)) * min(chunk, s)
    dv_reads = apart["bw_dv"].bytes - tokens * dv * 2  # q, k, dh and dC: all read by the pair already
    assert grads.bytes == pair[part_name(PAIR)].bytes + apart["bw_dv"].bytes - dv_reads
    with pytest.raises(ValueError, match="one_launch is one of bw_dq \\+ bw_dk, bw_dq \\+ bw_dk \\+ bw_dv or none"):
        tfla_kernel_work(b, nh, s, dqk, dv, chunk, 2, "fwbw", one_launch=("bw_dk", "bw_dv"))


def test_modes_pick_the_kernels_and_a_bad_mode_names_the_allowed_ones() -> None:
    assert [w.kernel for w in tfla_kernel_work(1, 1, 64, 16, 16, 16, 2, "fw")] == list(FW_KERNELS)
    assert [w.kernel for w in tfla_kernel_work(1, 1, 64, 16, 16, 16, 2, "bw")] == list(BW_KERNELS)
    assert set(FW_KERNELS + BW_KERNELS) == set(KERNELS) == set(LAUNCH_NAMES)
    with pytest.raises(ValueError, match="mode must be one of fw, bw, fwbw; got 'up'"):
        tfla_kernel_work(1, 1, 64, 16, 16, 16, 2, "up")


def test_the_launch_names_are_functions_of_the_kernels() -> None:
    """A renamed kernel function would silently drop out of the profile's floors."""
    sources = "".join(p.read_text() for p in [*ROOT.glob("kernels/mlstm/chunk_*.py"), *ROOT.glob("kernels/gluon/*.py")])
    defined = set(re.findall(r"^def (\w+)\(", sources, flags=re.M))
    for names in (*LAUNCH_NAMES.values(), *ONE_LAUNCH.values()):
        assert set(names) <= defined, names


def test_the_floor_is_the_longer_of_flops_and_bytes() -> None:
    w = KernelWork("fw_output", flops=2e12, bytes=3e9, launch_names=("k",))
    assert w.floor_us(1000, 3000) == pytest.approx(2000.0) and w.bound(1000, 3000) == "compute"
    assert w.floor_us(4000, 1000) == pytest.approx(3000.0) and w.bound(4000, 1000) == "memory"


def test_floors_match_the_profiled_kernels_of_either_backend() -> None:
    work = tfla_kernel_work(8, 8, 8192, 256, 512, 128, 2, "fwbw")
    times = [
        KernelTime("fw_output_ws_kernel", 1, 1000.0),  # the Gluon output kernel
        KernelTime("bw_chunk_dv_kernel", 1, 600.0),
        KernelTime("bw_dv_kernel", 1, 300.0),  # both backends' dv kernels in one profile: summed
        KernelTime("gate_grads_kernel", 1, 12.0),  # no part of the split
    ]
    parts = {f.kernel: f for f in floors(times, work, 788.0, 3003.0)}
    assert set(parts) == {"fw_output", "bw_dv"}
    assert parts["bw_dv"].us == 900.0
    out = next(w for w in work if w.kernel == "fw_output")
    assert parts["fw_output"].floor_us == pytest.approx(out.bytes / 3003e9 * 1e6)
    assert parts["fw_output"].bound == "memory" and parts["fw_output"].of_floor == pytest.approx(out.bytes / 3003e6)
    with pytest.raises(ValueError, match="peaks must be positive"):
        floors(times, work, 0.0, 3003.0)
    # the Gluon dq / dk kernel does two parts, a launch each: one row against both floors, its time counted once
    gluon_bw = [KernelTime("bw_dq_dk_kernel", 2, 2300.0), KernelTime("bw_states_kernel", 1, 800.0)]
    merged = {f.kernel: f for f in floors(gluon_bw, work, 788.0, 3003.0)}
    assert set(merged) == {"bw_states", "bw_dq + bw_dk"} and merged["bw_dq + bw_dk"].us == 2300.0
    dq, dk = (next(w for w in work if w.kernel == k) for k in ("bw_dq", "bw_dk"))
    assert merged["bw_dq + bw_dk"].floor_us == pytest.approx(dq.floor_us(788.0, 3003.0) + dk.floor_us(788.0, 3003.0))
    assert dq.bound(788.0, 3003.0) == dk.bound(788.0, 3003.0) == "memory"
    assert merged["bw_dq + bw_dk"].bound == "memory"  # a bound both parts share is named once
    console = Console(width=200, record=True)
    console.print(_floor_table("tfla.mlstm_sig", list(parts.values()), 788.0, 3003.0))
    text = console.export_text()
    assert "floors at 788 TFLOP/s and 3003 GB/s" in text and "fw_output" in text and "these parts" in text


def test_our_specs_split_their_pass() -> None:
    problem = Problem(1, 2, 256, 64, 64, chunk_size=64, dtype="float16", mode="fw", device="cpu")
    for name in ("tfla.mlstm_sig", "tfla.mlstm_exp_gluon"):
        spec = get(name)
        assert spec.kernel_work is not None
        assert [w.kernel for w in spec.kernel_work(problem)] == list(FW_KERNELS)
    assert get("sdpa.math").kernel_work is None


def test_the_gluon_spec_counts_kernels_in_one_launch_as_one_part(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.gluon_cases import pin_launches

    problem = Problem(1, 2, 512, 256, 512, chunk_size=256, dtype="bfloat16", mode="fwbw", device="cpu")
    spec = get("tfla.mlstm_sig_gluon")
    parts = {"apart": "bw_dq", "dq + dk": part_name(PAIR), "dq + dk + dv": part_name(GRADS)}
    for launches, part in parts.items():
        pin_launches(monkeypatch, launches)
        kernels = [w.kernel for w in spec.kernel_work(problem)]  # type: ignore[misc]
        assert [p for p in parts.values() if p in kernels] == [part], (launches, kernels)
    assert "bw_dq" in [w.kernel for w in get("tfla.mlstm_sig_triton").kernel_work(problem)]  # type: ignore[misc]
