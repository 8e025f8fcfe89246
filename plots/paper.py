"""The TFLA paper's published numbers (``plots/paper/*.csv``) as a long frame in this harness's names."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

PAPER_DIR = Path(__file__).parent / "paper"
# the paper's kernel names -> registry names
NAMES = {
    "triton_xl_chunk": "mlstm_kernels.xl_chunk",
    "triton_xl_chunk_siging": "mlstm_kernels.xl_chunk_siging",
    "triton_limit_chunk": "mlstm_kernels.limit_chunk",
    "torch_flash": "sdpa.flash",
    "torch_cudnn": "sdpa.cudnn",
    "flashattn3": "flash_attn.fa3",
    "chunk_gla": "fla.chunk_gla",
    "fused_chunk_gla": "fla.fused_chunk_gla",
    "chunk_simple_gla": "fla.chunk_simple_gla",
    "mamba": "mamba.mamba",
    "mamba2": "mamba.mamba2",
    "mamba2_noconv": "mamba.mamba2_noconv",
}
FIGURES = {"consttoken": "seq_len", "headdim": "head_dim_v"}
SOURCE_LABEL = "paper, H100"  # the legend's words for the overlay: whose numbers, measured on which GPU


def parse_column(name: str) -> dict[str, object]:
    """``chunkwise--triton_xl_chunk__bfloat16__fw__cs-128_nh-16_hdv-256_hdq-128`` -> fields."""
    parts = [p for p in name.split("__") if p]
    kernel = parts[0].split("--")[-1]
    params = dict(re.findall(r"([a-z]+)-([^_]+)", parts[3])) if len(parts) > 3 else {}
    return {
        "kernel": NAMES.get(kernel, kernel),
        "dtype": parts[1],
        "mode": parts[2],
        "chunk_size": int(params.get("cs", 0)),
        "paper_params": "_".join(f"{k}-{v}" for k, v in params.items()),
    }


def load_paper(figure: str, directory: Path = PAPER_DIR) -> pd.DataFrame:
    """Long frame for ``consttoken`` or ``headdim``: kernel, mode, chunk_size, x column, runtime_ms, peak_mem_bytes."""
    if figure not in FIGURES:
        raise ValueError(f"the paper has numbers for {', '.join(FIGURES)}; got {figure!r}")
    xcol = FIGURES[figure]
    frames = []
    for metric, unit in (("runtime", "runtime_ms"), ("memory", "peak_mem_bytes")):
        for mode in ("fw", "fwbw"):
            path = directory / f"tfla_{figure}_{metric}_{mode}.csv"
            wide = pd.read_csv(path)
            key = wide.columns[0]
            for col in wide.columns[1:]:
                meta = parse_column(col)
                values = pd.to_numeric(wide[col], errors="coerce")
                ok = values.notna() & (values > 0)
                frames.append(
                    pd.DataFrame(
                        {**meta, xcol: wide[key][ok].astype(int).values, "metric": unit, "value": values[ok].values}
                    )
                )
    long = pd.concat(frames, ignore_index=True)
    index = ["kernel", "dtype", "mode", "chunk_size", "paper_params", xcol]
    out = long.pivot_table(index=index, columns="metric", values="value", aggfunc="first").reset_index()
    out.columns.name = None
    out["status"] = "ok"
    out["source"] = "paper"
    out["source_label"] = SOURCE_LABEL
    return out


def _shape_of(params: str) -> tuple[int, int, int] | None:
    """``(nh, hdq, hdv)`` of a paper column's parameters, or ``None`` where the file does not record them."""
    found = dict(re.findall(r"(nh|hdq|hdv)-(\d+)", params or ""))
    return (int(found["nh"]), int(found["hdq"]), int(found["hdv"])) if len(found) == 3 else None


def paper_shape(kernel: str, heads: int, head_dim_qk: int, head_dim_v: int) -> tuple[int, int, int]:
    """The ``(nh, hdq, hdv)`` under which the paper lists ``kernel`` run on the mLSTM problem of this shape, with
    this harness's mappings (``specs/shapes.py``): attention heads of 128 at the same width, Mamba's d_inner
    ``2 * width`` and state 16, Mamba2 heads of 64 with state 64; mLSTM and GLA kernels the problem's own heads."""
    from specs import shapes

    width = heads * head_dim_v
    if kernel.startswith(("sdpa.", "flash_attn.")):
        d = shapes.ATTENTION_HEAD_DIM
        return width // d, d, d
    if kernel == "mamba.mamba":
        return 1, shapes.MAMBA_STATE, shapes.MAMBA_EXPAND * width
    if kernel.startswith("mamba.mamba2"):
        d = shapes.MAMBA2_HEAD_DIM
        return shapes.MAMBA_EXPAND * width // d, shapes.MAMBA2_STATE, d
    return heads, head_dim_qk, head_dim_v


def same_shape(reference: pd.DataFrame, frame: pd.DataFrame) -> pd.Series:
    """For each paper row, whether the paper measured it at a shape of ``frame`` (rows whose file records no shape,
    such as the head-dim sweep's, are matched by their x value alone and kept)."""
    shapes = set(zip(frame.heads, frame.head_dim_qk, frame.head_dim_v)) if len(frame) else set()

    def keep(row: pd.Series) -> bool:
        recorded = _shape_of(row.get("paper_params", ""))
        return recorded is None or any(recorded == paper_shape(row.kernel, *s) for s in shapes)

    return reference.apply(keep, axis=1).astype(bool) if len(reference) else pd.Series([], dtype=bool)
