"""``bench tune``: tile trials of our kernels through the interpreter, one store row each; the search spaces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bench import store, tune
from bench.problem import Problem
from cli import app
from kernels.mlstm import chunk_bw, chunk_fw, tile_search
from kernels.mlstm.tiles import KERNELS

PROBLEM = Problem(1, 1, 128, 32, 32, chunk_size=64, dtype="float32", mode="fwbw", device="cpu")


def test_each_trial_is_a_row_with_its_tiles_and_a_second_call_resumes(tmp_path: Path) -> None:
    out = tmp_path / "tune.parquet"
    rows = tune.run_tune("tfla.mlstm_sig", PROBLEM, ["fw_output"], "small", out, passes=1, limit=1)
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["message"] for r in rows]
    params = [json.loads(str(r["kernel_params"])) for r in rows]
    assert [p["tuned"] for p in params] == ["table", "fw_output"]
    table, trial = (p["tiles"] for p in params)
    assert table["fw_output"] != trial["fw_output"] and {k: v for k, v in table.items() if k != "fw_output"} == {
        k: v for k, v in trial.items() if k != "fw_output"
    }
    assert rows[0]["error"] == 0.0 and 0.0 <= rows[1]["error"] <= 1e-3  # type: ignore[operator]
    assert all(r["timer"] == "profiler" and r["runtime_ms"] > 0 for r in rows)  # type: ignore[operator]
    frame = store.load(out)
    assert len(frame) == 2 and set(frame.kernel) == {"tfla.mlstm_sig"}
    assert tune.run_tune("tfla.mlstm_sig", PROBLEM, ["fw_output"], "small", out, passes=1, limit=1) == []
    assert [k for k, *_ in tune.best_per_kernel(tune.rows_of(out, "tfla.mlstm_sig", PROBLEM))] == ["fw_output"]


def test_a_trial_whose_outputs_differ_from_the_table_is_an_error_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tune.table_for(PROBLEM)
    real = tune._pass

    def planted(inputs, dh, variant, chunk, tiles):  # noqa: ANN001, ANN202
        outputs = real(inputs, dh, variant, chunk, tiles)
        return outputs if tiles == base else [outputs[0] * 1.1, *outputs[1:]]

    monkeypatch.setattr(tune, "_pass", planted)
    rows = tune.run_tune("tfla.mlstm_exp", PROBLEM, ["bw_dv"], "small", tmp_path / "t.parquet", passes=1, limit=1)
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"] == "error" and "differ from the table's by 1.00e-01" in str(rows[1]["message"])
    assert rows[1]["runtime_ms"] is None and rows[1]["error"] == pytest.approx(0.1)


@pytest.mark.parametrize("family", tile_search.FAMILIES)
@pytest.mark.parametrize("shape", [(128, 256, 512), (64, 64, 64), (256, 128, 256)])
def test_search_spaces_are_unique_and_left_as_they_are_by_the_problem(family: str, shape: tuple[int, ...]) -> None:
    chunk, dqk, dv = shape
    for kernel in KERNELS:
        space = tile_search.search_space(kernel, family, chunk, dqk, dv)
        assert len(space) == len(set(space))
        assert all(t.fit(chunk, dqk, dv) == t for t in space)
    assert tile_search.search_space("fw_output", "all", 128, 256, 512)  # the 7B shape has candidates


def test_search_space_names_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="kernel must be one of fw_states, fw_output"):
        tile_search.search_space("fw_out", "all", 128, 64, 64)
    with pytest.raises(ValueError, match="family must be one of rolled, unrolled, all, small"):
        tile_search.search_space("fw_output", "big", 128, 64, 64)


def test_the_profile_names_are_the_kernels_functions() -> None:
    assert set(tile_search.KERNEL_FUNCTIONS) == set(KERNELS)
    for function in tile_search.KERNEL_FUNCTIONS.values():
        assert hasattr(chunk_fw, function) or hasattr(chunk_bw, function), function


@pytest.mark.parametrize(
    "args,message",
    [
        (["--kernel", "fla.chunk_gla"], "--kernel must be one of tfla.mlstm_exp, tfla.mlstm_sig"),
        (["--tiles-of", "fw_output,dq"], "--tiles-of takes fw_states, fw_output"),
        (["--family", "big"], "family must be one of rolled, unrolled, all, small"),
        (["--limit", "0"], "--limit must be a positive integer"),
        (["--passes", "0"], "--passes must be a positive integer"),
        (["--device", "cuda"], "cuda"),
    ],
)
def test_bad_tune_input_exits_2_before_any_work(tmp_path: Path, args: list[str], message: str) -> None:
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    out = tmp_path / "t.parquet"
    result = CliRunner().invoke(app, ["tune", "--device", "cpu", "--out", str(out), *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not store.exists(out)
