"""Problem validation, grid expansion (const tokens, const width, qk ratio), presets."""

from __future__ import annotations

import pytest

from bench.grid import Grid, load_preset, preset_names
from bench.problem import Problem


def test_problem_validate_names_field_and_allowed_values() -> None:
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        Problem(1, 1, 0, 16, 16).validate()
    with pytest.raises(ValueError, match="chunk_size must be a power of two"):
        Problem(1, 1, 64, 16, 16, chunk_size=48).validate()
    with pytest.raises(ValueError, match="dtype must be one of float32, float16, bfloat16"):
        Problem(1, 1, 64, 16, 16, dtype="fp8").validate()
    with pytest.raises(ValueError, match="mode must be one of fw, bw, fwbw"):
        Problem(1, 1, 64, 16, 16, mode="back").validate()


def test_grid_expands_the_product() -> None:
    grid = Grid(kernels=("sdpa.math",), seq_len=(64, 128), batch=(1, 2), mode=("fw", "fwbw"), device="cpu")
    problems = grid.problems()
    assert len(problems) == 2 * 2 * 2
    assert {(p.seq_len, p.batch, p.mode) for p in problems} == {
        (s, b, m) for s in (64, 128) for b in (1, 2) for m in ("fw", "fwbw")
    }


def test_const_token_sweep_sets_batch_from_tokens() -> None:
    grid = Grid(seq_len=(512, 1024, 65536), tokens=65536)
    assert [(p.seq_len, p.batch) for p in grid.problems()] == [(512, 128), (1024, 64), (65536, 1)]
    with pytest.raises(ValueError, match="tokens .* multiple of every seq_len"):
        Grid(seq_len=(1000,), tokens=65536).problems()


def test_const_width_and_qk_ratio() -> None:
    grid = Grid(head_dim_v=(64, 256, 1024), width=4096, qk_ratio=0.5)
    assert [(p.heads, p.head_dim_qk, p.head_dim_v) for p in grid.problems()] == [
        (64, 32, 64),
        (16, 128, 256),
        (4, 512, 1024),
    ]


def test_kernels_without_chunk_size_run_once_per_shape() -> None:
    grid = Grid(kernels=("tfla.mlstm_sig", "sdpa.math"), chunk_size=(16, 32, 64), device="cpu")
    configs = grid.configs()
    assert sum(s.name == "tfla.mlstm_sig" for s, _ in configs) == 3
    assert [p.chunk_size for s, p in configs if s.name == "sdpa.math"] == [0]


def test_glob_and_unknown_kernel() -> None:
    names = [s.name for s, _ in Grid(kernels=("tfla.*",), device="cpu").configs()]
    assert names == [
        "tfla.mlstm_exp",
        "tfla.mlstm_exp_fused",
        "tfla.mlstm_exp_gluon",
        "tfla.mlstm_exp_triton",
        "tfla.mlstm_sig",
        "tfla.mlstm_sig_fused",
        "tfla.mlstm_sig_gluon",
        "tfla.mlstm_sig_triton",
    ]
    with pytest.raises(ValueError, match="unknown kernel 'nope'; known kernels: .*tfla.mlstm_exp"):
        Grid(kernels=("nope",)).configs()


def test_every_preset_loads_and_expands() -> None:
    assert {"cpu", "gpu", "consttoken", "headdim", "chunksize", "ci"} <= set(preset_names())
    for name in preset_names():
        grid = load_preset(name)
        assert grid.configs(), name
    consttoken = load_preset("consttoken")
    assert {p.tokens for p in consttoken.problems()} == {65536}


def test_unknown_preset_lists_allowed() -> None:
    with pytest.raises(ValueError, match="unknown preset 'nope'; allowed: .*consttoken"):
        load_preset("nope")


def test_unknown_grid_key() -> None:
    with pytest.raises(ValueError, match="unknown grid keys"):
        Grid().with_overrides(seqlen=[1])
