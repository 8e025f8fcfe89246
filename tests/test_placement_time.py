"""``scripts/placement_time.py``: its statistics on known samples, its refusal of bad arguments before any GPU
work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.placement_time import pad_list, summary

ROOT = Path(__file__).parent.parent


def test_summary_interpolates_between_repetitions() -> None:
    # 6 sorted samples: the p20 lies at position 1.0, the median at 2.5, the p80 at 4.0
    med, p20, p80, band = summary([5.0, 5.4, 5.1, 5.2, 5.3, 6.0])
    assert (med, p20, p80) == (pytest.approx(5.25), pytest.approx(5.1), pytest.approx(5.4))
    assert band == pytest.approx(100 * 0.3 / 5.25)


def test_summary_of_two_levels_has_a_wide_band() -> None:
    # half the passes at 5.3 ms, half at 5.75: the median sits between, the band spans the gap
    med, p20, p80, band = summary([5.3] * 10 + [5.75] * 10)
    assert (p20, p80) == (pytest.approx(5.3), pytest.approx(5.75))
    assert med == pytest.approx(5.525)
    assert band == pytest.approx(100 * 0.45 / 5.525)


def test_pads_parse_and_refuse() -> None:
    assert pad_list("0,2,64") == [0, 2, 64]
    for bad in ("", "a", "1,-2", "1.5"):
        with pytest.raises(Exception, match="--pads"):
            pad_list(bad)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--pads", "x"], "--pads"),
        (["--rounds", "0"], "--rounds"),
        (["--rep-ms", "-5"], "--rep-ms"),
        (["--kernel", "tfla.nope"], "--kernel"),
        (["--chunk", "300"], "chunk_size"),
    ],
)
def test_bad_arguments_exit_2_naming_the_parameter(args: list[str], named: str) -> None:
    run = subprocess.run([sys.executable, "scripts/placement_time.py", *args], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert named in run.stderr and "Traceback" not in run.stderr
