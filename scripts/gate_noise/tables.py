"""The Markdown tables of results/h200/noise/README.md from the files ``run.sh`` writes:
    python scripts/gate_noise/tables.py DIR      (DIR holds aa_N.parquet and plant.parquet)
B/A is this tree over the ref, per config the median of its rounds (``bench.ab.combine``)."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import ab
from bench.measure import host_bound


def ratios(path: Path) -> list[tuple[str, str, float, float, float, bool]]:
    """(kernel, mode, A ms, B ms, largest host ms per call, host-bound) per config of one A/B file."""
    sides = ab.load_sides(path)
    if sides is None:
        raise SystemExit(f"{path}: no rows of both sides")
    b, a = sides
    m = a.merge(b, on=["kernel", "mode"], suffixes=("_a", "_b"))
    return [
        (
            r.kernel,
            r["mode"],
            r.runtime_ms_a,
            r.runtime_ms_b,
            max(r.host_ms_a, r.host_ms_b),
            host_bound(r.runtime_ms_a, r.host_ms_a, r.timer_a) or host_bound(r.runtime_ms_b, r.host_ms_b, r.timer_b),
        )
        for _, r in m.iterrows()
    ]


def main(folder: Path) -> None:
    runs = sorted(folder.glob("aa_*.parquet"), key=lambda p: int(p.stem.split("_")[1]))
    per_config: dict[tuple[str, str], list] = {}
    for run in runs:
        for kernel, mode, a_ms, b_ms, host, bound in ratios(run):
            per_config.setdefault((kernel, mode), []).append((a_ms, b_ms / a_ms, host, bound))
    if runs:  # run.sh OUT 0 runs the planted kernel alone
        print(f"| kernel | mode | runtime ms | host ms/call | host-bound | B/A, runs 1-{len(runs)} | worst |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
    for (kernel, mode), v in per_config.items():
        worst = max(abs(r - 1) for _, r, _, _ in v)
        print(
            f"| {kernel} | {mode} | {v[0][0]:.3f} | {max(h for *_, h, _ in v):.2f} | {sum(b for *_, b in v)} of {len(v)} "
            f"| {' '.join(f'{r:.3f}' for _, r, _, _ in v)} | {100 * worst:.1f}% |"
        )
    plant = folder / "plant.parquet"
    if plant.exists():
        if runs:
            print()
        print("| kernel | mode | A ms | B ms | B/A |\n| --- | --- | --- | --- | --- |")
        for kernel, mode, a_ms, b_ms, _, _ in ratios(plant):
            print(f"| {kernel} | {mode} | {a_ms:.3f} | {b_ms:.3f} | {b_ms / a_ms:.3f} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
