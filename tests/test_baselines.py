"""Baseline adapters on the CPU: shape mapping, availability reasons, sdpa.math against its reference."""

from __future__ import annotations

import json

import torch

from bench.problem import Problem
from bench.registry import all_specs, get
from bench.runner import precheck
from specs import mamba, sdpa, shapes

PAPER = Problem(batch=8, heads=16, seq_len=8192, head_dim_qk=128, head_dim_v=256, chunk_size=128)


def test_attention_keeps_the_model_width() -> None:
    assert shapes.width(PAPER) == 4096
    assert get("sdpa.cudnn").params(PAPER) == {"heads": 32, "head_dim": 128, "causal": True}
    q, k, v = sdpa.attention_inputs(PAPER.with_(batch=1, seq_len=4, device="cpu"))
    assert q.shape == (1, 32, 4, 128)


def test_mamba_mappings_follow_the_paper() -> None:
    assert get("mamba.mamba").params(PAPER) == {"d_inner": 8192, "d_state": 16}
    assert get("mamba.mamba2").params(PAPER)["heads"] == 128
    x, dt, A, B, C = mamba.mamba2_inputs(PAPER.with_(batch=1, seq_len=4, device="cpu"))
    assert x.shape == (1, 4, 128, 64) and B.shape == (1, 4, 1, 64)


def test_fla_maps_onto_the_mlstm_heads() -> None:
    params = get("fla.chunk_simple_gla").params(PAPER)
    assert params["chunk_size"] == 64 and params["layout"] == "BSHD"


def test_every_family_has_a_baseline_and_cuda_only_kernels_are_unavailable_here() -> None:
    specs = all_specs()
    assert {s.family for s in specs} == {"mlstm", "attention", "linear_attention", "ssm"}
    expected = {
        "sdpa.flash",
        "sdpa.cudnn",
        "sdpa.efficient",
        "sdpa.math",
        "flash_attn.fa2",
        "flash_attn.fa3",
        "flash_attn.fa4",
        "fla.chunk_simple_gla",
        "fla.chunk_gla",
        "fla.fused_chunk_gla",
        "fla.chunk_gated_delta_rule",
        "mamba.mamba",
        "mamba.mamba2",
        "mlstm_kernels.limit_chunk",
        "mlstm_kernels.xl_chunk",
        "mlstm_kernels.xl_chunk_siging",
    }
    assert expected <= {s.name for s in specs}
    if not torch.cuda.is_available():
        for name in ("sdpa.cudnn", "mamba.mamba2", "fla.chunk_gla"):
            m = precheck(get(name), PAPER)
            assert m is not None and m.status == "unavailable" and m.message


def test_unsupported_shapes_are_decided_before_launch() -> None:
    m = precheck(get("tfla.mlstm_sig"), PAPER.with_(device="cpu", chunk_size=16384))
    assert m is not None and m.status == "unsupported" and "exceeds the sequence length" in m.message
    m = precheck(get("sdpa.math"), PAPER.with_(device="cpu", head_dim_v=256))
    assert m is None


def test_official_limit_chunk_runs_at_chunk_64() -> None:
    spec = get("mlstm_kernels.limit_chunk")
    assert json.loads(json.dumps(spec.params(PAPER)))["chunk_size"] == 64
    assert not spec.uses_chunk_size


def test_sdpa_math_matches_float64_reference() -> None:
    p = Problem(1, 2, 64, 32, 32, device="cpu", dtype="float32")
    spec = get("sdpa.math")
    q, k, v = spec.make_inputs(p)
    out = spec.fn(q, k, v)
    ref = spec.reference(q.double(), k.double(), v.double())
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


