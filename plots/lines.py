"""Line plots of a results frame: one line per hue value, failed configs marked, PNG and SVG out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

FAILED = ("oom", "error", "crash", "timeout")
LABELS = {
    "seq_len": "sequence length",
    "runtime_ms": "runtime [ms]",
    "peak_mem_bytes": "peak memory [GB]",
    "chunk_size": "chunk size",
    "head_dim_v": "head dim (v)",
    "tflops": "TFLOP/s",
    "batch": "batch",
}
AXES = ("seq_len", "chunk_size", "head_dim_qk", "head_dim_v", "batch", "heads", "tokens")
METRICS = ("runtime_ms", "runtime_p20_ms", "runtime_p80_ms", "peak_mem_bytes", "tflops", "pct_peak", "error", "flops")


def check_columns(x: str, y: str, hue: str, col: str | None) -> None:
    """``ValueError`` naming the option and the allowed values."""
    if x not in AXES:
        raise ValueError(f"--x must be one of {', '.join(AXES)}; got {x!r}")
    if y not in METRICS:
        raise ValueError(f"--y must be one of {', '.join(METRICS)}; got {y!r}")
    allowed = ("kernel", "series", "mode", "dtype", "family", *AXES)
    for name, value in (("--hue", hue), ("--col", col)):
        if value is not None and value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


TITLE_FIELDS = ("dtype", "batch", "heads", "seq_len", "head_dim_qk", "head_dim_v", "chunk_size", "tokens", "mode")


def fixed_parameters(frame: pd.DataFrame, varying: Sequence[str]) -> str:
    """``name=value`` for every problem field that has one value in ``frame`` and is not plotted, and the timer
    of the runtimes (``bench.measure.TIMERS``) where there is one."""
    parts = []
    for name in (*TITLE_FIELDS, "timer"):
        if name in frame and name not in varying and frame[name].nunique() == 1:
            parts.append(f"{name}={frame[name].iloc[0]}")
    return ", ".join(parts)


def _scale(y: str) -> float:
    """Bytes are plotted in GB."""
    return 1e9 if y == "peak_mem_bytes" else 1.0


MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def line_styles(keys: Sequence[object]) -> dict[object, dict[str, object]]:
    """One colour and marker per key (``tab20`` colours, markers cycling), the same in every panel."""
    palette = plt.get_cmap("tab20").colors
    ordered = sorted(set(keys), key=str)
    return {
        key: {"color": palette[(2 * n) % 20 + (n // 10) % 2], "marker": MARKERS[n % len(MARKERS)]}
        for n, key in enumerate(ordered)
    }


def draw(
    ax: plt.Axes,
    frame: pd.DataFrame,
    x: str,
    y: str,
    hue: str,
    reference: pd.DataFrame | None = None,
    styles: dict[object, dict[str, object]] | None = None,
) -> None:
    """Lines of ``y`` against ``x`` per ``hue``; OOM and other failures as crosses at the top of the axis."""
    scale = _scale(y)
    ok = frame[frame.status == "ok"].dropna(subset=[y])
    styles = styles or line_styles(frame[hue].unique())
    colors = {key: style["color"] for key, style in styles.items()}
    for key, group in ok.groupby(hue, sort=True):
        g = group.groupby(x)[y].median().sort_index() / scale
        ax.plot(g.index, g.values, ms=3.5, label=str(key), **styles[key])
    if reference is not None and y in reference:
        for key, group in reference.dropna(subset=[y]).groupby(hue, sort=True):
            g = group.groupby(x)[y].median().sort_index() / scale
            source = group.source_label.iloc[0] if "source_label" in group else "reference"
            ax.plot(g.index, g.values, ls="--", lw=1, color=colors.get(key), label=f"{key} ({source})")
    failed = frame[frame.status.isin(FAILED)]
    if len(ok) and len(failed):
        top = ok[y].max() / scale * 1.5
        for (key, status), group in failed.groupby([hue, "status"]):
            ax.scatter(
                group[x],
                [top] * len(group),
                marker="x",
                s=40,
                color=colors.get(key, "red"),
                label=f"{key}: {status}",
                zorder=5,
            )
    if x in AXES and len(frame) and frame[x].min() > 0:
        ax.set_xscale("log", base=2)
    vals = ok[y] / scale
    if reference is not None and y in reference:
        vals = pd.concat([vals, reference[y].dropna() / scale])
    if len(vals) and vals.min() > 0 and vals.max() / vals.min() > 20:
        ax.set_yscale("log")
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.grid(True, which="both", alpha=0.3)


def plot_lines(
    frame: pd.DataFrame,
    x: str,
    y: str,
    hue: str = "kernel",
    col: str | None = "mode",
    reference: pd.DataFrame | None = None,
    title: str | None = None,
) -> Figure:
    """One panel per ``col`` value (all in one panel without ``col``)."""
    check_columns(x, y, hue, col)
    if frame.empty:
        raise ValueError("no rows to plot")
    panels = sorted(frame[col].unique()) if col else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    styles = line_styles(frame[hue].unique())
    for ax, value in zip(axes[0], panels):
        sub = frame if value is None else frame[frame[col] == value]
        ref = None
        if reference is not None:
            ref = reference if value is None or col not in reference else reference[reference[col] == value]
        draw(ax, sub, x, y, hue, ref, styles)
        if value is not None:
            ax.set_title(f"{col} = {value}")
    seen: dict[str, object] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen.keys()), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    gpu = ", ".join(sorted(frame.gpu_name.dropna().unique())) if "gpu_name" in frame else ""
    fixed = fixed_parameters(frame, [x, hue, col or ""])
    fig.suptitle(title or f"{LABELS.get(y, y)} on {gpu}\n{fixed}", fontsize=10)
    fig.tight_layout()
    return fig


def save(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.svg`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for path in paths:
        fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return paths
