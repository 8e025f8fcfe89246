"""Bytes each TFLA kernel moves against its floor, from the CSV that ``device_job.sh ncu_bytes`` writes (Nsight
Compute's ``dram__bytes_read/write``, ``lts__t_bytes``, L2 hit rate and duration per launch, 7B shape, bf16):
DRAM bytes over ``kernels.mlstm.cost``'s fewest bytes, the DRAM rate reached, and the bytes through L2 (what the
SMs asked for: repeated reads of one tile by several programs count each time).
Usage: ``python scripts/ncu_bytes.py OUT/ncu_bytes_<chunk>.csv ... [--shape 8,8,8192,256,512]``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from kernels.mlstm.cost import LAUNCH_NAMES, ONE_LAUNCH, part_name, tfla_kernel_work

METRICS = {
    "dram__bytes_read.sum": "dram_read",
    "dram__bytes_write.sum": "dram_write",
    "lts__t_bytes.sum": "l2",
    "lts__t_sector_hit_rate.pct": "l2_hit_pct",
    "gpu__time_duration.sum": "ns",
}
_PARTS_OF = Counter(name for names in LAUNCH_NAMES.values() for name in names)
# kernels that do one part; one that does two (the Gluon bw_dq_dk_kernel, a launch each) has no single floor here
PART_OF = {name: part for part, names in LAUNCH_NAMES.items() for name in names if _PARTS_OF[name] == 1}
PART_OF |= {name: part_name(kernels) for kernels, names in ONE_LAUNCH.items() for name in names}  # one part, one floor


def launches(csv: Path) -> pd.DataFrame:
    """One row per profiled launch (the last launch of each kernel: the forward runs twice before the backward):
    ``kernel`` (the part of the pass) and the ``METRICS`` columns."""
    df = pd.read_csv(csv)
    df["value"] = pd.to_numeric(df["Metric Value"].astype(str).str.replace(",", ""), errors="coerce")
    wide = df.pivot_table(index=["ID", "Kernel Name"], columns="Metric Name", values="value", aggfunc="first")
    wide = wide.reset_index().drop_duplicates("Kernel Name", keep="last").rename(columns=METRICS)
    wide.insert(0, "kernel", wide["Kernel Name"].map(PART_OF))
    return wide[["kernel", "Kernel Name", *METRICS.values()]]


def against_floor(csv: Path, shape: tuple[int, ...]) -> pd.DataFrame:
    """``launches`` with the floor's bytes (GB) at the chunk size in the file's name (``ncu_bytes_<chunk>.csv``),
    DRAM bytes (GB) and their ratio to the floor, DRAM TB/s, L2 GB and time (us)."""
    chunk = int(csv.stem.rsplit("_", 1)[1])
    floor = {w.kernel: w.bytes / 1e9 for w in tfla_kernel_work(*shape, chunk, 2, "fwbw")}
    for kernels in ONE_LAUNCH:
        floor |= {w.kernel: w.bytes / 1e9 for w in tfla_kernel_work(*shape, chunk, 2, "bw", one_launch=kernels)}
    rows = launches(csv)
    dram = (rows["dram_read"] + rows["dram_write"]) / 1e9
    floor_gb = rows["kernel"].map(floor)
    return pd.DataFrame(
        {
            "chunk": chunk,
            "kernel": rows["Kernel Name"],
            "us": rows["ns"] / 1e3,
            "dram_gb": dram,
            "floor_gb": floor_gb,
            "dram_over_floor": dram / floor_gb,
            "dram_tb_s": dram / rows["ns"] * 1e6,  # GB per ns = 1e9 GB/s = 1e6 TB/s
            "l2_gb": rows["l2"] / 1e9,
            "l2_hit_pct": rows["l2_hit_pct"],
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", nargs="+", type=Path)
    parser.add_argument("--shape", default="8,8,8192,256,512", help="B,NH,S,DHQK,DHHV of the profiled pass")
    args = parser.parse_args()
    try:
        shape = tuple(int(x) for x in args.shape.split(","))
        if len(shape) != 5:
            raise ValueError
    except ValueError:
        print(f"--shape must be five integers B,NH,S,DHQK,DHHV; got {args.shape!r}", file=sys.stderr)
        return 2
    table = pd.concat([against_floor(p, shape) for p in args.csv])
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
