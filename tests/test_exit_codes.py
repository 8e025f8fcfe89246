"""Bad input anywhere in the CLI: exit 2 and a message naming the parameter, before any work; never a traceback."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench import store
from cli import app
from tests.rows import result_row
from tests.sweep_process import bench_process

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _preset(tmp_path: Path, body: str) -> str:
    path = tmp_path / "p.toml"
    path.write_text('device = "cpu"\nheads = [1]\n' + body)
    return str(path)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--seq-len", ""], "--seq-len needs at least one integer"),
        (["--seq-len", ","], "--seq-len needs at least one integer"),
        (["--kernels", ""], "--kernels needs at least one value"),
        (["--timeout", "0"], "--timeout must be a finite number of seconds above 0; got 0"),
        (["--retry", "ok"], "--retry takes statuses of failed rows (any of error, crash, timeout, oom, unsupported"),
        (["--retry", ","], "--retry takes statuses of failed rows"),
        (["--timeout", "-1"], "--timeout must be a finite number of seconds above 0; got -1"),
        (["--timeout", "nan"], "--timeout must be a finite number of seconds above 0; got nan"),
        (["--timeout", "inf"], "--timeout must be a finite number of seconds above 0; got inf"),
        (["--seq-len", "99999999999999999999"], "seq_len must be a positive integer up to 2147483647"),
        (["--seq-len", str(2**40)], "seq_len must be a positive integer up to 2147483647"),
        (["--tokens", "0"], "tokens must be a positive integer"),
    ],
)
def test_sweep_flags(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    result = runner.invoke(app, ["sweep", "--preset", "cpu", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in _flat(result.output)
    assert not out.exists() and not store.parts_dir(out).exists()


@pytest.mark.parametrize(
    "body,message",
    [
        ("seq_len = 64\n", "seq_len must be a list of integers, e.g. seq_len = [64]; got 64"),
        ('tokens = "abc"\n', "tokens must be a positive integer; got 'abc'"),
        ('kernels = "sdpa.math"\n', "kernels must be a list of names"),
        ("batch = [1.5]\n", "batch must be a list of integers; got 1.5"),
        ("seq_len = []\n", "seq_len must name at least one value"),
        ('mode = ["fw", 3]\n', "mode must be a list of names; got 3"),
        ("qk_ratio = -1\n", "qk_ratio must be a number above 0"),
        ("seq_len = [64\n", "is not valid TOML"),
    ],
)
def test_sweep_preset_values(body: str, message: str, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    result = runner.invoke(app, ["sweep", "--preset", _preset(tmp_path, body), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in _flat(result.output), result.output
    assert not out.exists()


@pytest.mark.parametrize("target", ["folder", "text", "foreign", "under_a_file", "wrong_type"])
def test_sweep_out_checked_before_any_measurement(target: str, tmp_path: Path) -> None:
    paths = {
        "folder": tmp_path / "adir",
        "text": tmp_path / "notes.parquet",
        "foreign": tmp_path / "foreign.parquet",
        "under_a_file": tmp_path / "file.txt" / "r.parquet",
        "wrong_type": tmp_path / "typed.parquet",
    }
    paths["folder"].mkdir()
    paths["text"].write_text("not parquet")
    pd.DataFrame({"x": [1]}).to_parquet(paths["foreign"])
    (tmp_path / "file.txt").write_text("a file")
    pd.DataFrame([result_row(seq_len="long")]).to_parquet(paths["wrong_type"])
    messages = {
        "folder": "is a folder",
        "text": "is not a Parquet file",
        "foreign": "lacks the columns",
        "under_a_file": "cannot write results to",
        "wrong_type": "column 'seq_len' holds",
    }
    result = runner.invoke(app, ["sweep", "--preset", "cpu", "--kernels", "sdpa.math", "--out", str(paths[target])])
    assert result.exit_code == 2, result.output
    assert "--out" in result.output and messages[target] in _flat(result.output)
    assert "measured" not in result.output and "sweep" not in result.output.split("--out")[0].lower()


def test_bad_plugin_module_is_named() -> None:
    proc = bench_process("list", env={"TFLA_BENCH_PLUGINS": "no_such_module_xyz"})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "TFLA_BENCH_PLUGINS: module 'no_such_module_xyz' cannot be imported" in _flat(err)
    assert "Traceback" not in err


def test_plot_and_figures_refuse_an_out_that_is_a_file(tmp_path: Path) -> None:
    results = tmp_path / "r.parquet"
    store.append(results, [result_row(runtime_ms=1.0)])
    blocker = tmp_path / "out.png"
    blocker.write_text("x")
    for args in (["plot", str(results)], ["figures", "consttoken", "--from", str(results)]):
        result = runner.invoke(app, [*args, "--out", str(blocker)])
        assert result.exit_code == 2, result.output
        assert "--out must be a folder for the figures" in _flat(result.output)
    assert blocker.read_text() == "x"


def test_check_column_of_the_wrong_type_is_unusable_input(tmp_path: Path) -> None:
    base = tmp_path / "base.parquet"
    store.append(base, [result_row(runtime_ms=1.0)])
    bad = tmp_path / "bad.parquet"
    pd.DataFrame([result_row(runtime_ms="fast")]).to_parquet(bad)
    result = runner.invoke(app, ["check", str(bad), "--baseline", str(base)])
    assert result.exit_code == 2, result.output
    assert "column 'runtime_ms' holds" in _flat(result.output) and "expected double" in _flat(result.output)


def test_messages_with_brackets_are_printed_as_they_are() -> None:
    """Rich markup is not applied to a message: a bracketed word such as ``[ray]`` or ``[bold]`` comes out literally."""
    from typer.testing import CliRunner

    from cli import app

    done = CliRunner().invoke(app, ["sweep", "--preset", "cpu", "--kernels", "[bold]x"])
    assert done.exit_code == 2 and "'[bold]x' matches nothing" in done.output


def test_the_retry_help_names_every_retryable_status() -> None:
    """``--retry``'s help is written out (the CLI imports the store lazily); it names the store's statuses."""
    import cli

    assert all(status in cli.RETRY_HELP for status in store.RETRYABLE)
