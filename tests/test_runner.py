"""Sweeps in isolated workers: every failure is a row with a status, nothing measured is lost, resume works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import measure, store
from bench.grid import Grid
from bench.measure import host_bound
from bench.runner import sweep


@pytest.fixture(autouse=True)
def fake_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register tests/fake_kernels.py in this process and in the spawned workers."""
    monkeypatch.setenv("TFLA_BENCH_PLUGINS", "tests.fake_kernels")
    import bench.registry as registry

    if "fake.ok" not in registry._REGISTRY:
        registry._LOADED = False
        registry._load()


def _grid(*kernels: str, seq_len: tuple[int, ...] = (32,)) -> Grid:
    return Grid(
        kernels=kernels,
        seq_len=seq_len,
        batch=(1,),
        heads=(1,),
        head_dim_qk=(16,),
        head_dim_v=(16,),
        chunk_size=(16,),
        dtype=("float32",),
        mode=("fw",),
        device="cpu",
    )


def test_each_failure_becomes_a_row_and_the_sweep_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    kernels = (
        "fake.ok",
        "fake.abort",
        "fake.raise",
        "fake.oom",
        "fake.hang",
        "fake.unsupported",
        "fake.unavailable",
        "sdpa.flash",
    )
    rows = sweep(_grid(*kernels, seq_len=(128,)).configs(), out, timeout_s=20)
    status = {r["kernel"]: r["status"] for r in rows}
    assert status == {
        "fake.ok": "ok",
        "fake.abort": "crash",
        "fake.raise": "error",
        "fake.oom": "oom",
        "fake.hang": "timeout",
        "fake.unsupported": "unsupported",
        "fake.unavailable": "unavailable",
        "sdpa.flash": "unavailable",
    }
    messages = {r["kernel"]: r["message"] for r in rows}
    assert "SIGABRT" in messages["fake.abort"] and "about to abort" in messages["fake.abort"]
    assert "fake kernel failure" in messages["fake.raise"]
    assert "seq_len too long" in messages["fake.unsupported"]
    assert "runs on cuda only" in messages["sdpa.flash"]
    frame = store.load(out)
    assert len(frame) == len(kernels)  # every row was written, the ones before each failure included
    ok = frame[frame.kernel == "fake.ok"].iloc[0]
    assert ok.runtime_p20_ms <= ok.runtime_ms <= ok.runtime_p80_ms
    assert ok.flops == 128 * 16 and ok.tflops > 0
    assert ok.torch and ok.host and ok.timestamp and json.loads(ok.packages)["torch"]
    seconds = dict(zip(frame.kernel, frame.config_s))  # each config's time in its worker, a timeout's included
    assert seconds["fake.hang"] >= 20 > seconds["fake.ok"] > 0


