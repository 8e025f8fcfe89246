"""`bench check --against REF`: both commits of a temporary repository measured on this machine, interleaved."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import ab, store
from tests.sweep_process import ROOT, wait_for

PLUGIN = """
import torch

from bench.registry import KernelSpec, register

WORK = {work}
torch.set_num_threads(1)  # one thread: a steadier CPU timing


def _inputs(p):
    return (torch.randn(96, 96),)


def _slow(x):
    for _ in range(8 * WORK):
        x = torch.tanh(x @ x)
    return x


def _same(x):
    for _ in range(8):
        x = torch.tanh(x @ x)
    return x


for name, fn in (("ab.work", _slow), ("ab.same", _same)):
    register(KernelSpec(name=name, family="mlstm", make_inputs=_inputs, fn=fn, flops=lambda p: 1e6,
                        bytes=lambda p: 1e3, devices=("cpu",)))
"""
PRESET = """device = "cpu"
kernels = ["ab.work", "ab.same"]
seq_len = [32]
heads = [1]
head_dim_qk = [16]
head_dim_v = [16]
dtype = ["float32"]
"""


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of this repository holding this working tree, with two more commits: the plugin kernel ``ab.work``
    does 3x the work in the second; ``ab.same`` is the same in both."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and this repository's history")
    path = tmp_path_factory.mktemp("ab") / "repo"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(path)], check=True)
    for name in _git(ROOT, "ls-files").splitlines():  # this working tree's code, uncommitted changes too
        if (ROOT / name).is_file():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, path / name)
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "--allow-empty", "-m", "the working tree")
    (path / "preset.toml").write_text(PRESET)
    for work in (1, 3):
        (path / "abplugin.py").write_text(PLUGIN.format(work=work))
        _git(path, "add", "abplugin.py", "preset.toml")
        _git(path, "commit", "-q", "-m", f"work {work}")
    return path


def _cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TFLA_BENCH_PLUGINS": "abplugin", "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-c", "from cli import app; app()", *args]
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def _check(repo: Path, ref: str, out: str, threshold: str, rounds: int = 2) -> subprocess.CompletedProcess[str]:
    args = ["check", "--against", ref, "--run", "preset.toml", "--out", out, "--threshold", threshold]
    return _cli(repo, *args, "--rounds", str(rounds), "--metric", "runtime_ms", "--format", "json")


def test_a_slower_commit_is_a_regression_and_only_its_kernel_is_marked(repo: Path) -> None:
    import json

    done = _check(repo, "HEAD~1", "ab.parquet", "60%")  # CPU rounds move by up to 40 %
    assert done.returncode == 1, done.stderr[-3000:]
    verdicts = {c["kernel"]: c for c in json.loads(done.stdout)["comparisons"]}
    assert verdicts["ab.work"]["verdict"] == "regression" and verdicts["ab.work"]["ratio"] > 2
    assert verdicts["ab.same"]["verdict"] != "regression"
    rows = store.load(repo / "ab.parquet")
    head, parent = _git(repo, "rev-parse", "HEAD").strip(), _git(repo, "rev-parse", "HEAD~1").strip()
    assert set(zip(rows.side, rows.git_commit)) == {("A", parent), ("B", head)}
    for _, config in rows.groupby("kernel"):
        order = config.sort_values("timestamp")
        assert order.side.tolist() == ["A", "B", "B", "A"]  # interleaved: the order alternates per round
        assert order["round"].tolist() == [0, 0, 1, 1]
        assert order.timestamp.is_unique
    assert len(_git(repo, "worktree", "list").splitlines()) == 1  # the temporary worktree is gone
    again = _cli(repo, "check", "ab.parquet", "--threshold", "60%", "--metric", "runtime_ms", "--format", "json")
    assert again.returncode == 1, again.stderr[-3000:]  # the stored rows, judged again: the same verdicts
    assert {c["kernel"]: c["verdict"] for c in json.loads(again.stdout)["comparisons"]} == {
        k: c["verdict"] for k, c in verdicts.items()
    }


def test_a_commit_against_itself_passes(repo: Path) -> None:
    # three rounds a side: the median of three outlasts one round slowed by the machine (two rounds once gave 1.58x)
    done = _check(repo, "HEAD", "aa.parquet", "50%", rounds=3)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert set(store.load(repo / "aa.parquet").side) == {"A", "B"}


def test_bad_refs_and_existing_outputs_are_refused(repo: Path) -> None:
    from tests.rows import result_row

    done = _check(repo, "no-such-ref", "x.parquet", "5%")
    assert done.returncode == 2 and "--against: 'no-such-ref' is not a commit" in " ".join(done.stderr.split())
    with pytest.raises(ValueError, match="--against"):
        ab.resolve_ref("no-such-ref", repo)
    store.append(repo / "old.parquet", [result_row()])
    again = _check(repo, "HEAD", "old.parquet", "5%")
    assert again.returncode == 2 and "exists: an A/B run writes a new file" in " ".join(again.stderr.split())
    assert len(store.load(repo / "old.parquet")) == 1
    plain = _cli(repo, "check", "old.parquet")  # not an A/B file, and no --baseline
    assert plain.returncode == 2 and "holds no A/B rows" in " ".join(plain.stderr.split())
    assert _cli(repo, "check", "missing.parquet").returncode == 2


def test_combine_takes_the_median_of_the_rounds() -> None:
    import pandas as pd

    from tests.rows import result_row

    rows = [
        result_row(side="B", round=r, runtime_ms=ms, runtime_p20_ms=ms - 0.1, runtime_p80_ms=ms + 0.1)
        for r, ms in enumerate((1.0, 2.0, 4.0))
    ]
    combined = ab.combine(pd.DataFrame(rows), "B")
    assert len(combined) == 1
    assert combined.iloc[0][["runtime_ms", "runtime_p20_ms", "runtime_p80_ms"]].tolist() == pytest.approx(
        [2.0, 1.9, 2.1]
    )


def test_sigterm_stops_an_ab_run_keeps_its_rows_and_removes_the_worktree(repo: Path, tmp_path: Path) -> None:
    preset = tmp_path / "hang.toml"
    preset.write_text(PRESET.replace('["ab.work", "ab.same"]', '["ab.same", "fake.hang"]'))
    out = tmp_path / "ab.parquet"
    env = {**os.environ, "TFLA_BENCH_PLUGINS": "abplugin,tests.fake_kernels", "PYTHONPATH": str(repo)}
    args = ["check", "--against", "HEAD", "--run", str(preset), "--out", str(out), "--timeout", "600"]
    proc = subprocess.Popen([sys.executable, "-c", "from cli import app; app()", *args], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: store.exists(out) and len(store.load(out)) == 4, 300, "ab.same's 4 rows (2 rounds x 2 sides)")
    time.sleep(2.0)  # fake.hang's first side is inside its kernel by now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert "interrupted: 4 rows kept" in " ".join(err.split()) and "Traceback" not in err
    assert store.load(out).kernel.tolist() == ["ab.same"] * 4
    assert len(_git(repo, "worktree", "list").splitlines()) == 1  # the temporary worktree is gone
