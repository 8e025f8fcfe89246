"""The one-pass inference forward (``kernels.mlstm.chunk_fused``, ``backend="fused"``): ``h`` and the last states
against the float64 reference in the interpreter (fp32, fp16) and on the GPU (bf16), the backend's choice, its
refusals, and its fit on an sm_90 program."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from kernels.mlstm import backends
from kernels.mlstm.accuracy import GATE_EXTREMES, SHAPES, AccuracyCase, forward_errors, gate_extreme_case
from kernels.mlstm.tfla import mlstm_tfla

pytestmark = pytest.mark.usefixtures("poison_allocations")  # tests/conftest.py: NaN-filled buffers
# Bounds of test_tfla's forward (h and last states there measured <= 3.4e-4 in fp16).
TOL = {torch.float32: 1e-4, torch.float16: 5e-3}
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def _check(case: AccuracyCase, device: str = "cpu", bound: float | None = None) -> None:
    errors = forward_errors(case, "fused", device)
    assert set(errors) == {"h", "last_C", "last_n"} | ({"last_m"} if case.variant == "exp" else set())
    for name, err in errors.items():
        assert err < (bound or TOL[case.dtype]), f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_fused_forward_against_float64(shape: tuple, dtype: torch.dtype) -> None:
    """Both variants, with and without the normalizer, S not a multiple of the chunk, unequal and non-power-of-two
    head dims, initial states."""
    _check(AccuracyCase(*shape[:6], dtype, shape[6]))


@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize("f_shift,i_scale", GATE_EXTREMES)
def test_fused_forward_with_extreme_gates(variant: str, f_shift: float, i_scale: float) -> None:
    _check(gate_extreme_case(variant, f_shift, i_scale, torch.float32))


@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_fused_forward_matches_the_two_pass_forward(variant: str) -> None:
    """Same inputs, same chunk: the one pass and the Triton two-pass forward agree to fp32 rounding."""
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, 96, 32), torch.randn(1, 2, 96, 32)
    v, i, f = torch.randn(1, 2, 96, 48), torch.randn(1, 2, 96), torch.randn(1, 2, 96) + 2.0
    with torch.no_grad():
        runs = [
            mlstm_tfla(q, k, v, i, f, variant=variant, chunk_size=32, backend=b, return_last_states=True)
            for b in ("fused", "triton")
        ]
    (h1, s1), (h2, s2) = runs
    torch.testing.assert_close(h1, h2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s1.C, s2.C, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s1.n, s2.n, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s1.m, s2.m)


def test_fused_refuses_gradients_and_large_chunks_with_the_reason() -> None:
    x = [torch.randn(1, 1, 64, 16) for _ in range(3)] + [torch.randn(1, 1, 64) for _ in range(2)]
    x[0].requires_grad_(True)
    with pytest.raises(ValueError, match=r"backend='fused' cannot run this forward: it keeps no chunk states"):
        mlstm_tfla(*x, chunk_size=16, backend="fused")
    with torch.no_grad(), pytest.raises(ValueError, match="it takes a chunk size up to 128; got 256"):
        backends.choose_backend("fused", CPU, torch.float32, 16, 256, needs_grad=False)
    with pytest.raises(ValueError, match="it takes a q/k head dim up to 256; got 512"):
        backends.choose_backend("fused", CPU, torch.float32, 512, 64, needs_grad=False)


def test_auto_runs_fused_only_without_a_gradient_where_measured_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(backends, "gluon_reason", lambda *_: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "GPU X")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "FASTEST_INFERENCE", {("GPU X", 256, 64): "fused"})
    monkeypatch.setattr(backends, "FASTEST", {("GPU X", 256, 64): "gluon"})
    monkeypatch.setattr(backends, "interpreting", lambda: False)
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 256, 64, needs_grad=False) == "fused"
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 256, 64, needs_grad=True) == "gluon"
    assert backends.choose_backend("auto", cuda, torch.float32, 256, 64, needs_grad=False) == "gluon"  # 16-bit only
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 128, 64, needs_grad=False) == "triton"
    assert backends.choose_backend("auto", CPU, torch.bfloat16, 256, 64, needs_grad=False) == "triton"
    assert backends.choose_backend("triton", cuda, torch.bfloat16, 256, 64, needs_grad=False) == "triton"


# Compiled in a child process: this one imported the kernels for the interpreter (tests/conftest.py).
FIT_SCRIPT = """
import json, torch
from kernels.mlstm.chunk_fused import fused_tiles, fw_fused_constexprs, fw_fused_kernel
from kernels.mlstm.sm90_compile import compile_sm90
out = {}
for dhqk, dhhv in ((256, 512), (128, 256)):
    for chunk in (64, 128):
        kw = fw_fused_constexprs(fused_tiles(chunk, dhqk, dhhv, False), chunk, dhqk, torch.bfloat16, True, True, True)
        warps, stages = kw.pop("num_warps"), kw.pop("num_stages")
        out[f"{dhqk}/{dhhv} chunk {chunk}"] = compile_sm90(fw_fused_kernel, "bf16", kw, warps, stages).shared
print(json.dumps(out))
"""


def test_fused_tiles_fit_an_sm90_program() -> None:
    """At the 7B and paper head dims, chunks 64 and 128 (the largest it takes), the tuned tiles compile for sm_90
    within its shared memory."""
    pytest.importorskip("triton.backends.nvidia")
    from kernels.mlstm.sm90_compile import HOPPER_SMEM_BYTES

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as cache:
        env["TRITON_CACHE_DIR"] = cache
        done = subprocess.run(
            [sys.executable, "-c", FIT_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900
        )
    assert done.returncode == 0, done.stderr[-3000:]
    shared = json.loads(done.stdout)
    assert len(shared) == 4 and all(0 < b <= HOPPER_SMEM_BYTES for b in shared.values()), shared


@pytest.mark.gpu
@pytest.mark.parametrize("dhqk,dhhv,chunk", [(256, 512, 64), (128, 256, 128), (48, 80, 32)])
@pytest.mark.parametrize("variant,normalize", [("exp", True), ("sig", False)])
def test_gpu_fused_bf16_against_float64(
    dhqk: int, dhhv: int, chunk: int, variant: str, normalize: bool, compiled_kernels: None
) -> None:
    """Compiled, bf16, S not a multiple of the chunk, initial states: within the bf16 bound of the GPU check."""
    torch.manual_seed(0)
    case = AccuracyCase(variant, normalize, 1000, dhqk, dhhv, chunk, torch.bfloat16, True, B=2, NH=2)
    _check(case, "cuda", bound=2e-2)


def test_fused_time_options_name_their_form() -> None:
    import argparse

    from scripts.fused_time import fused_options

    assert fused_options("64,128,8,2;32,64,4,3") == [(64, 128, 8, 2), (32, 64, 4, 3)]
    for bad in ("64,128,8", "64,x,8,2", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="chunk,BV,num_warps,num_stages"):
            fused_options(bad)