def test_resume_skips_measured_configs_and_force_remeasures(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    first = sweep(_grid("fake.ok", seq_len=(32, 64)).configs(), out)
    assert len(first) == 2
    again = sweep(_grid("fake.ok", seq_len=(32, 64, 128)).configs(), out)
    assert [r["seq_len"] for r in again] == [128]
    forced = sweep(_grid("fake.ok", seq_len=(32,)).configs(), out, force=True)
    assert len(forced) == 1
    frame = store.load(out)
    assert sorted(frame.seq_len.tolist()) == [32, 64, 128]


def test_verify_records_the_error_against_the_reference(tmp_path: Path) -> None:
    rows = sweep(_grid("fake.ok", "tfla.mlstm_sig", "sdpa.math").configs(), tmp_path / "r.parquet", verify=True)
    for row in rows:
        assert row["status"] == "ok", row["message"]
        assert row["error"] is not None and row["error"] < 1e-4, row


def test_resume_retries_unavailable_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package installed after a sweep: re-running it measures the configs that were unavailable."""
    out = tmp_path / "r.parquet"
    first = sweep(_grid("fake.unavailable", "fake.ok").configs(), out)
    assert [r["status"] for r in first] == ["unavailable", "ok"]
    import bench.registry as registry

    spec = registry._REGISTRY["fake.unavailable"]
    monkeypatch.setitem(
        registry._REGISTRY, "fake.unavailable", type(spec)(**{**spec.__dict__, "available": lambda: None})
    )
    again = sweep(_grid("fake.unavailable", "fake.ok").configs(), out)
    assert [(r["kernel"], r["status"]) for r in again] == [("fake.unavailable", "ok")]
    frame = store.load(out)
    assert sorted(zip(frame.kernel, frame.status)) == [("fake.ok", "ok"), ("fake.unavailable", "ok")]


def test_resume_with_retry_measures_the_named_failures_again(tmp_path: Path) -> None:
    """``retry``: a resume measures again the configs whose row failed with a named status, each new row replacing
    its config's old one; other failures, and measured rows, stay as they are."""
    out = tmp_path / "r.parquet"
    first = sweep(_grid("fake.raise", "fake.oom", "fake.ok").configs(), out)
    assert [r["status"] for r in first] == ["error", "oom", "ok"]
    assert sweep(_grid("fake.raise", "fake.oom", "fake.ok").configs(), out) == []
    assert sweep(_grid("fake.raise", "fake.oom", "fake.ok").configs(), out, retry=("timeout",)) == []
    again = sweep(_grid("fake.raise", "fake.oom", "fake.ok").configs(), out, retry=("error",))
    assert [(r["kernel"], r["status"]) for r in again] == [("fake.raise", "error")]
    frame = store.load(out)
    assert sorted(frame.kernel) == ["fake.ok", "fake.oom", "fake.raise"]  # one row per config
    assert frame.set_index("kernel").run_id["fake.raise"] == again[0]["run_id"] != first[0]["run_id"]
    with pytest.raises(ValueError, match="retry takes statuses of failed rows"):
        sweep(_grid("fake.ok").configs(), out, retry=("ok",))


def test_host_bound_needs_the_events_timer_and_a_host_near_the_runtime() -> None:
    assert host_bound(1.0, 0.8, "events") and host_bound(1.0, 2.0, "events")
    assert not host_bound(1.0, 0.5, "events")
    assert not host_bound(1.0, 2.0, "cudagraph")  # graph replays leave the host out
    assert not host_bound(1.0, None, "events") and not host_bound(None, 1.0, "events")


def test_a_graph_capture_failure_falls_back_to_events_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that cannot be captured (e.g. it synchronizes with the host) is timed by events, and the row
    says which timer measured it and why."""
    import torch

    with pytest.raises(ValueError, match="timer must be one of events, cudagraph; got 'wall'"):
        measure.time_cuda(lambda: None, [], "wall")

    def fake_time_cuda(step, leaves, timer):  # noqa: ANN001, ANN202
        if timer == "cudagraph":
            raise RuntimeError("operation not permitted when stream is capturing")
        return measure.Timing(2.0, 1.9, 2.1)

    monkeypatch.setattr(measure, "time_cuda", fake_time_cuda)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    timing, used, note = measure._time_gpu(lambda: None, [], "cudagraph")
    assert (timing.median_ms, used) == (2.0, "events")
    assert note.startswith("cudagraph capture failed (RuntimeError: operation not permitted")


def test_verify_on_a_resume_fills_in_the_missing_errors(tmp_path: Path) -> None:
    """Rows measured without --verify get their error on a --verify resume; rows that have one stay."""
    out = tmp_path / "r.parquet"
    configs = _grid("fake.ok", seq_len=(32, 64)).configs()
    sweep(configs, out)
    assert store.load(out).error.isna().all()
    again = sweep(configs, out, verify=True)
    assert [r["seq_len"] for r in again] == [32, 64]
    frame = store.load(out)
    assert len(frame) == 2 and (frame.error < 1e-6).all()
    assert sweep(configs, out, verify=True) == []


def test_one_worker_per_slot_and_no_log_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from bench import executor
    from bench.worker import KernelWorker

    made: list[KernelWorker] = []

    class Counted(KernelWorker):
        def __init__(self, device: str, env: dict[str, str] | None = None) -> None:
            super().__init__(device, env=env)
            made.append(self)

    monkeypatch.setattr(executor, "KernelWorker", Counted)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rows = sweep(_grid("fake.ok", "fake.raise", seq_len=(32, 64)).configs(), tmp_path / "r.parquet")
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error"]
    assert len(made) == 1
    assert not list(tmp_path.glob("bench-worker-*.log"))


def test_a_failed_host_allocation_is_oom(tmp_path: Path) -> None:
    rows = sweep(_grid("fake.cpu_oom").configs(), tmp_path / "r.parquet")
    assert rows[0]["status"] == "oom", rows[0]["message"]
    assert "can't allocate memory" in str(rows[0]["message"])


def test_inputs_larger_than_the_device_are_refused_before_allocating(tmp_path: Path) -> None:
    from bench.problem import Problem
    from bench.runner import memory_reason

    p = Problem(1, 2, 2**21, 32, 32, dtype="float32", device="cpu")  # q, k, v: 2 * 2**21 * 96 * 4 bytes
    assert memory_reason(p, capacity=10**12) is None
    assert memory_reason(p, capacity=10**9) == "the inputs need at least 1.61 GB; the cpu device has 1 GB"
    fwbw = memory_reason(p.with_(mode="fwbw"), capacity=10**9)
    assert fwbw == "the inputs and their gradients need at least 3.22 GB; the cpu device has 1 GB"
    rows = sweep(_grid("fake.ok", seq_len=(2**30,)).configs(), tmp_path / "r.parquet")  # 206 GB of inputs
    assert rows[0]["status"] == "unsupported" and "need at least" in str(rows[0]["message"])


def test_a_bad_timeout_is_refused_before_any_work(tmp_path: Path) -> None:
    for bad in (0, -1, float("nan"), float("inf"), "5"):
        with pytest.raises(ValueError, match="timeout must be a finite number of seconds above 0"):
            sweep(_grid("fake.ok").configs(), tmp_path / "r.parquet", timeout_s=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "r.parquet").exists()


def test_verify_catches_a_planted_wrong_gradient() -> None:
    """The forward of fake.bad_grad is right, its backward 1.5x too large: verify passes fw, fails fwbw on dx."""
    from bench.verify import gate_failures, run_verify

    results = {r.mode: r for r in run_verify(["fake.bad_grad"], "cpu", "float32")}
    assert results["fw"].status == "pass" and results["fw"].errors == {"out": pytest.approx(0.0, abs=1e-12)}
    bad = results["fwbw"]
    assert bad.status == "fail" and bad.errors["dx"] == pytest.approx(0.5) and bad.errors["out"] < 1e-12
    assert gate_failures(list(results.values())) == ["1 failed (fake.bad_grad fwbw)"]


def test_verify_holds_a_declared_backward_convention_and_says_how_far_it_is_from_the_true_gradient() -> None:
    """fake.convention has fake.bad_grad's backward (3 dy for a forward of 2 x), declared as its convention: it passes,
    and the row says what it was held to and that the true gradient is 1.5x smaller (relative distance 0.5)."""
    from bench.verify import gate_failures, run_verify

    results = {r.mode: r for r in run_verify(["fake.convention"], "cpu", "float32")}
    held = results["fwbw"]
    assert held.status == "pass" and held.errors["dx"] < 1e-6, held  # fp32 rounding of 3 dy
    assert "dx is 3 dy by design" in held.message and "vs the true gradient: dx 5.0e-01" in held.message
    assert results["fw"].message == "" and gate_failures(list(results.values())) == []


def test_a_known_issue_is_said_in_the_rows_it_concerns(tmp_path: Path) -> None:
    rows = sweep(_grid("fake.known_issue", seq_len=(32, 64)).configs(), tmp_path / "r.parquet")
    messages = {r["seq_len"]: r["message"] for r in rows}
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert messages == {32: "", 64: "known issue: planted: wrong past 32 tokens"}
    from rich.console import Console

    from bench.runner import summary_table

    console = Console(record=True, width=200)
    console.print(summary_table(rows))
    text = console.export_text()
    assert text.count("ok!") == 2 and "known issue of the kernel at this config" in text  # the row and the caption


def test_verify_shows_a_declared_known_issue_without_failing_the_gate() -> None:
    """fake.known_issue is 1.25x too large past 32 tokens and declares it: verify's S=64 rows are ``known`` (the
    table shows them, the gate passes); an undeclared failure (fake.bad_grad) still fails beside it."""
    from bench.verify import gate_failures, run_verify

    results = run_verify(["fake.known_issue", "fake.bad_grad"], "cpu", "float32")
    known = [r for r in results if r.kernel == "fake.known_issue"]
    assert [r.status for r in known] == ["known", "known"], known
    assert all(r.errors["out"] == pytest.approx(0.25) and "planted" in r.message for r in known)
    assert gate_failures(results) == ["1 failed (fake.bad_grad fwbw)"]
    passed = [r for r in results if r.kernel == "fake.bad_grad" and r.status == "pass"]
    assert gate_failures(known + passed) == []


def test_a_known_issue_covers_only_the_outputs_it_declares() -> None:
    """A row beyond the tolerance is ``known`` only where every output beyond it is declared by the issue."""
    from bench.problem import Problem
    from bench.verify import judge

    problem = Problem(1, 1, 64, 16, 16, dtype="float32", mode="fwbw", device="cpu").as_dict()

    def row(errors: dict[str, float]) -> dict:
        return {"kernel": "fake.known_issue", "status": "ok", "error": max(errors.values()), "message": "",
                "errors": json.dumps(errors), **problem}  # fmt: skip

    declared, beside = row({"out": 0.25, "dx": 0.25}), row({"out": 0.25, "dx": 0.25, "dy": 0.1})
    within = row({"out": 1e-7, "dx": 1e-7})
    assert [r.status for r in judge([declared, beside, within], "float32")] == ["known", "fail", "pass"]
    assert [r.status for r in judge([row({"out": 0.25}) | problem | {"seq_len": 32}], "float32")] == ["fail"]


def test_verify_with_several_jobs_judges_the_same_configs() -> None:
    from bench.verify import run_verify

    def judged(jobs: int) -> list[tuple[str, str, str]]:
        return sorted(
            (r.kernel, r.mode, r.status) for r in run_verify(["fake.ok", "fake.bad_grad"], "cpu", "float32", jobs=jobs)
        )

    one = judged(1)
    assert judged(3) == one and ("fake.bad_grad", "fwbw", "fail") in one
