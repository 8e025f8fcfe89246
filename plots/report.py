"""``bench report``: one Markdown page per run with figures, tables, environment and speed-ups."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.problem import KEY_FIELDS
from bench.registry import role_of
from plots.lines import AXES, plot_lines, save

SHAPE = [k for k in KEY_FIELDS if k not in ("kernel", "chunk_size")]


def varying_axis(frame: pd.DataFrame) -> str:
    """The problem axis with the most distinct values (the x axis of the report's figures)."""
    counts = {a: frame[a].nunique() for a in AXES if a in frame}
    return max(counts, key=lambda a: (counts[a], a == "seq_len"))


def speedups(frame: pd.DataFrame, same_chunk: bool = True) -> pd.DataFrame:
    """baseline runtime / our runtime for every shape both measured, at the same chunk size where the baseline has
    one (> 1: ours is faster); ``same_chunk=False``: at whatever chunk each row has (``at_best_chunk``'s rows). Ours
    and the baselines by their registry ``role``."""
    ok = frame[frame.status == "ok"]
    roles = {name: role_of(name) for name in ok.kernel.unique()}
    baselines = [name for name, role in roles.items() if role == "baseline"]
    rows = []
    for ours in sorted(name for name, role in roles.items() if role == "ours"):
        mine = ok[ok.kernel == ours]
        for _, m in mine.iterrows():
            chunk_ok = (ok.chunk_size == m.chunk_size) | (ok.chunk_size == 0) | (not same_chunk)  # chunkless: any
            same = ok[(ok[SHAPE] == m[SHAPE]).all(axis=1) & chunk_ok & ok.kernel.isin(baselines)]
            for _, b in same.iterrows():
                rows.append(
                    {
                        "ours": ours,
                        "baseline": b.kernel,
                        "mode": m["mode"],
                        "seq_len": m.seq_len,
                        "chunk_size": m.chunk_size,
                        "baseline_chunk_size": b.chunk_size,
                        "ours_ms": m.runtime_ms,
                        "baseline_ms": b.runtime_ms,
                        "speedup": b.runtime_ms / m.runtime_ms,
                    }
                )
    return pd.DataFrame(rows)


ENV_KEYS = (
    "gpu_name",
    "driver",
    "cuda",
    "torch",
    "triton",
    "git_commit",
    "host",
    "timestamp",
    "peak_tflops",
    "peak_bandwidth_gbs",
)


def _distinct(values: pd.Series) -> str:
    """The one value of a metadata column, or every distinct value (a file merged from several runs);
    numbers and timestamps as their range."""
    present = values.dropna()
    if present.nunique() > 1 and pd.api.types.is_numeric_dtype(present):
        return f"{present.min():.4g} .. {present.max():.4g}"
    uniq = [str(v) for v in present.unique()]
    if values.name == "timestamp" and len(uniq) > 1:
        return f"{min(uniq)} .. {max(uniq)}"
    return ", ".join(sorted(uniq)) if len(uniq) > 1 else (uniq[0] if uniq else "")


def _md_table(frame: pd.DataFrame, floatfmt: str = ".3g") -> str:
    if frame.empty:
        return "(none)\n"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + " --- |" * len(cols)]
    for _, r in frame.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def runtime_table(ok: pd.DataFrame, x: str) -> pd.DataFrame:
    """Median runtime per kernel (and chunk size, unless it is the x axis) and (mode, x) column; empty for no rows."""
    if ok.empty:
        return pd.DataFrame()
    index = ["kernel"] if x == "chunk_size" else ["kernel", "chunk_size"]
    pivot = ok.pivot_table(index=index, columns=["mode", x], values="runtime_ms").round(3)
    pivot.columns = [f"{m} {x}={v}" for m, v in pivot.columns]
    return pivot.reset_index()


def at_best_chunk(frame: pd.DataFrame) -> pd.DataFrame:
    """Each kernel's fastest ok row over the chunk sizes it was measured at, per problem (every key field but the
    chunk size): the comparison the TFLA paper makes, every kernel at the chunk that suits it. Kernels without a
    chunk size keep their one row."""
    ok = frame[(frame.status == "ok") & frame.runtime_ms.notna()]
    if ok.empty:
        return ok
    fastest = ok.groupby(["kernel", *SHAPE], dropna=False).runtime_ms.idxmin()
    return ok.loc[fastest.values].sort_values(["mode", *SHAPE, "runtime_ms"]).reset_index(drop=True)


