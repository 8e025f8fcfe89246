"""`bench check`: every verdict, the noise rule, exit codes, and messages for unusable input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench import check, store
from cli import app
from tests.rows import result_row

runner = CliRunner()


def _row(
    seq_len: int,
    ms: float,
    band: float = 0.01,
    mem: int = 1000,
    status: str = "ok",
    gpu: str = "NVIDIA H100 80GB HBM3",
    timer: str = "events",
    host_ms: float | None = None,
) -> dict[str, object]:
    if status != "ok":
        return result_row(seq_len=seq_len, tokens=seq_len, status=status, message="boom", gpu_name=gpu)
    return result_row(
        seq_len=seq_len,
        tokens=seq_len,
        runtime_ms=ms,
        runtime_p20_ms=ms * (1 - band),
        runtime_p80_ms=ms * (1 + band),
        peak_mem_bytes=mem,
        gpu_name=gpu,
        timer=timer,
        host_ms=ms / 10 if host_ms is None else host_ms,
    )


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    base = [
        _row(1, 10.0),
        _row(2, 10.0),
        _row(3, 10.0),
        _row(4, 10.0, band=0.2),
        _row(5, 10.0),
        _row(6, 10.0, status="error"),
        _row(7, 10.0),
    ]
    cur = [
        _row(1, 8.0),
        _row(2, 10.2),
        _row(3, 12.0),
        _row(4, 12.0, band=0.2),
        _row(5, 10.0, status="crash"),
        _row(6, 10.0, status="error"),
        _row(8, 10.0),
    ]
    b, c = tmp_path / "base.parquet", tmp_path / "cur.parquet"
    store.append(b, base)
    store.append(c, cur)
    return c, b


def test_each_verdict(pair: tuple[Path, Path]) -> None:
    cur, base = check.load_pair(*pair, allow_different_device=False)
    results = {r.config.split(" S=")[1].split(" ")[0]: r for r in check.compare(cur, base, 0.05, ("runtime_ms",))}
    assert results["1"].verdict == "faster" and results["1"].ratio == pytest.approx(0.8)
    assert results["2"].verdict == "same"
    assert results["3"].verdict == "regression"  # 20% slower, bands 9.9..10.1 vs 11.88..12.12
    assert results["4"].verdict == "slower" and "overlap" in results["4"].note  # 20% slower, wide noise bands
    assert results["5"].verdict == "regression" and "now crash" in results["5"].note
    assert results["6"].verdict == "failed"
    assert results["7"].verdict == "missing"
    assert results["8"].verdict == "new"


def test_memory_metric_uses_the_threshold_alone(tmp_path: Path) -> None:
    b, c = tmp_path / "b.parquet", tmp_path / "c.parquet"
    store.append(b, [_row(1, 10.0, mem=1000), _row(2, 10.0, mem=1000)])
    store.append(c, [_row(1, 10.0, mem=1100), _row(2, 10.0, mem=1020)])
    cur, base = check.load_pair(c, b, False)
    verdicts = [r.verdict for r in check.compare(cur, base, 0.05, ("peak_mem_bytes",))]
    assert verdicts == ["regression", "same"]


def test_cli_exit_codes_and_formats(pair: tuple[Path, Path]) -> None:
    cur, base = pair
    result = runner.invoke(app, ["check", str(cur), "--baseline", str(base), "--format", "json"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["regression"] is True and {c["verdict"] for c in data["comparisons"]} >= {"faster", "regression"}
    md = runner.invoke(app, ["check", str(cur), "--baseline", str(base), "--format", "markdown"])
    assert md.exit_code == 1 and "| tfla.mlstm_sig | fw bfloat16 " in md.output and "**regression**" in md.output
    same = runner.invoke(app, ["check", str(base), "--baseline", str(base)])
    assert same.exit_code == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.parquet"], "does not exist"),
        (["WRONG"], "lacks the columns"),
        (["CUR", "--threshold", "fast"], "--threshold must be a fraction or a percentage"),
        (["CUR", "--metric", "speed"], "--metric must be among"),
        (["CUR", "--format", "xml"], "--format must be one of table, markdown, json"),
        (["OTHERGPU"], "different devices"),
        (["GRAPHS"], "the runs were timed differently (current: cudagraph; baseline: events)"),
        (["CUR", "--run", "cpu", "--timer", "cuda"], "--timer must be one of events, cudagraph; got 'cuda'"),
        ([], "give the CURRENT results file or --run PRESET"),
    ],
)
def test_unusable_input_exits_2(pair: tuple[Path, Path], tmp_path: Path, args: list[str], message: str) -> None:
    cur, base = pair
    wrong = tmp_path / "wrong.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(wrong)
    other = tmp_path / "other.parquet"
    store.append(other, [_row(1, 10.0, gpu="NVIDIA A100")])
    graphs = tmp_path / "graphs.parquet"
    store.append(graphs, [_row(1, 10.0, timer="cudagraph")])
    mapping = {
        "CUR": str(cur),
        "WRONG": str(wrong),
        "OTHERGPU": str(other),
        "GRAPHS": str(graphs),
        "missing.parquet": str(tmp_path / "m.pq"),
    }
    result = runner.invoke(app, ["check", *[mapping.get(a, a) for a in args], "--baseline", str(base)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_different_device_allowed_on_request(pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, base = pair
    other = tmp_path / "other.parquet"
    store.append(other, [_row(1, 10.0, gpu="NVIDIA A100")])
    args = ["check", str(other), "--baseline", str(base), "--allow-different-device"]
    result = runner.invoke(app, [*args, "--allow-missing"])  # one config of the baseline's eight
    assert result.exit_code == 0, result.output


def test_check_run_preset_on_cpu(tmp_path: Path) -> None:
    """`--run` measures a preset, then compares; against itself nothing can regress beyond noise."""
    preset = tmp_path / "tiny.toml"
    preset.write_text(
        'device = "cpu"\nkernels = ["sdpa.math"]\nseq_len = [32]\nheads = [1]\nhead_dim_qk = [16]\n'
        'head_dim_v = [16]\ndtype = ["float32"]\n'
    )
    out = tmp_path / "run.parquet"
    first = runner.invoke(
        app, ["check", "--run", str(preset), "--out", str(out), "--baseline", str(tmp_path / "none.parquet")]
    )
    assert first.exit_code == 2 and "does not exist" in " ".join(first.output.split()), first.output
    assert not out.exists()  # refused before running anything
    runner.invoke(app, ["sweep", "--preset", str(preset), "--out", str(out)])
    base = tmp_path / "base.parquet"
    store.append(base, store.load(out).to_dict("records"))
    second = runner.invoke(
        app,
        [
            "check",
            "--run",
            str(preset),
            "--out",
            str(out),
            "--baseline",
            str(base),
            "--threshold",
            "500%",
            "--allow-different-device",
        ],
    )
    assert second.exit_code == 0, second.output
    assert "sdpa.math" in second.output


def test_host_bound_runtimes_are_judged_at_the_wider_threshold_with_a_note() -> None:
    """A runtime whose host time per call reaches it (events timer) moves with the host: it is judged against
    HOST_BOUND_THRESHOLD and says so; memory, GPU-bound rows and rows timed by CUDA graphs keep the threshold."""
    assert check.HOST_BOUND_THRESHOLD == 0.5
    base = [_row(1, 1.0, host_ms=0.95), _row(2, 1.0, host_ms=0.95), _row(3, 10.0), _row(4, 1.0, timer="cudagraph")]
    cur = [_row(1, 1.3, host_ms=1.2), _row(2, 1.8, host_ms=1.7), _row(3, 10.0), _row(4, 1.3, timer="cudagraph")]
    results = check.compare(pd.DataFrame(cur), pd.DataFrame(base), 0.05, ("runtime_ms", "peak_mem_bytes"))
    runtime = [r for r in results if r.metric == "runtime_ms"]
    assert [r.verdict for r in runtime] == ["same", "regression", "same", "regression"]
    assert runtime[0].note == (
        "baseline host-bound (0.95 ms/call on the host); current host-bound (1.2 ms/call on the host); judged at 50%"
    )
    assert [r.note for r in runtime[2:]] == ["", ""]
    assert all(r.note == "" for r in results if r.metric == "peak_mem_bytes")
    wide = check.compare(pd.DataFrame(cur), pd.DataFrame(base), 0.9, ("runtime_ms",))  # already wider: kept
    assert [r.verdict for r in wide] == ["same"] * 4 and "judged at" not in wide[0].note


def test_the_default_threshold_is_ten_percent() -> None:
    assert check.DEFAULT_THRESHOLD == 0.10
    base, cur = [_row(1, 10.0), _row(2, 10.0)], [_row(1, 10.9), _row(2, 11.2)]
    assert [r.verdict for r in check.compare(pd.DataFrame(cur), pd.DataFrame(base), metrics=("runtime_ms",))] == [
        "same",
        "regression",
    ]
