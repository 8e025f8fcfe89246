"""``bench profile``: the time split of one pass, on the CPU (operators; CUDA kernels on a GPU)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bench.problem import Problem
from bench.profile import kernel_times, profile
from bench.registry import KernelSpec, get
from cli import app

runner = CliRunner()


def test_a_pass_splits_into_its_operators() -> None:
    spec = get("reference.mlstm_sig_parallel")
    times = profile(spec, Problem(1, 2, 64, 32, 32, dtype="float32", mode="fwbw", device="cpu"), passes=2)
    names = {t.name for t in times}
    assert "aten::bmm" in names or "aten::matmul" in names  # the parallel form's products
    assert all(t.us > 0 and t.calls > 0 for t in times)
    assert [t.us for t in times] == sorted((t.us for t in times), reverse=True)


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
    names = {t.name for t in profile(spec, problem, passes=3)}
    assert "aten::mul" in names
    assert "aten::add_" not in names, sorted(names)


def test_calls_per_pass_are_counted_per_pass() -> None:
    import torch

    x = torch.randn(64, 64)
    times = {t.name: t for t in kernel_times(lambda: torch.tanh(x @ x) @ x, passes=4, device="cpu")}
    assert times["aten::mm"].calls == pytest.approx(2.0)
    with pytest.raises(ValueError, match="--passes"):
        kernel_times(lambda: None, passes=0, device="cpu")


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
