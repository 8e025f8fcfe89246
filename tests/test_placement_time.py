"""``scripts/placement_time.py``: its statistics against numpy on known samples, its refusal of bad ``--pads``
before any GPU work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts.placement_time import pad_list, quantile, summary

ROOT = Path(__file__).parent.parent


def test_quantiles_match_numpys_linear_interpolation() -> None:
    rng = np.random.default_rng(7)
    xs = list(rng.normal(5.5, 0.2, size=37))
    for q in (0.0, 0.2, 0.5, 0.8, 1.0):
        assert quantile(xs, q) == pytest.approx(float(np.quantile(xs, q)), rel=1e-12)


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


def test_bad_pads_exit_2_naming_the_parameter() -> None:
    run = subprocess.run(
        [sys.executable, "scripts/placement_time.py", "--pads", "x"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "--pads" in run.stderr and "MiB" in run.stderr
