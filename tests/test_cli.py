"""The `bench` CLI: exit codes and messages for bad input, list, env, a small sweep, verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import store
from cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--kernels", "nope"], "unknown kernel 'nope'"),
        (["--seq-len", "0"], "seq_len must be a positive integer"),
        (["--seq-len", "abc"], "--seq-len takes comma-separated integers"),
        (["--chunk-size", "48"], "chunk_size must be a power of two"),
        (["--dtype", "fp8"], "dtype must be one of float32, float16, bfloat16"),
        (["--mode", "back"], "mode must be one of fw, bw, fwbw"),
        (["--preset", "nope"], "unknown preset 'nope'; allowed:"),
        (["--timer", "wall"], "--timer must be one of events, cudagraph; got 'wall'"),
    ],
)
def test_sweep_refuses_bad_input_before_any_work(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    result = runner.invoke(app, ["sweep", "--preset", "cpu", *args, "--out", str(out)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_list_shows_every_kernel_with_availability() -> None:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in (
        "tfla.mlstm_exp",
        "tfla.mlstm_sig",
        "sdpa.cudnn",
        "fla.chunk_simple_gla",
        "mamba.mamba2",
        "mlstm_kernels.xl_chunk_siging",
        "flash_attn.fa2",
    ):
        assert name in result.output


def test_env_json() -> None:
    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0
    meta = json.loads(result.output)
    assert {"gpu_name", "torch", "triton", "git_commit", "host", "timestamp"} <= set(meta)


def test_small_sweep_writes_parquet_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    args = [
        "sweep",
        "--preset",
        "cpu",
        "--kernels",
        "sdpa.math,reference.mlstm_exp_parallel",
        "--seq-len",
        "32",
        "--mode",
        "fw",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = store.load(out)
    assert sorted(frame.kernel) == ["reference.mlstm_exp_parallel", "sdpa.math"]
    assert (frame.status == "ok").all()
    assert (frame.timer == "wall").all() and frame.host_ms.isna().all()  # CPU rows: wall clock, no host split
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and len(store.load(out)) == 2


def test_verify_passes_on_cpu() -> None:
    result = runner.invoke(app, ["verify", "--kernels", "tfla.mlstm_exp,tfla.mlstm_sig,sdpa.math", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.output.count("pass") == 6  # three kernels, fw and fwbw
    for output in ("out", "dq", "dk", "dv", "di", "df"):
        assert f" {output} " in result.output


def test_verify_refuses_bad_jobs_and_timeouts_before_any_work() -> None:
    for option, value, message in [("--jobs", "0", "--jobs takes a positive number"), ("--timeout", "0", "timeout")]:
        result = runner.invoke(app, ["verify", "--device", "cpu", "--kernels", "sdpa.math", option, value])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
        assert "pass" not in result.output
