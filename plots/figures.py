"""The TFLA paper's benchmark figures as recipes: ``consttoken``, ``headdim``, ``chunksize``, ``roofline``.

Each recipe has a preset of the same name in ``bench/presets/`` and turns a results frame (plus an
optional reference: another run, or the paper's numbers) into PNG and SVG files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from plots.lines import line_styles, plot_lines, save
from plots.paper import FIGURES as PAPER_FIGURES
from plots.paper import load_paper, same_shape


def _label_chunks(frame: pd.DataFrame) -> pd.DataFrame:
    """``kernel`` plus ``L=chunk`` where a kernel appears with several chunk sizes."""
    frame = frame.copy()
    multi = frame.groupby("kernel").chunk_size.transform("nunique") > 1
    frame["series"] = frame.kernel.where(~multi, frame.kernel + " L=" + frame.chunk_size.astype(str))
    return frame


def _match_reference(reference: pd.DataFrame | None, frame: pd.DataFrame) -> pd.DataFrame | None:
    """Reference rows of the kernels (and chunk sizes, where they have one) that the run has."""
    if reference is None:
        return None
    ref = reference[reference.kernel.isin(frame[frame.status == "ok"].kernel.unique())]
    if "paper_params" in ref:  # the paper's numbers: only the curves measured at the figure's shape
        ref = ref[same_shape(ref, frame)]
    chunks = set(frame.chunk_size.unique())
    ref = ref[
        (ref.chunk_size == 0) | ref.chunk_size.isin(chunks) | ~ref.kernel.isin(frame[frame.chunk_size > 0].kernel)
    ]
    return _label_chunks(ref) if len(ref) else None


def _runtime_against(x: str, name: str) -> Callable[[pd.DataFrame, pd.DataFrame | None, Path], list[Path]]:
    """A recipe drawing runtime against ``x``, one line per kernel (and chunk size where it varies)."""

    def draw(frame: pd.DataFrame, reference: pd.DataFrame | None, out: Path) -> list[Path]:
        fig = plot_lines(
            _label_chunks(frame),
            x,
            "runtime_ms",
            hue="series",
            col="mode",
            reference=_match_reference(reference, frame),
        )
        return save(fig, out, name)

    return draw


consttoken = _runtime_against("seq_len", "consttoken_runtime")
headdim = _runtime_against("head_dim_v", "headdim_runtime")


def chunksize(frame: pd.DataFrame, reference: pd.DataFrame | None, out: Path) -> list[Path]:
    paths = []
    for metric, name in (("runtime_ms", "chunksize_runtime"), ("peak_mem_bytes", "chunksize_memory")):
        fig = plot_lines(frame, "chunk_size", metric, hue="kernel", col="mode", reference=reference)
        paths += save(fig, out, name)
    return paths


def roofline_figure(frame: pd.DataFrame) -> plt.Figure:
    """Achieved TFLOP/s against arithmetic intensity (FLOPs / minimal bytes) under the measured roofs; one colour per
    kernel (``line_styles``: twenty before one repeats), one marker per mode."""
    ok = frame[(frame.status == "ok") & frame.tflops.notna() & (frame.bytes > 0)].copy()
    if ok.empty:
        raise ValueError("roofline needs ok rows with tflops and bytes")
    ok["intensity"] = ok.flops / ok.bytes
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = {kernel: style["color"] for kernel, style in line_styles(ok.kernel.unique()).items()}
    markers = {"fw": "o", "bw": "s", "fwbw": "^"}
    for (kernel, mode), g in ok.groupby(["kernel", "mode"]):
        ax.scatter(g.intensity, g.tflops, label=f"{kernel} {mode}", s=22, color=colors[kernel], marker=markers[mode])
    peak = ok.peak_tflops.dropna()
    bw = ok.peak_bandwidth_gbs.dropna()
    if len(peak) and len(bw):
        x = np.logspace(np.log10(ok.intensity.min() / 4), np.log10(ok.intensity.max() * 4), 200)
        roof = np.minimum(peak.max(), x * bw.max() / 1e3)
        ax.plot(
            x, roof, color="k", lw=1.5, label=f"roof: {peak.max():.0f} TFLOP/s, {bw.max() / 1e3:.2f} TB/s (measured)"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity [FLOP / byte]")
    ax.set_ylabel("achieved TFLOP/s")
    ax.grid(True, which="both", alpha=0.3)
    gpu = ", ".join(sorted(ok.gpu_name.dropna().unique()))
    ax.set_title(f"roofline on {gpu}", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def roofline(frame: pd.DataFrame, reference: pd.DataFrame | None, out: Path) -> list[Path]:
    return save(roofline_figure(frame), out, "roofline")


@dataclass(frozen=True)
class Recipe:
    name: str
    preset: str
    draw: Callable[[pd.DataFrame, pd.DataFrame | None, Path], list[Path]]
    description: str


RECIPES = {
    r.name: r
    for r in (
        Recipe("consttoken", "consttoken", consttoken, "runtime against seq_len at 65536 tokens, width 4096"),
        Recipe("headdim", "headdim", headdim, "runtime against head dim at seq_len 8192, width 4096"),
        Recipe("chunksize", "chunksize", chunksize, "runtime and peak memory against chunk size (TFLA's trade-off)"),
        Recipe("roofline", "gpu", roofline, "achieved TFLOP/s against arithmetic intensity with the measured roofs"),
    )
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown figure {name!r}; allowed: {', '.join(RECIPES)}")
    return RECIPES[name]


def load_reference(spec: str | None, figure: str) -> pd.DataFrame | None:
    """``paper`` (the paper's numbers for this figure), a results Parquet, or a paper-style CSV."""
    if spec is None:
        return None
    if spec == "paper":
        if figure not in PAPER_FIGURES:
            raise ValueError(f"the paper has numbers for {', '.join(PAPER_FIGURES)} only, not {figure!r}")
        return load_paper(figure)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--reference must be 'paper', a results Parquet or a paper CSV; {spec!r} does not exist")
    if path.suffix == ".csv":
        from plots.paper import parse_column

        wide = pd.read_csv(path)
        key = wide.columns[0]
        xcol = {"sequence_length": "seq_len"}.get(key, key)
        rows = [
            {**parse_column(c), xcol: int(x), "runtime_ms": float(v), "status": "ok"}
            for c in wide.columns[1:]
            for x, v in zip(wide[key], wide[c])
            if pd.notna(v) and float(v) > 0
        ]
        return pd.DataFrame(rows)
    from bench.store import load

    frame = load(path)
    gpus = ", ".join(sorted(frame.gpu_name.dropna().unique()))
    return frame.assign(source_label=f"{path.name}, {gpus}" if gpus else path.name)


def render(name: str, frame: pd.DataFrame, out: str | Path, reference: str | None = None) -> list[Path]:
    """Draw figure ``name`` from ``frame`` into ``out``."""
    recipe = get_recipe(name)
    return recipe.draw(frame, load_reference(reference, name), Path(out))
