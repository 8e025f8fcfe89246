"""Where a kernel's warps stall, from the per-SASS-instruction CSV that ``device_job.sh ncu_sass`` writes
(``ncu --page source --csv --print-source sass``): the stall reasons' shares and the instructions with the most
stall samples, each with its top reasons. Usage: ``python scripts/ncu_stalls.py OUT/<kernel>_sass.csv [--top 25]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

SAMPLES = "Warp Stall Sampling (All Samples)"


def stall_table(csv: Path) -> pd.DataFrame:
    """One row per SASS instruction: ``source``, ``samples`` and one column per stall reason (sample counts)."""
    df = pd.read_csv(csv, skiprows=1)  # the first line names the kernel
    reasons = [c for c in df.columns if c.startswith("stall_") and "Not Issued" not in c]
    counts = df[[SAMPLES, *reasons]].apply(lambda col: pd.to_numeric(col.astype(str).str.replace(",", ""), "coerce"))
    out = counts.fillna(0).rename(columns={SAMPLES: "samples"})
    out.insert(0, "source", df["Source"].str.strip())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if not args.csv.is_file() or args.top < 1:
        print(f"ncu_stalls: need an existing CSV and --top >= 1; got {args.csv} and {args.top}", file=sys.stderr)
        return 2
    table = stall_table(args.csv)
    total = table["samples"].sum()
    reasons = table.columns[2:]
    print(f"{args.csv.name}: {len(table)} instructions, {int(total)} stall samples")
    print((table[reasons].sum() / total * 100).sort_values(ascending=False).head(8).round(1).to_string())
    for index, row in table.sort_values("samples", ascending=False).head(args.top).iterrows():
        top = row[reasons][row[reasons] > 0].sort_values(ascending=False).head(3)
        detail = ", ".join(f"{name[6:]} {int(n)}" for name, n in top.items())
        print(f"{index:5d} {row['samples'] / total * 100:5.1f}%  {row['source'][:60]:60s} {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
