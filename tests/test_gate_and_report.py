"""The gate fails when it checked nothing; `bench report` on chunk-size, empty and all-failed files, never over
its input; `bench verify` with nothing to verify."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench import store
from bench.registry import cuda_reason
from cli import app
from tests.rows import result_row

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _ok(seq_len: int, ms: float = 10.0, **fields: object) -> dict[str, object]:
    return result_row(
        seq_len=seq_len, tokens=seq_len, runtime_ms=ms, runtime_p20_ms=ms * 0.99, runtime_p80_ms=ms * 1.01,
        peak_mem_bytes=1000, timer="events", **fields,
    )  # fmt: skip


@pytest.fixture()
def baseline(tmp_path: Path) -> Path:
    path = tmp_path / "base.parquet"
    store.append(path, [_ok(s) for s in range(1, 21)])
    return path


def _check(current: Path, baseline: Path, *args: str):  # noqa: ANN202
    return runner.invoke(app, ["check", str(current), "--baseline", str(baseline), *args])


def test_an_empty_run_is_unusable_input(tmp_path: Path, baseline: Path) -> None:
    empty = tmp_path / "empty.parquet"
    store.append(empty, [])
    result = _check(empty, baseline)
    assert result.exit_code == 2, result.output
    assert "has no rows: nothing to compare" in _flat(result.output)


def test_a_partial_run_fails_unless_allowed(tmp_path: Path, baseline: Path) -> None:
    partial = tmp_path / "partial.parquet"
    store.append(partial, [_ok(1), _ok(2)])
    result = _check(partial, baseline)
    assert result.exit_code == 1, result.output
    assert "18 baseline configs missing from the current run" in _flat(result.output)
    assert _check(partial, baseline, "--allow-missing").exit_code == 0


def test_a_run_sharing_no_config_with_the_baseline_fails(tmp_path: Path, baseline: Path) -> None:
    other = tmp_path / "other.parquet"
    store.append(other, [_ok(s) for s in (100, 200)])
    result = _check(other, baseline, "--allow-missing")
    assert result.exit_code == 1, result.output
    assert "nothing was compared" in _flat(result.output)


@pytest.mark.parametrize("metric", ["", ",", " "])
def test_an_empty_metric_list_is_unusable_input(baseline: Path, metric: str) -> None:
    result = _check(baseline, baseline, "--metric", metric)
    assert result.exit_code == 2, result.output
    assert "--metric must name at least one of runtime_ms, peak_mem_bytes, tflops" in _flat(result.output)


def test_a_full_run_still_passes(baseline: Path) -> None:
    assert _check(baseline, baseline).exit_code == 0


@pytest.mark.skipif(cuda_reason() is None, reason="needs a machine without a GPU")
def test_verify_on_cuda_without_a_gpu_is_unusable_input() -> None:
    result = runner.invoke(app, ["verify", "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "--device cuda: no CUDA GPU visible" in _flat(result.output)
    bad = runner.invoke(app, ["verify", "--device", "tpu"])
    assert bad.exit_code == 2 and "--device must be one of cuda, cpu; got 'tpu'" in _flat(bad.output)


def test_verify_with_every_kernel_skipped_fails_unless_allowed() -> None:
    args = ["verify", "--kernels", "sdpa.flash,sdpa.cudnn", "--device", "cpu"]  # both run on cuda only
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "nothing was verified: every kernel was skipped" in _flat(result.output)
    assert runner.invoke(app, [*args, "--allow-skipped"]).exit_code == 0


def _chunk_rows() -> list[dict[str, object]]:
    rows = []
    for kernel in ("tfla.mlstm_sig", "mlstm_kernels.xl_chunk_siging"):
        for mode in ("fw", "fwbw"):
            for chunk in (64, 128, 256):
                rows.append(_ok(8192, ms=chunk / 64, kernel=kernel, mode=mode, chunk_size=chunk, batch=8))
    return rows


def test_report_on_a_chunk_size_sweep(tmp_path: Path) -> None:
    results = tmp_path / "chunksize.parquet"
    store.append(results, _chunk_rows())
    result = runner.invoke(app, ["report", str(results)])
    assert result.exit_code == 0, result.output
    page = results.with_suffix(".md").read_text()
    assert "| kernel | fw chunk_size=64 | fw chunk_size=128 |" in page
    assert "| tfla.mlstm_sig | 1 | 2 | 4 | 1 | 2 | 4 |" in page
    assert "| tfla.mlstm_sig | mlstm_kernels.xl_chunk_siging | fw | 1 | 1 | 1 |" in page


def test_report_on_an_empty_file_and_on_one_whose_rows_all_failed(tmp_path: Path) -> None:
    empty = tmp_path / "empty.parquet"
    store.append(empty, [])
    result = runner.invoke(app, ["report", str(empty)])
    assert result.exit_code == 0, result.output
    assert "0 rows, 0 ok." in empty.with_suffix(".md").read_text()
    failed = tmp_path / "failed.parquet"
    store.append(failed, [result_row(seq_len=s, status="oom", message="CUDA out of memory") for s in (1024, 2048)])
    result = runner.invoke(app, ["report", str(failed)])
    assert result.exit_code == 0, result.output
    page = failed.with_suffix(".md").read_text()
    assert "2 rows, 0 ok." in page and "CUDA out of memory" in page


def test_report_never_writes_over_results(tmp_path: Path) -> None:
    results = tmp_path / "r.parquet"
    store.append(results, _chunk_rows())
    other = tmp_path / "other.parquet"
    store.append(other, _chunk_rows()[:1])
    before = results.read_bytes(), other.read_bytes()
    for out, message in (
        (results, "is the results file itself"),
        (other, "is a Parquet file"),
        (tmp_path, "is a folder"),
    ):
        result = runner.invoke(app, ["report", str(results), "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert message in _flat(result.output)
    assert (results.read_bytes(), other.read_bytes()) == before
    assert len(store.load(results)) == 12


def _commit(*args: str) -> str:
    import subprocess

    from bench.envinfo import ROOT

    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.split()[0]


def _dirty() -> bool:
    import subprocess

    from bench.envinfo import ROOT

    status = ["git", "-C", str(ROOT), "status", "--porcelain", "--", "kernels", "specs/tfla.py", "specs/sdpa.py"]
    return bool(subprocess.run(status, capture_output=True, text=True).stdout.strip())


def test_a_committed_baseline_says_when_it_is_stale(tmp_path: Path) -> None:
    """A file defining a compared kernel changed since the baseline's commit, another Triton, an unknown commit:
    warnings; with --strict the gate fails. A baseline measured at this commit with the same stack: no warning."""
    from bench import check

    head, first = _commit("rev-parse", "HEAD"), _commit("rev-list", "--max-parents=0", "HEAD")
    stack = dict(triton="3.6.0", torch="2.11.0")
    cur = [
        _ok(1, kernel="tfla.mlstm_sig", git_commit=head, **stack),
        _ok(1, kernel="sdpa.math", git_commit=head, **stack),
    ]
    fresh = [{**r, "git_commit": head} for r in cur]
    dirty = _commit("status", "--porcelain", "--", "kernels", "specs/tfla.py", "specs/sdpa.py") if _dirty() else ""
    fresh_notes = check.staleness(pd.DataFrame(cur), pd.DataFrame(fresh))
    assert fresh_notes == [] or dirty, fresh_notes  # a developer's uncommitted kernel change is a change too
    old = [{**r, "git_commit": first, "triton": "3.4.0"} for r in cur]
    notes = check.staleness(pd.DataFrame(cur), pd.DataFrame(old))
    assert "the baseline was measured with triton 3.4.0, the run with 3.6.0" in notes
    assert any(n.startswith("tfla.mlstm_sig: ") and "kernels/" in n and first[:12] in n for n in notes), notes
    unknown = [{**r, "git_commit": "f" * 40} for r in cur]
    assert any("is not in this repository" in n for n in check.staleness(pd.DataFrame(cur), pd.DataFrame(unknown)))
    assert check.defining_paths("tfla.mlstm_sig") == [Path("specs/tfla.py"), Path("kernels/mlstm")]
    assert check.defining_paths("sdpa.math") == [Path("specs/sdpa.py")]
    cur_path, base_path = tmp_path / "cur.parquet", tmp_path / "base.parquet"
    store.append(cur_path, cur)
    store.append(base_path, old)
    warned = _check(cur_path, base_path)
    assert warned.exit_code == 0 and "warning: the baseline may be stale" in _flat(warned.output)
    strict = _check(cur_path, base_path, "--strict")
    assert strict.exit_code == 1 and "the baseline may be stale" in _flat(strict.output)


def test_the_commit_comes_from_git_and_the_variable_only_without_a_git_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from bench import envinfo

    monkeypatch.setenv("TFLA_BENCH_GIT_COMMIT", "abc1234")
    if (envinfo.ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(envinfo.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert envinfo._git_commit().removesuffix("-dirty") == head.stdout.strip()  # git wins over the variable
    no_repo = subprocess.CompletedProcess(["git"], 128, "", "fatal: not a git repository")
    monkeypatch.setattr(envinfo, "git", lambda *a, **k: no_repo)  # a copy of the tree without .git
    assert envinfo._git_commit() == "abc1234"