def test_gla_reference_matches_a_step_by_step_recurrence() -> None:
    """The FLA baselines' reference (used by --verify) against a plain recurrence, scalar and vector gates."""
    from specs.fla import gla_reference

    B, S, H, DK, DV = 1, 12, 2, 8, 4
    q, k, v = (
        torch.randn(B, S, H, DK, dtype=torch.float64),
        torch.randn(B, S, H, DK, dtype=torch.float64),
        torch.randn(B, S, H, DV, dtype=torch.float64),
    )
    for gshape in ((B, S, H), (B, S, H, DK)):
        g = torch.nn.functional.logsigmoid(torch.randn(*gshape, dtype=torch.float64) + 2)
        state = torch.zeros(B, H, DK, DV, dtype=torch.float64)
        outs = []
        for t in range(S):
            decay = g[:, t].exp()
            decay = decay[..., None, None] if len(gshape) == 3 else decay[..., :, None]
            state = decay * state + k[:, t, :, :, None] * v[:, t, :, None, :]
            outs.append((q[:, t, :, None, :] * DK**-0.5 @ state)[:, :, 0])
        expected = torch.stack(outs, dim=1)
        assert torch.allclose(gla_reference(q, k, v, g), expected, atol=1e-10)


def test_mlstm_reference_accepts_mixed_dtypes() -> None:
    from kernels.mlstm.reference import mlstm_parallel

    q = torch.randn(1, 1, 8, 16, dtype=torch.bfloat16)
    out = mlstm_parallel(q, q, q, torch.randn(1, 1, 8), torch.randn(1, 1, 8))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_fla_caveat_on_hopper_with_old_triton(monkeypatch) -> None:  # noqa: ANN001
    """The known-broken FLA backward is named by `bench list` and turns bw problems into `unsupported` rows."""
    import triton

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    names = ("fla.chunk_simple_gla", "fla.chunk_gla", "fla.chunk_gated_delta_rule")
    for spec in map(get, names):
        assert "known broken" in spec.caveat()
        assert "known broken" in spec.supports(PAPER.with_(mode="fwbw"))
        assert spec.supports(PAPER.with_(mode="fw")) is None
    monkeypatch.setattr(triton, "__version__", "3.7.1")
    for spec in map(get, names):
        assert spec.caveat() is None and spec.supports(PAPER.with_(mode="fwbw")) is None


def test_flash_attention_rows_say_which_package_and_gpu_they_need(monkeypatch) -> None:  # noqa: ANN001
    import sys
    import types

    from specs import flash_attn

    assert flash_attn.fa4_head_dims(128, 9, "fwbw") is None and flash_attn.fa4_head_dims(256, 9, "bw") is None
    assert flash_attn.fa4_head_dims(512, 9, "fw") == "FlashAttention-4 supports head dims 8..256 on sm_90; got 512"
    assert "8..128 and 256 on sm_100" in str(flash_attn.fa4_head_dims(192, 10, "fw"))
    assert flash_attn.fa2_head_dims(128, 8, "fw") is None
    fa3 = next(v for v in flash_attn.VERSIONS if v.name == "fa3")
    monkeypatch.setattr(flash_attn, "_capability", lambda: 8)
    assert flash_attn._gpu_reason(fa3) == "FA3 runs on sm_90; this GPU is sm_80"
    monkeypatch.setattr(flash_attn, "_capability", lambda: 9)
    assert flash_attn._gpu_reason(fa3) is None
    assert (
        get("flash_attn.fa4").supports(PAPER.with_(dtype="float32"))
        == "FlashAttention supports float16 and bfloat16 only"
    )
    # FA3 and FA4 return (out, lse): the harness times and differentiates the first item
    fake = types.ModuleType("flash_attn_interface")
    fake.flash_attn_func = lambda q, k, v, causal: (q + k + v, torch.zeros(1))
    monkeypatch.setitem(sys.modules, "flash_attn_interface", fake)
    from bench.measure import first_output

    x = torch.ones(1, 4, 2, 128)
    assert torch.equal(first_output(get("flash_attn.fa3").fn(x, x, x)), 3 * x)
    assert get("flash_attn.fa2").available() == "package 'flash_attn' is not installed"
