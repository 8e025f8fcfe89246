"""``scripts/gluon_time.py``'s runs on the CPU (the Gluon kernels through the simulator, the Triton ones through the
interpreter): every run writes what its Triton twin writes, so the GPU session's table compares like with like."""

from __future__ import annotations

import argparse
import importlib.util

import pytest
import torch

pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper", reason="this Triton has no Gluon")

from tests.sweep_process import ROOT  # noqa: E402


def _script() -> object:
    spec = importlib.util.spec_from_file_location("gluon_time", ROOT / "scripts" / "gluon_time.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("kernel", ["fw_output", "bw_dv", "bw_dq", "bw_dk", "bw_dq_dk", "fw_states", "bw_states"])
def test_every_run_writes_what_the_triton_kernel_writes(kernel: str) -> None:
    from kernels.mlstm.tiles import choose_tiles, unpipelined_state_loads

    script = _script()
    torch.manual_seed(torch.seed() % 2**31)
    dtype, (b, nh, s, dqk, dv, chunk) = torch.float16, (1, 2, 192, 64, 64, 128)
    x = [torch.randn(b, nh, s, d, dtype=dtype) for d in (dqk, dqk, dv)]
    x += [torch.randn(b, nh, s, dtype=dtype), (torch.randn(b, nh, s) + 3.0).to(dtype)]
    tiles = unpipelined_state_loads(choose_tiles(chunk, dqk, dv, True, dtype, b * nh, 0), dtype)
    tile_list = "64,64,64,4,1,1;64,64,64,4,1,1,2;64,64,64,4,1,1,2,1" + (
        ";64,64,64,4,0" if kernel == "fw_output" else ""
    )
    ring = kernel in ("bw_dq", "bw_dk", "fw_states", "bw_states")
    if ring or kernel == "bw_dq_dk":  # they take a few numbers from a tile; their runs differ in their ring depths
        tile_list = "64,64,64,4,1;64,64,64,4,1,0,2" if kernel.endswith("_states") else "64,64,64,4,1"
    a = argparse.Namespace(
        variant="sig", chunk=chunk, gluon=script.gluon_tiles(tile_list), stages=(2, 5), kernel=kernel
    )
    runs, expected = script.RUNS[kernel](a, x, tiles)
    # dq / dk: products synchronous and one in flight; fw_states: the gates in the k tile's rows, packed, and packed
    # with one store buffer; bw_states: two forward state slots a consumer and one (the tiles' 64 columns fit both);
    # bw_dq_dk: the products synchronous or one in flight, in two launches or one
    ways = {"bw_dq": 2, "bw_dk": 2, "bw_dq_dk": 4, "fw_states": 3, "bw_states": 2}.get(kernel, 1)
    per_tile = ways * (len(a.stages) if ring else 1)
    assert len(runs) == 1 + len(a.gluon) * per_tile
    if kernel in ("bw_dq", "bw_dk"):  # the default: one run per option set at the deepest ring
        a.stages = None
        assert len(script.bw_dq_dk_runs(a, x, tiles)[0]) == 1 + 2 * len(a.gluon)
    for name, run in runs.items():
        out = torch.full_like(expected, float("nan"))
        run(out)
        err = ((out.double() - expected.double()).norm() / expected.double().norm()).item()
        assert err < 1e-3, f"{name}: {err:.2e}"


def test_stage_counts_are_checked() -> None:
    script = _script()
    assert script.stage_counts("4,6") == (4, 6)
    for bad in ("", "4,x", "1,4"):
        with pytest.raises(argparse.ArgumentTypeError, match="ring depths"):
            script.stage_counts(bad)
