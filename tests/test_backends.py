"""The TFLA backends: which output kernel a forward runs, the reasons when Gluon cannot, and the rows' record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import store
from bench.grid import Grid
from bench.runner import sweep
from kernels.gluon.config import (
    bw_dq_dk_options,
    bw_dv_options,
    bw_states_options,
    fw_output_options,
    fw_states_options,
)
from kernels.mlstm import backends
from kernels.mlstm.backends import BACKENDS
from kernels.mlstm.tfla import mlstm_tfla

CPU = torch.device("cpu")


def _inputs(s: int = 64, d: int = 32) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, s, d) for _ in range(3))
    return q, k, v, torch.randn(1, 2, s), torch.randn(1, 2, s) + 3.0


def test_backend_names_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="backend must be one of auto, triton, gluon, fused; got 'cuda'"):
        backends.choose_backend("cuda", CPU, torch.float32, 64, 64)
    with pytest.raises(ValueError, match="backend must be one of auto, triton, gluon, fused"):
        mlstm_tfla(*_inputs(), chunk_size=32, backend="fast")


def test_auto_and_triton_run_triton_here_and_gluon_says_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU ``auto`` runs Triton; ``gluon`` runs the simulated Gluon kernel where it can take the forward, and
    says why not where it cannot; on a GPU under the interpreter Gluon cannot run at all."""
    assert backends.choose_backend("auto", CPU, torch.bfloat16, 64, 64) == "triton"
    assert backends.choose_backend("triton", CPU, torch.bfloat16, 64, 64) == "triton"
    assert backends.choose_backend("gluon", CPU, torch.bfloat16, 64, 64) == "gluon"
    with pytest.raises(ValueError, match="backend='gluon' cannot run this forward: the Gluon kernel takes float16 or"):
        backends.choose_backend("gluon", CPU, torch.float32, 64, 64)
    monkeypatch.setattr(backends, "interpreting", lambda: True)
    with pytest.raises(ValueError, match="Gluon runs compiled on a CUDA GPU, or simulated on the CPU"):
        backends.choose_backend("gluon", torch.device("cuda"), torch.bfloat16, 64, 64)
    monkeypatch.undo()
    x = _inputs()
    assert torch.equal(mlstm_tfla(*x, chunk_size=32), mlstm_tfla(*x, chunk_size=32, backend="triton"))


def test_auto_runs_gluon_only_where_measured_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` follows ``FASTEST`` by GPU, q/k head dim and chunk size: Gluon at the 7B shape where measured
    faster (chunks 128 to 1024 on the H100 and the H200), at the paper shape on the H100 from chunk 256 on and on the
    H200 from 128, Triton at other shapes and chunks, on another GPU, and wherever Gluon cannot run."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(backends, "gluon_reason", lambda *_: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H100 80GB HBM3")
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 256, 128) == "gluon"
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 128, 128) == "triton"
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 256, 256) == "gluon"
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 256, 64) == "triton"
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 256, 1024) == "gluon"
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 128, 1024) == "gluon"
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 64, 1024) == "triton"
    assert backends.choose_backend("triton", cuda, torch.bfloat16, 256, 128) == "triton"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H200")
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 256, 256) == "gluon"
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 256, 128) == "gluon"
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 128, 1024) == "gluon"
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 256, 64) == "triton"
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 64, 256) == "triton"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA A100-SXM4-80GB")
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 256, 128) == "triton"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(backends, "gluon_reason", lambda *_: "no Hopper GPU")
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 256, 128) == "triton"
    assert all(b in BACKENDS for b in backends.FASTEST.values())


def test_gluon_reasons_name_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "interpreting", lambda: False)
    cuda = torch.device("cuda")
    assert "float16 or bfloat16" in str(backends.gluon_reason(cuda, torch.float32, 64, 64))
    assert "head dim up to 256; got 512" in str(backends.gluon_reason(cuda, torch.bfloat16, 512, 64))
    assert "multiple of 64; got 32" in str(backends.gluon_reason(cuda, torch.bfloat16, 64, 32))


def test_rows_record_the_backend_and_gluon_rows_are_not_a_crash(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    grid = Grid(
        kernels=("tfla.mlstm_sig", "tfla.mlstm_sig_gluon"),
        seq_len=(64,),
        batch=(1,),
        heads=(2,),
        head_dim_qk=(32,),
        head_dim_v=(32,),
        chunk_size=(32,),
        dtype=("float32",),
        mode=("fw",),
        device="cpu",
    )
    sweep(grid.configs(), out)
    rows = {r.kernel: r for r in store.load(out).itertuples()}
    assert rows["tfla.mlstm_sig"].status == "ok"
    assert json.loads(rows["tfla.mlstm_sig"].kernel_params)["backend"] == "triton"
    gluon = rows["tfla.mlstm_sig_gluon"]
    assert gluon.status in ("unavailable", "unsupported") and gluon.message
    params = json.loads(gluon.kernel_params)
    assert params["backend"] == "gluon"
    assert params["gluon"] == {  # the options its kernels run with (kernels.gluon.config)
        "fw_states": fw_states_options(32, 32, 32).kwargs(),  # type: ignore[union-attr]
        "fw_output": fw_output_options(32, 32, 32).kwargs(),
        "bw_states": bw_states_options(32, 32, 32).kwargs(),  # type: ignore[union-attr]
        "bw_dv": bw_dv_options(32, 32, 32).kwargs(),
        "bw_dq_dk": "triton",  # a q/k head dim of 32 is too narrow for the Gluon dq / dk
    }
    assert bw_dq_dk_options(256, 512, 1024).kwargs() == {
        "num_warps": 4,
        "async_mma": True,
        "one_launch": False,
        "with_dv": False,
    }
    assert bw_dq_dk_options(256, 512, 256).kwargs() == {
        "num_warps": 4,
        "async_mma": False,
        "one_launch": False,
        "with_dv": False,
    }
    assert fw_states_options(128, 256, 1024) is None  # the Triton state kernel from chunk 512 on at 128 columns
    assert fw_states_options(256, 512, 1024) is not None  # the 256-column Gluon one up to chunk 1024
    assert bw_states_options(256, 512, 1024) is not None  # the Gluon state-gradient kernel up to chunk 1024


@pytest.mark.skipif(torch.cuda.is_available(), reason="the case of a machine without a CUDA GPU")
def test_cuda_rows_on_a_machine_without_a_gpu_are_rows_not_a_traceback(tmp_path: Path) -> None:
    # make_row asks every row its kernel_params; for a fw pass `auto` looks up the GPU's name (the one-pass forward's
    # table), which must not raise where there is none
    cuda = torch.device("cuda")
    assert backends.choose_backend("auto", cuda, torch.bfloat16, 256, 128, needs_grad=False) == "triton"
    out = tmp_path / "r.parquet"
    grid = Grid(
        kernels=("tfla.mlstm_sig", "tfla.mlstm_exp"),
        seq_len=(8192,),
        batch=(8,),
        heads=(8,),
        head_dim_qk=(256,),
        head_dim_v=(512,),
        chunk_size=(128, 1024),
        dtype=("bfloat16",),
        mode=("fw", "fwbw"),
        device="cuda",
    )
    sweep(grid.configs(), out)
    rows = store.load(out)
    assert len(rows) == 8 and set(rows.status) == {"unavailable"}
    assert all(json.loads(p)["backend"] == "triton" for p in rows.kernel_params)
