"""The GPU's clocks, power and throttle reasons in each sweep's time window, from ``nvidia-smi`` samples: whether
two sets of rows ran at the same clocks (``device_job.sh bimodal``; ``docs/performance.md`` v40).

Inputs: the samples of ``nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,
clocks_event_reasons.active --format=csv,noheader -lms 50`` and a marks file with lines ``TIME start LABEL ...`` and
``TIME end LABEL ...`` (``TIME`` from ``date +%FT%T.%N``, or ``%T.%N``: then the samples' first date). Usage:
``python scripts/clock_windows.py CLOCKS.csv MARKS.txt``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

COLUMNS = ["timestamp", "sm_mhz", "mem_mhz", "power_w", "temp_c", "reasons"]
GPU_IDLE = 0x1  # nvidia-smi's clocks-event reason bit "GPU idle"
REASONS = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "power_brake"}


def read_samples(path: Path) -> pd.DataFrame:
    """One row per sample: ``time`` (Timestamp), ``sm_mhz``, ``mem_mhz``, ``power_w``, ``temp_c`` (numbers) and
    ``reasons`` (the bit mask as an int)."""
    raw = pd.read_csv(path, header=None, names=COLUMNS, skipinitialspace=True, dtype=str)
    out = pd.DataFrame({"time": pd.to_datetime(raw["timestamp"], format="%Y/%m/%d %H:%M:%S.%f")})
    for col in ("sm_mhz", "mem_mhz", "power_w", "temp_c"):
        out[col] = pd.to_numeric(raw[col].str.split().str[0], errors="coerce")
    out["reasons"] = raw["reasons"].map(lambda x: int(x, 16))
    return out


def read_windows(path: Path, day: pd.Timestamp) -> pd.DataFrame:
    """``label``, ``start``, ``end`` of each ``start`` line and the next ``end`` line of the same label;
    ``day`` dates marks written as times of day."""
    open_at: dict[str, pd.Timestamp] = {}
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[1] not in ("start", "end"):
            continue
        stamp = pd.Timestamp(parts[0][:26])  # pandas keeps microseconds; date +%N writes nanoseconds
        if "T" not in parts[0]:
            stamp = day.normalize() + (stamp - stamp.normalize())
        label = " ".join(parts[2:])
        if parts[1] == "start":
            open_at[label] = stamp
        elif label in open_at:
            rows.append({"label": label, "start": open_at.pop(label), "end": stamp})
    return pd.DataFrame(rows, columns=["label", "start", "end"])


def window_stats(samples: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    """Per window, over its samples while the GPU was not idle (``GPU_IDLE`` unset): their count, SM clock p10 /
    median / min (MHz), memory clock median (MHz), power median / max (W), temperature max (C) and each throttle
    reason's share of them (%)."""
    rows = []
    for w in windows.itertuples():
        inside = samples[(samples["time"] >= w.start) & (samples["time"] <= w.end)]
        busy = inside[(inside["reasons"] & GPU_IDLE) == 0]
        row = {
            "label": w.label,
            "seconds": round((w.end - w.start).total_seconds(), 1),
            "busy_samples": len(busy),
            "sm_p10": busy["sm_mhz"].quantile(0.1),
            "sm_median": busy["sm_mhz"].median(),
            "sm_min": busy["sm_mhz"].min(),
            "mem_median": busy["mem_mhz"].median(),
            "power_median": busy["power_w"].median(),
            "power_max": busy["power_w"].max(),
            "temp_max": inside["temp_c"].max(),
        }
        for bit, name in REASONS.items():
            row[f"{name}_pct"] = 100 * ((busy["reasons"] & bit) != 0).mean() if len(busy) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clocks", type=Path)
    parser.add_argument("marks", type=Path)
    args = parser.parse_args()
    missing = [str(p) for p in (args.clocks, args.marks) if not p.is_file()]
    if missing:
        print(f"clock_windows: clocks and marks must be existing files; missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    samples = read_samples(args.clocks)
    table = window_stats(samples, read_windows(args.marks, samples["time"].iloc[0]))
    print(table.round(1).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
