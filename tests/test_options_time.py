"""``scripts/options_time.py``: its option sets parsed against the options dataclass, the backend's options
overridden through ``kernels.gluon.config.overridden``, and bad arguments refused (exit 2) before any GPU work."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.gluon import config
from scripts.options_time import parse_set

ROOT = Path(__file__).parent.parent


def test_option_sets_take_the_dataclass_fields_and_types() -> None:
    assert parse_set("bw_dq_dk", "one_launch=1,num_warps=8") == {"one_launch": True, "num_warps": 8}
    assert parse_set("bw_dq_dk", "async_mma=false") == {"async_mma": False}
    assert parse_set("bw_states", "stages=2,state_slots=1") == {"stages": 2, "state_slots": 1}
    with pytest.raises(ValueError, match="num_warps, async_mma, one_launch"):
        parse_set("bw_dq_dk", "warps=8")
    with pytest.raises(ValueError, match="one_launch is a bool"):
        parse_set("bw_dq_dk", "one_launch=2")


def test_overridden_replaces_fields_and_keeps_the_triton_cases() -> None:
    own = config.bw_dq_dk_options(256, 512, 256)
    assert own is not None
    pinned = config.overridden("bw_dq_dk", one_launch=not own.one_launch, num_warps=8)(256, 512, 256)
    assert pinned == dataclasses.replace(own, num_warps=8, one_launch=not own.one_launch)
    assert config.overridden("bw_dq_dk", one_launch=True)(32, 32, 64) is None  # too narrow: Triton's dq / dk


def test_overrides_do_not_stack_on_what_was_set_in_place_of_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "bw_dq_dk_options", config.overridden("bw_dq_dk", num_warps=8, one_launch=True))
    own = config.OWN_OPTIONS["bw_dq_dk"](256, 512, 256)
    assert config.overridden("bw_dq_dk")(256, 512, 256) == own  # the module's own, not the one set in its place
    assert config.overridden("bw_dq_dk", one_launch=True)(256, 512, 256).num_warps == own.num_warps  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--kernel", "fw_output", "--set", "bv=1"], "--kernel"),
        (["--kernel", "bw_dq_dk", "--set", "nope=1"], "--set"),
        (["--kernel", "bw_dq_dk", "--set", "num_warps=x"], "--set num_warps"),
        (["--kernel", "bw_dq_dk", "--set", "one_launch=1", "--chunks", "8"], "--chunks"),
        (["--kernel", "bw_dq_dk", "--set", "one_launch=1", "--variants", "tanh"], "--variants"),
        (["--kernel", "bw_dq_dk", "--set", "one_launch=1", "--rounds", "0"], "--rounds"),
        (["--kernel", "bw_dq_dk", "--set", "one_launch=1", "--shape", "1,2,3"], "--shape"),
        (["--kernel", "bw_dq_dk", "--set", "one_launch=1", "--shape", "1,x,3,4,5"], "--shape"),
        (["--kernel", "bw_dq_dk", "--set", "one_launch=1", "--chunks", "256,"], "--chunks"),
    ],
)
def test_bad_arguments_exit_2_naming_the_parameter(args: list[str], named: str) -> None:
    run = subprocess.run([sys.executable, "scripts/options_time.py", *args], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert named in run.stderr and "Traceback" not in run.stderr


def test_every_options_function_has_its_own_kept() -> None:
    functions = {name.removesuffix("_options") for name in vars(config) if name.endswith("_options")}
    assert functions == set(config.OWN_OPTIONS)
