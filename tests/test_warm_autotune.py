"""``scripts/warm_autotune.py``: each process keeps its share of every Triton autotuner's candidates, the shares
cover every candidate once, and the script runs each kernel's first problem (fwbw where the grid has it)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import triton
import triton.language as tl
from triton.runtime import autotuner

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "warm_autotune.py"
spec = importlib.util.spec_from_file_location("warm_autotune", SCRIPT)
warm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(warm)


@pytest.mark.parametrize(("candidates", "count"), [(36, 6), (7, 3), (2, 5)])
def test_the_shares_cover_every_candidate_and_each_share_runs_one(candidates: int, count: int) -> None:
    configs = list(range(candidates))
    shares = [warm.share(configs, i, count) for i in range(count)]
    assert all(shares), "a share without a candidate would not run the kernel"
    assert sorted(set().union(*map(set, shares))) == configs
    if candidates >= count:
        assert sum(map(len, shares)) == candidates  # no candidate compiled twice


def test_autotuners_made_after_the_patch_keep_their_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autotuner.Autotuner, "__init__", autotuner.Autotuner.__init__)  # restored afterwards
    warm._keep_share(1, 2)
    configs = [triton.Config({"B": b}, num_warps=w) for b in (16, 32, 64) for w in (2, 4)]

    @triton.autotune(configs=configs, key=["n"])
    @triton.jit
    def kernel(x, n, B: tl.constexpr) -> None:
        pass

    @triton.autotune(configs=configs[:1], key=["n"])
    @triton.jit
    def single(x, n, B: tl.constexpr) -> None:
        pass

    assert kernel.configs == configs[1::2]
    assert single.configs == configs[:1]


def test_first_problems_take_fwbw_where_the_grid_has_it() -> None:
    chosen = warm.first_problems("cpu", {"kernels": ["sdpa.math", "tfla.mlstm_sig"], "seq_len": [64, 128]})
    assert [(s.name, p.mode, p.seq_len) for s, p in chosen] == [
        ("sdpa.math", "fwbw", 64),
        ("tfla.mlstm_sig", "fwbw", 64),
    ]
    fw_only = warm.first_problems("cpu", {"kernels": ["sdpa.math"], "mode": ["fw"]})
    assert [p.mode for _, p in fw_only] == ["fw"]


def test_the_script_runs_every_share_and_refuses_bad_arguments() -> None:
    run = [sys.executable, str(SCRIPT), "--preset", "cpu", "--kernels", "sdpa.math", "--seq-len", "64"]
    done = subprocess.run([*run, "--procs", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sdpa.math share 1/2: " in done.stdout and "sdpa.math share 2/2: " in done.stdout
    assert "failed" not in done.stdout and "1 kernels x 2 shares" in done.stdout
    for bad, named in (("--procs=0", "--procs"), ("--seq-len=a", "--seq-len"), ("--batch=-1", "--batch")):
        refused = subprocess.run([*run[:-2], bad], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and named in refused.stderr
