"""Figures from small Parquet fixtures (Agg backend): files written, plotted data checked; the paper CSVs."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from typer.testing import CliRunner

from bench import store
from cli import app
from plots.figures import RECIPES, _label_chunks, render, roofline_figure
from plots.lines import plot_lines
from plots.paper import load_paper, parse_column
from plots.report import at_best_chunk, best_chunk_table, noisy_rows, speedups, write_report
from tests.rows import result_row

matplotlib.use("Agg")
runner = CliRunner()


def _row(
    kernel: str,
    mode: str,
    seq_len: int,
    ms: float | None,
    chunk: int = 0,
    status: str = "ok",
    head_dim_v: int = 256,
    mem: float = 1e9,
) -> dict[str, object]:
    shape = dict(
        kernel=kernel,
        mode=mode,
        batch=65536 // seq_len,
        heads=4096 // head_dim_v,
        seq_len=seq_len,
        head_dim_qk=head_dim_v // 2,
        head_dim_v=head_dim_v,
        chunk_size=chunk,
        tokens=65536,
        flops=1e12,
        bytes=1e9,
        peak_tflops=780.0,
        peak_bandwidth_gbs=3000.0,
        torch="2.11",
        triton="3.6.0",
        git_commit="abc",
        host="h",
        timestamp="t",
    )
    if status != "ok":
        return result_row(**shape, status=status, message="CUDA OOM")
    return result_row(
        **shape,
        runtime_ms=ms,
        runtime_p20_ms=ms,
        runtime_p80_ms=ms,
        timer="cudagraph",
        peak_mem_bytes=int(mem),
        tflops=1e12 / (ms * 1e-3) / 1e12,
    )


@pytest.fixture()
def consttoken_file(tmp_path: Path) -> Path:
    rows = []
    for mode, k in (("fw", 1.0), ("fwbw", 3.0)):
        for s in (1024, 2048, 4096):
            rows += [
                _row("tfla.mlstm_sig", mode, s, 2.0 * k, chunk=128),
                _row("mlstm_kernels.xl_chunk_siging", mode, s, 2.5 * k, chunk=128),
                _row("sdpa.cudnn", mode, s, s / 1024 * k),
            ]
        rows.append(_row("sdpa.math", mode, 4096, None, status="oom"))
        rows.append(_row("sdpa.math", mode, 1024, 5.0 * k))
    path = tmp_path / "consttoken.parquet"
    store.append(path, rows)
    return path


def test_lines_plot_one_line_per_kernel_and_failures_marked(consttoken_file: Path) -> None:
    frame = store.load(consttoken_file)
    fig = plot_lines(frame, "seq_len", "runtime_ms", hue="kernel", col="mode")
    ax_fw = fig.axes[0]
    lines = {line.get_label(): line for line in ax_fw.get_lines()}
    assert set(lines) == {"tfla.mlstm_sig", "mlstm_kernels.xl_chunk_siging", "sdpa.cudnn", "sdpa.math"}
    assert list(lines["sdpa.cudnn"].get_ydata()) == [1.0, 2.0, 4.0]
    assert list(lines["tfla.mlstm_sig"].get_xdata()) == [1024, 2048, 4096]
    crosses = [c for c in ax_fw.collections if c.get_label() == "sdpa.math: oom"]
    assert crosses and crosses[0].get_offsets()[0][0] == 4096  # the OOM sits at its x, on top
    assert crosses[0].get_offsets()[0][1] > 4.0
    title = fig._suptitle.get_text()
    assert "H100" in title and "tokens=65536" in title and "timer=cudagraph" in title  # the one timer of the rows


def test_every_figure_renders(consttoken_file: Path, tmp_path: Path) -> None:
    frame = store.load(consttoken_file)
    chunk_rows = [
        _row(k, m, 8192, 1.0 + c / 1024, chunk=c, mem=4e9 / c * 64)
        for k in ("tfla.mlstm_sig", "tfla.mlstm_exp")
        for m in ("fw", "fwbw")
        for c in (64, 128, 256, 512)
    ]
    head_rows = [
        _row("tfla.mlstm_sig", m, 8192, 1.0 + d / 256, chunk=128, head_dim_v=d)
        for m in ("fw", "fwbw")
        for d in (64, 128, 256, 512)
    ]
    frames = {
        "consttoken": frame,
        "roofline": frame,
        "chunksize": pd.DataFrame(chunk_rows),
        "headdim": pd.DataFrame(head_rows),
    }
    for name in RECIPES:
        paths = render(name, frames[name], tmp_path / "figs")
        assert paths and all(p.exists() and p.stat().st_size > 1000 for p in paths)
        assert {p.suffix for p in paths} == {".png", ".svg"}


def test_paper_csvs_parse_into_named_kernels() -> None:
    meta = parse_column("chunkwise--triton_xl_chunk_siging__bfloat16__fwbw__cs-128_nh-16_hdv-256_hdq-128_n-False")
    assert meta["kernel"] == "mlstm_kernels.xl_chunk_siging" and meta["mode"] == "fwbw" and meta["chunk_size"] == 128
    assert parse_column("mamba____bfloat16__fw__nh-1_hdv-8192_hdq-16")["kernel"] == "mamba.mamba"
    paper = load_paper("consttoken")
    row = paper[(paper.kernel == "sdpa.cudnn") & (paper["mode"] == "fw") & (paper.seq_len == 512)].iloc[0]
    assert row.runtime_ms == pytest.approx(2.001983880996704)
    assert row.peak_mem_bytes == pytest.approx(2403485184)
    assert set(load_paper("headdim").head_dim_v) >= {32, 64, 128, 256}


def test_paper_reference_overlays_dashed_lines(consttoken_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["figures", "consttoken", "--from", str(consttoken_file), "--reference", "paper", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "consttoken_runtime.png").exists()
    from plots.figures import _match_reference

    ref = _match_reference(load_paper("consttoken"), store.load(consttoken_file))
    assert set(ref.kernel) == {"mlstm_kernels.xl_chunk_siging", "sdpa.cudnn"}
    assert set(ref.chunk_size) <= {0, 128}


def test_report_has_environment_figures_and_speedups(consttoken_file: Path, tmp_path: Path) -> None:
    frame = store.load(consttoken_file)
    sp = speedups(frame)
    row = sp[(sp.baseline == "mlstm_kernels.xl_chunk_siging") & (sp["mode"] == "fw")].iloc[0]
    assert row.speedup == pytest.approx(1.25)
    path = write_report(frame, "fixture", tmp_path / "report.md")
    text = path.read_text()
    assert "NVIDIA H100" in text and "![runtime_ms]" in text and "mlstm_kernels.xl_chunk_siging" in text
    assert "oom" in text
    # A file merged from two runs names both commits and the range of the measured peaks.
    frame.loc[frame.kernel == "sdpa.cudnn", ["git_commit", "peak_tflops"]] = ["abc1234", 700.0]
    frame.loc[frame.kernel != "sdpa.cudnn", ["git_commit", "peak_tflops"]] = ["def5678", 780.0]
    text = write_report(frame, "fixture", tmp_path / "merged.md").read_text()
    assert "| git_commit | abc1234, def5678 |" in text and "| peak_tflops | 700 .. 780 |" in text


def test_line_styles_are_the_same_in_every_panel(consttoken_file: Path) -> None:
    """A kernel with no fwbw rows must not shift the colours of the others between the panels."""
    frame = store.load(consttoken_file)
    frame = frame[~((frame.kernel == "sdpa.cudnn") & (frame["mode"] == "fwbw"))]
    fig = plot_lines(frame, "seq_len", "runtime_ms", hue="kernel", col="mode")
    fw, fwbw = ({line.get_label(): line.get_color() for line in ax.get_lines()} for ax in fig.axes[:2])
    assert "sdpa.cudnn" in fw and "sdpa.cudnn" not in fwbw
    assert all(fwbw[k] == fw[k] for k in fwbw)
    assert len(set(fw.values())) == len(fw)


def test_cli_plot_and_bad_options(consttoken_file: Path, tmp_path: Path) -> None:
    ok = runner.invoke(
        app, ["plot", str(consttoken_file), "--x", "seq_len", "--y", "runtime_ms", "--out", str(tmp_path)]
    )
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "consttoken_runtime_ms_vs_seq_len.svg").exists()
    bad = runner.invoke(app, ["plot", str(consttoken_file), "--x", "speed"])
    assert bad.exit_code == 2 and "--x must be one of" in bad.output
    missing = runner.invoke(app, ["plot", str(tmp_path / "nope.parquet")])
    assert missing.exit_code == 2 and "does not exist" in " ".join(missing.output.split())
    fig = runner.invoke(app, ["figures", "nope", "--from", str(consttoken_file)])
    assert fig.exit_code == 2 and "unknown figure 'nope'; allowed: consttoken" in " ".join(fig.output.split())
    both = runner.invoke(app, ["figures", "consttoken"])
    assert both.exit_code == 2 and "exactly one of --run or --from" in both.output


def test_the_paper_overlay_draws_only_curves_of_the_figures_shape(consttoken_file: Path) -> None:
    """The paper measured mLSTM and GLA kernels at NH 16, DHQK 128, DHHV 256: a figure at the 7B shape (NH 8,
    DHQK 256, DHHV 512, the same width) overlays only the attention and Mamba curves, whose mapped shapes match;
    the legend names the paper's H100."""
    from plots.figures import _match_reference
    from plots.paper import paper_shape

    paper = load_paper("consttoken")
    frame = store.load(consttoken_file)
    b7 = frame.assign(heads=8, head_dim_qk=256, head_dim_v=512)
    at_7b = _match_reference(paper, b7)
    assert set(at_7b.kernel) == {"sdpa.cudnn"}  # of the run's kernels, only attention has the 7B shape's curve
    at_paper = _match_reference(paper, frame)
    assert set(at_paper.kernel) == {"sdpa.cudnn", "mlstm_kernels.xl_chunk_siging"}
    assert set(at_paper.source_label) == {"paper, H100"}
    assert paper_shape("mamba.mamba", 16, 128, 256) == (1, 16, 8192)  # the paper's d_inner 8192 curve, not 4096
    assert paper_shape("mamba.mamba2", 8, 256, 512) == (128, 64, 64)
    fig = plot_lines(_label_chunks(frame), "seq_len", "runtime_ms", hue="series", col="mode", reference=at_paper)
    labels = {t.get_text() for ax in fig.axes for t in (ax.get_legend().get_texts() if ax.get_legend() else [])}
    labels |= {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    assert any(label.endswith("(paper, H100)") for label in labels), labels


def test_roofline_gives_each_of_a_full_stacks_kernels_its_own_colour() -> None:
    # a full-stack run has 11+ kernels: the default cycle's ten colours gave two kernels one colour
    kernels = [f"family{n}.kernel{n}" for n in range(13)]
    frame = pd.DataFrame([_row(k, m, 8192, 1.0 + n / 10) for n, k in enumerate(kernels) for m in ("fw", "fwbw")])
    fig = roofline_figure(frame)
    dots = [c for c in fig.axes[0].collections if c.get_label().endswith(" fw")]
    colours = {tuple(c.get_facecolor()[0]) for c in dots}
    assert len(dots) == 13 and len(colours) == 13


def test_report_lists_the_configs_whose_noise_band_is_wide(tmp_path: Path) -> None:
    # a bimodal config (v36's chunk-512 row: p20 5.59, p80 6.47 ms) is listed with its band; a steady one is not
    quiet = {**_row("tfla.mlstm_sig", "fwbw", 8192, 5.0, chunk=256), "runtime_p20_ms": 4.95, "runtime_p80_ms": 5.05}
    wide = {**_row("tfla.mlstm_sig", "fwbw", 8192, 6.04, chunk=512), "runtime_p20_ms": 5.59, "runtime_p80_ms": 6.47}
    failed = _row("tfla.mlstm_sig", "fwbw", 8192, None, chunk=1024, status="oom")
    frame = pd.DataFrame([quiet, wide, failed])
    noisy = noisy_rows(frame)
    assert noisy.chunk_size.tolist() == [512]
    assert noisy.band_pct.iloc[0] == pytest.approx(100 * (6.47 - 5.59) / 6.04)
    assert noisy_rows(frame, spread=0.01).chunk_size.tolist() == [512, 256]  # widest first
    text = write_report(frame, "fixture", tmp_path / "noise.md").read_text()
    noise_section = text.split("## Noisy configs")[1].split("## Configs that did not run")[0]
    assert "| 512 |" in noise_section and "| 256 |" not in noise_section


def test_each_kernel_is_compared_at_its_own_best_chunk(tmp_path: Path) -> None:
    # ours is fastest at 256, the official kernel at 128 (the v36 7B picture); a chunkless baseline has one row
    times = {("tfla.mlstm_sig", 128): 1.7, ("tfla.mlstm_sig", 256): 1.4, ("tfla.mlstm_sig", 1024): 2.0}
    times |= {("mlstm_kernels.xl_chunk_siging", 128): 4.2, ("mlstm_kernels.xl_chunk_siging", 256): 4.9}
    rows = [_row(k, "fw", 8192, ms, chunk=c) for (k, c), ms in times.items()]
    rows += [_row("sdpa.cudnn", "fw", 8192, 7.0), _row("tfla.mlstm_sig", "fw", 8192, None, chunk=64, status="oom")]
    frame = pd.DataFrame(rows)
    best = at_best_chunk(frame)
    assert dict(zip(best.kernel, best.chunk_size, strict=True)) == {
        "tfla.mlstm_sig": 256,
        "mlstm_kernels.xl_chunk_siging": 128,
        "sdpa.cudnn": 0,
    }
    sp = speedups(best, same_chunk=False).set_index("baseline")
    assert sp.speedup.to_dict() == pytest.approx({"mlstm_kernels.xl_chunk_siging": 4.2 / 1.4, "sdpa.cudnn": 7.0 / 1.4})
    assert sp.baseline_chunk_size["mlstm_kernels.xl_chunk_siging"] == 128
    assert best_chunk_table(frame).runtime_ms.tolist() == [1.4, 4.2, 7.0]
    text = write_report(frame, "fixture", tmp_path / "chunks.md").read_text()
    section = text.split("## Each kernel at its best chunk size")[1].split("## Noisy configs")[0]
    assert "| tfla.mlstm_sig | mlstm_kernels.xl_chunk_siging | fw | 8192 | 256 | 128 | 3 |" in section
    one_chunk = write_report(frame[frame.chunk_size != 256], "fixture", tmp_path / "one.md").read_text()
    assert "## Each kernel at its best chunk size" in one_chunk  # 128 and 1024 still two chunks
    only_128 = frame[frame.chunk_size.isin([0, 128])]
    assert "best chunk size" not in write_report(only_128, "fixture", tmp_path / "c128.md").read_text()
