"""``bench sweep --ray``: each config a Ray task on a local Ray instance (skipped where ray is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import store
from bench.grid import load_preset
from bench.problem import KEY_FIELDS
from bench.runner import sweep

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():  # noqa: ANN201
    mp = pytest.MonkeyPatch()
    mp.setenv("TFLA_BENCH_PLUGINS", "tests.fake_kernels")  # the tasks' processes register the fakes too
    ray.init(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()
    mp.undo()


def _configs(kernels: list[str], seq_lens: tuple[int, ...] = (32, 64)) -> list:
    return load_preset("cpu").with_overrides(kernels=kernels, seq_len=list(seq_lens), mode=["fw"]).configs()


def _keys(rows: list[dict]) -> set[tuple]:
    return {tuple(r[k] for k in KEY_FIELDS) for r in rows}


def test_ray_tasks_give_the_rows_of_a_plain_sweep(local_ray: None, tmp_path: Path) -> None:
    configs = _configs(["reference.mlstm_sig_parallel", "fake.ok"])
    plain = sweep(configs, tmp_path / "plain.parquet")
    on_ray = sweep(configs, tmp_path / "ray.parquet", ray="auto")
    assert _keys(on_ray) == _keys(plain) and {r["status"] for r in on_ray} == {"ok"}
    rows = store.load(tmp_path / "ray.parquet")
    assert rows.host.notna().all() and rows.run_id.nunique() == 1  # each task's machine, this sweep's run


def test_a_task_whose_process_dies_is_a_crash_row_and_a_hang_a_timeout(local_ray: None, tmp_path: Path) -> None:
    rows = sweep(_configs(["fake.abort", "fake.hang", "fake.ok"], (32,)), tmp_path / "r.parquet", ray="auto",
                 timeout_s=20)  # fmt: skip
    status = {r["kernel"]: r["status"] for r in rows}
    assert status == {"fake.abort": "crash", "fake.hang": "timeout", "fake.ok": "ok"}
    assert "Ray" in next(r["message"] for r in rows if r["kernel"] == "fake.abort")
