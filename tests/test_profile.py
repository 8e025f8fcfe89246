"""``bench profile``: the time split of one pass, on the CPU (operators; CUDA kernels on a GPU)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bench.problem import Problem
from bench.profile import (
    KernelTime,
    PassProfile,
    Timeline,
    device_launches,
    kernel_times,
    per_pass_us,
    profile,
    timeline,
)
from bench.registry import KernelSpec, get
from cli import app

runner = CliRunner()


def test_a_pass_splits_into_its_operators() -> None:
    spec = get("reference.mlstm_sig_parallel")
    profiled = profile(spec, Problem(1, 2, 64, 32, 32, dtype="float32", mode="fwbw", device="cpu"), passes=2)
    times = profiled.times
    names = {t.name for t in times}
    assert "aten::bmm" in names or "aten::matmul" in names  # the parallel form's products
    assert all(t.us > 0 and t.calls > 0 for t in times)
    assert [t.us for t in times] == sorted((t.us for t in times), reverse=True)
    assert profiled.timeline is None  # CPU operators nest: no timeline of them


def test_passes_do_not_accumulate_gradients() -> None:
    """The timed step resets ``.grad`` between repetitions; a profiled pass must not add its gradient to the last
    pass's (on the GPU that showed as one elementwise kernel per input, 12 % of a 7B fwbw pass)."""
    import torch

    spec = KernelSpec(
        name="test.double",
        family="mlstm",
        make_inputs=lambda p: (torch.randn(p.batch, p.seq_len, p.head_dim_v),),
        fn=lambda x: x * 2.0,  # backward: one multiplication, then the gradient is stored (added, if one is there)
        flops=lambda p: 0.0,
        bytes=lambda p: 0.0,
        devices=("cpu",),
    )
    problem = Problem(1, 1, 64, 32, 32, dtype="float32", mode="fwbw", device="cpu")
    names = {t.name for t in profile(spec, problem, passes=3).times}
    assert "aten::mul" in names
    assert "aten::add_" not in names, sorted(names)


def test_calls_per_pass_are_counted_per_pass() -> None:
    import torch

    x = torch.randn(64, 64)
    times = {t.name: t for t in kernel_times(lambda: torch.tanh(x @ x) @ x, passes=4, device="cpu")}
    assert times["aten::mm"].calls == pytest.approx(2.0)
    with pytest.raises(ValueError, match="--passes"):
        kernel_times(lambda: None, passes=0, device="cpu")


def test_the_timeline_counts_overlaps_once_and_gaps_as_idle() -> None:
    """Two passes: kernels at 0..10 and 5..12 (overlapping, two streams), 20..30, then 40..45 after a host gap."""
    line = timeline([(20.0, 30.0), (0.0, 10.0), (5.0, 12.0), (40.0, 45.0), (41.0, 42.0)], passes=2)
    assert line == Timeline(span_us=22.5, busy_us=13.5)
    assert line.idle_us == pytest.approx(9.0)
    assert timeline([(3.0, 4.0)], passes=1) == Timeline(1.0, 1.0)
    assert timeline([], passes=3) is None


def test_only_gpu_events_make_the_timeline() -> None:
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(device: DeviceType, start: float, end: float) -> SimpleNamespace:
        return SimpleNamespace(name="k", device_type=device, time_range=SimpleNamespace(start=start, end=end))

    events = [event(DeviceType.CPU, 0.0, 50.0), event(DeviceType.CUDA, 2.0, 9.0), event(DeviceType.CUDA, 11.0, 12.0)]
    assert device_launches(events) == [("k", 2.0, 9.0), ("k", 11.0, 12.0)]


