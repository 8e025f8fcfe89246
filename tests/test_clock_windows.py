"""``scripts/clock_windows.py``: each sweep's window of ``nvidia-smi`` samples, on made-up samples with known answers
and on the H100 samples of ``docs/performance.md`` v40."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.clock_windows import read_samples, read_windows, window_stats

ROOT = Path(__file__).parent.parent
V40 = ROOT / "results" / "h100" / "logs" / "2026-12-07" / "v40"


def _samples(tmp_path: Path) -> Path:
    """Ten samples 0.1 s apart: idle (345 MHz, reason 0x1) at 0.0 and 0.9, working at 1980 MHz in between except
    two samples clocked down to 1500 MHz under the software power cap (0x4)."""
    lines = []
    for i in range(10):
        idle = i in (0, 9)
        capped = i in (3, 4)
        sm = 345 if idle else 1500 if capped else 1980
        reasons = 0x1 if idle else 0x4 if capped else 0
        lines.append(f"2026/12/07 15:00:00.{i}00, {sm} MHz, 2619 MHz, {70 + 20 * i}.5 W, {40 + i}, 0x{reasons:016x}")
    path = tmp_path / "clocks.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_window_counts_only_working_samples_and_the_cap_share(tmp_path: Path) -> None:
    samples = read_samples(_samples(tmp_path))
    assert samples["sm_mhz"].tolist()[:4] == [345, 1980, 1980, 1500] and samples["reasons"].iloc[3] == 0x4
    marks = tmp_path / "marks.txt"
    # whole window; a window of the capped samples only (times of day, dated by the samples); an unclosed start
    marks.write_text(
        "2026-12-07T15:00:00.000000000 start all\n2026-12-07T15:00:00.950000000 end all\n"
        "15:00:00.250 start capped 1\n15:00:00.450 end capped 1\nnoise line\n15:00:00.5 start left open\n"
    )
    windows = read_windows(marks, samples["time"].iloc[0])
    assert windows["label"].tolist() == ["all", "capped 1"]
    stats = window_stats(samples, windows).set_index("label")
    whole = stats.loc["all"]
    assert whole["busy_samples"] == 8  # the two idle samples left out
    assert whole["sm_median"] == 1980 and whole["sm_min"] == 1500 and whole["mem_median"] == 2619
    assert whole["sw_power_cap_pct"] == pytest.approx(25.0) and whole["hw_thermal_pct"] == 0
    assert whole["power_max"] == pytest.approx(230.5) and whole["temp_max"] == 49  # temperature over idle ones too
    capped = stats.loc["capped 1"]
    assert capped["busy_samples"] == 2 and capped["sm_median"] == 1500 and capped["sw_power_cap_pct"] == 100


def test_the_h100_samples_show_the_same_clocks_at_chunks_512_and_256() -> None:
    samples = read_samples(V40 / "clocks2.csv")
    stats = window_stats(samples, read_windows(V40 / "marks2.txt", samples["time"].iloc[0]))
    assert sorted(stats["label"]) == sorted(f"{c} {i}" for c in (256, 512) for i in (1, 2, 3))
    assert (stats["busy_samples"] > 150).all()
    assert (stats["sm_median"] == 1980).all() and (stats["sm_p10"] == 1980).all()
    assert stats["sw_power_cap_pct"].between(2, 11).all() and (stats["hw_slowdown_pct"] == 0).all()


def test_the_cli_prints_a_window_per_sweep_and_refuses_missing_files(tmp_path: Path) -> None:
    def run(clocks: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "scripts/clock_windows.py", str(clocks), str(V40 / "marks2.txt")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )

    done = run(V40 / "clocks2.csv")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 + 6 and "sm_median" in done.stdout
    bad = run(tmp_path / "none.csv")
    assert bad.returncode == 2 and "none.csv" in bad.stderr and "Traceback" not in bad.stderr