def best_chunk_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``at_best_chunk``'s rows as the report shows them: kernel, mode, the problem axes that vary, the chunk, median
    ms, fwbw-or-fw peak GB and TFLOP/s."""
    best = at_best_chunk(frame)
    if best.empty:
        return pd.DataFrame()
    varying = [a for a in AXES if a != "chunk_size" and a in frame and frame[a].nunique() > 1]
    table = best[["kernel", "mode", *varying, "chunk_size", "runtime_ms"]].copy()
    table["peak_gb"] = best.peak_mem_bytes / 1e9
    table["tflops"] = best.tflops
    return table.round({"runtime_ms": 3, "peak_gb": 2, "tflops": 1})


NOISY_SPREAD = 0.05  # a p20..p80 band wider than this share of the median: the median alone misleads


def noisy_rows(frame: pd.DataFrame, spread: float = NOISY_SPREAD) -> pd.DataFrame:
    """The ok rows whose p20..p80 runtime band is wider than ``spread`` times their median (e.g. a bimodal config),
    widest first: kernel, mode, the problem axes, median / p20 / p80 (ms) and the band in % of the median."""
    ok = frame[(frame.status == "ok") & frame.runtime_p20_ms.notna() & frame.runtime_p80_ms.notna()]
    band = (ok.runtime_p80_ms - ok.runtime_p20_ms) / ok.runtime_ms
    wide = ok.assign(band_pct=100 * band)[band > spread]
    columns = ["kernel", "mode", *[a for a in AXES if a in frame and frame[a].nunique() > 1], "chunk_size"]
    columns = list(dict.fromkeys(columns)) + ["runtime_ms", "runtime_p20_ms", "runtime_p80_ms", "band_pct"]
    return wide.sort_values("band_pct", ascending=False)[columns].reset_index(drop=True)


def write_report(frame: pd.DataFrame, source: str, out: str | Path) -> Path:
    """Write ``out`` (Markdown) and its figures beside it; returns the Markdown path."""
    out = Path(out)
    fig_dir = out.parent / f"{out.stem}_figures"
    x = varying_axis(frame)
    figures = []
    for metric in ("runtime_ms", "peak_mem_bytes", "tflops"):
        if frame[metric].notna().any():
            paths = save(plot_lines(frame, x, metric, hue="kernel", col="mode"), fig_dir, f"{metric}_vs_{x}")
            figures.append((metric, paths[0]))
    env = {k: _distinct(frame[k]) for k in ENV_KEYS}
    packages = json.loads(frame.packages.dropna().iloc[0]) if frame.packages.notna().any() else {}
    env["packages"] = ", ".join(f"{k} {v}" for k, v in packages.items())
    ok = frame[frame.status == "ok"]
    failures = frame[frame.status != "ok"][["kernel", "mode", x, "status", "message"]].drop_duplicates(
        ["kernel", "status"]
    )
    sp = speedups(frame)
    lines = [
        f"# Benchmark report: {source}",
        "",
        f"{len(frame)} rows, {len(ok)} ok.",
        "",
        "## Environment",
        "",
        _md_table(pd.DataFrame([{"key": k, "value": v} for k, v in env.items()])),
        "## Figures",
        "",
    ]
    lines += [f"![{m}]({p.relative_to(out.parent)})" for m, p in figures]
    lines += [
        "",
        "## Runtime [ms] (median)",
        "",
        _md_table(runtime_table(ok, x)),
        "## Our kernels against each baseline",
        "",
        "speed-up = baseline runtime / our runtime (> 1: ours is faster), same problem.",
        "",
    ]
    if not sp.empty:
        summary = sp.groupby(["ours", "baseline", "mode"]).speedup.agg(["min", "median", "max"]).reset_index()
        lines.append(_md_table(summary))
    else:
        lines.append("(no shape measured by both)\n")
    if ok.chunk_size[ok.chunk_size > 0].nunique() > 1:
        lines += [
            "## Each kernel at its best chunk size",
            "",
            "Every kernel at the chunk size where it ran fastest (per mode and problem); speed-up = the baseline's",
            "runtime at its best chunk / ours at our best.",
            "",
            _md_table(best_chunk_table(frame)),
        ]
        best_sp = speedups(at_best_chunk(frame), same_chunk=False)
        if not best_sp.empty:
            columns = ["ours", "baseline", "mode", "seq_len", "chunk_size", "baseline_chunk_size", "speedup"]
            lines.append(_md_table(best_sp[columns].sort_values(["ours", "mode", "speedup"])))
    lines += [
        "## Noisy configs",
        "",
        f"Rows whose p20..p80 runtime band is wider than {NOISY_SPREAD:.0%} of their median: compare these by their",
        "band, or measure them again.",
        "",
        _md_table(noisy_rows(frame)),
        "## Configs that did not run",
        "",
        _md_table(failures),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