def test_each_kernels_time_in_each_pass_shows_which_one_jumps() -> None:
    """Two passes, given out of order: ``a`` launched twice a pass (its launches summed per pass), ``b`` once a pass
    and slower in the second (the kernel behind a bimodal row), ``c`` an odd launch out (left out)."""
    launches = [("b", 40.0, 50.0), ("a", 0.0, 3.0), ("a", 30.0, 34.0), ("a", 5.0, 6.0), ("b", 10.0, 14.0)]
    launches += [("a", 35.0, 37.0), ("c", 60.0, 61.0)]
    assert per_pass_us(launches, passes=2) == {"a": (4.0, 6.0), "b": (4.0, 10.0)}
    assert KernelTime("b", 1, 7.0, (4.0, 10.0)).band_us() == pytest.approx((5.2, 8.8))
    assert KernelTime("aten::mm", 1, 7.0).band_us() is None  # a CPU profile has no per-pass times


def test_the_command_shows_the_per_pass_band_where_the_profile_has_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import profile as profile_module

    jumpy = PassProfile([KernelTime("bw_dq_dk_kernel", 2, 5.0, (4.0, 4.0, 6.0, 6.0, 6.0))], None)
    monkeypatch.setattr(profile_module, "profile", lambda spec, problem, passes: jumpy)
    args = ["profile", "--kernels", "reference.mlstm_exp_parallel", "--device", "cpu", "--mode", "fw"]
    out = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "p20..p80 us" in out.output and "4.0..6.0" in out.output
    monkeypatch.setattr(
        profile_module, "profile", lambda spec, problem, passes: PassProfile([KernelTime("mm", 1, 5.0)], None)
    )
    assert "p20..p80" not in runner.invoke(app, args, env={"COLUMNS": "200"}).output  # a CPU profile has none


def test_the_command_prints_a_table_and_reports_what_it_could_not_run() -> None:
    ok = runner.invoke(app, ["profile", "--kernels", "reference.mlstm_exp_parallel", "--device", "cpu", "--mode", "fw"])
    assert ok.exit_code == 0, ok.output
    assert "bench profile: reference.mlstm_exp_parallel" in ok.output and "total" in ok.output
    cpu = ["profile", "--kernels", "tfla.mlstm_sig", "--device", "cpu", "--mode", "fw", "--peak-tflops", "1"]
    floors = runner.invoke(app, [*cpu, "--peak-gbs", "1"])
    assert floors.exit_code == 0 and "none of tfla.mlstm_sig's kernels is in this profile" in floors.output
    skipped = runner.invoke(app, ["profile", "--kernels", "sdpa.cudnn", "--device", "cpu"])
    assert skipped.exit_code == 1 and "unavailable" in skipped.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--mode", "up"], "--mode must be one of fw, bw, fwbw"),
        (["--shape", "1,2,3"], "--shape takes B,NH,S,DHQK,DHHV"),
        (["--passes", "0"], "--passes and --top must be positive"),
        (["--device", "tpu"], "--device must be one of cuda, cpu"),
        (["--peak-gbs", "0"], "--peak-tflops and --peak-gbs must be positive numbers; got None and 0.0"),
    ],
)
def test_bad_input_exits_2_naming_the_parameter(args: list[str], message: str) -> None:
    done = runner.invoke(app, ["profile", "--kernels", "reference.mlstm_exp_parallel", "--device", "cpu", *args])
    assert done.exit_code == 2 and message in " ".join(done.output.split()), done.output
    unknown = runner.invoke(app, ["profile", "--kernels", "nope.kernel", "--device", "cpu"])
    assert unknown.exit_code == 2 and "nope.kernel" in unknown.output


@pytest.mark.gpu
def test_a_gpu_pass_has_a_timeline_within_its_span() -> None:
    """On the GPU: the kernels' busy time is positive, within the span, and at least the largest kernel's time
    (each pass's launches, sequential on one stream, cannot overlap)."""
    import torch

    from bench.profile import profile_passes

    x = torch.randn(2048, 2048, device="cuda")
    seen = profile_passes(lambda: torch.tanh(x @ x) @ x, passes=3, device="cuda")
    assert seen.timeline is not None
    assert 0 < seen.timeline.busy_us <= seen.timeline.span_us
    assert seen.timeline.busy_us >= seen.times[0].us * 0.99
    assert all(len(t.pass_us) == 3 and sum(t.pass_us) == pytest.approx(3 * t.us, rel=1e-3) for t in seen.times)
