"""Regression check: compare a run against a baseline run row by row (``bench check``).

Rows are matched by kernel and problem. Per metric, the verdict of a pair is
``faster`` / ``same`` / ``slower`` / ``regression``, or ``new`` (only in the current run), ``missing``
(only in the baseline), ``failed`` (not ``ok`` in either run). A runtime regression is a slow-down beyond
the threshold whose noise bands (p20..p80) of the two runs do not overlap; for memory (no noise band)
the threshold alone decides. A config that was ``ok`` and now fails is a regression too. Runs timed by different
timers are not compared; a runtime that is host-bound in either run (``bench.measure.host_bound``) is judged
against the wider ``HOST_BOUND_THRESHOLD`` and says so in its note (its change may be the host's, e.g. launch
overhead, not the kernels').
The gate (``gate_failures``) also fails when a baseline config is missing from the current run (unless a partial
run is allowed) or when no config was measured in both. Exit codes: 0 passed, 1 failed, 2 unusable input.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from bench import store
from bench.measure import host_bound
from bench.problem import KEY_FIELDS

METRICS = ("runtime_ms", "peak_mem_bytes", "tflops")
HIGHER_IS_BETTER = {"tflops"}
NOISE_BANDS = {"runtime_ms": ("runtime_p20_ms", "runtime_p80_ms")}
TIMED = ("runtime_ms", "tflops")  # metrics read off the timer: a host-bound runtime gets a note
VERDICTS = ("faster", "same", "slower", "regression", "new", "missing", "failed")
# From five A/A runs of the ci preset's old shape (S=4096, B=4) on the H200 (results/h200/noise/README.md): rows
# whose runtime was not host-bound moved by at most 3.8 % (cuDNN; the official TFLA and FLA's backward by at most
# 0.2 %), host-bound ones (our kernels there, FLA's forward) by up to 29 %. The default threshold sits well above
# the first, the host-bound one above the second; a 1.2x slow-down exceeds the default twice over.
DEFAULT_THRESHOLD = 0.10
HOST_BOUND_THRESHOLD = 0.50


class CheckInputError(ValueError):
    """Inputs that cannot be compared (missing file, wrong schema, different GPU): exit code 2."""


@dataclass(frozen=True)
class Comparison:
    kernel: str
    config: str
    metric: str
    baseline: float | None
    current: float | None
    ratio: float | None
    verdict: str
    note: str = ""


def parse_threshold(text: str) -> float:
    """``5%`` or ``0.05`` -> 0.05; ``ValueError`` naming ``--threshold`` otherwise."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"--threshold must be a fraction or a percentage like 5%, got {text!r}") from None
    if not 0 <= value < 10:
        raise ValueError(f"--threshold must be between 0% and 1000%, got {text!r}")
    return value


def _config(row: pd.Series) -> str:
    chunk = f" L={row.chunk_size}" if row.chunk_size else ""
    return f"{row['mode']} {row['dtype']} B={row.batch} H={row.heads} S={row.seq_len} Dqk={row.head_dim_qk} Dv={row.head_dim_v}{chunk}"


def _num(value: object) -> float | None:
    if value is None:
        return None
    value = float(value)  # type: ignore[arg-type]
    return None if math.isnan(value) else value


def load_run(path: str | Path, name: str) -> pd.DataFrame:
    """The rows of one side of a comparison (``name``: current run or baseline); ``CheckInputError`` when the file
    is missing, not a results file, or has no rows."""
    try:
        frame = store.load(path)
    except (FileNotFoundError, store.SchemaError) as err:
        raise CheckInputError(str(err)) from err
    if frame.empty:
        raise CheckInputError(f"the {name} {str(path)!r} has no rows: nothing to compare")
    return frame


def load_pair(
    current: str | Path, baseline: str | Path, allow_different_device: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    cur, base = load_run(current, "current run"), load_run(baseline, "baseline")
    gpus_cur, gpus_base = set(cur.gpu_name.dropna()), set(base.gpu_name.dropna())
    if gpus_cur and gpus_base and gpus_cur != gpus_base and not allow_different_device:
        raise CheckInputError(
            f"the runs are from different devices (current: {', '.join(sorted(gpus_cur))}; baseline: "
            f"{', '.join(sorted(gpus_base))}); pass --allow-different-device to compare anyway"
        )
    timers_cur, timers_base = _gpu_timers(cur), _gpu_timers(base)
    if timers_cur and timers_base and timers_cur != timers_base:
        raise CheckInputError(
            f"the runs were timed differently (current: {', '.join(sorted(timers_cur))}; baseline: "
            f"{', '.join(sorted(timers_base))}); measure the current run with the baseline's --timer"
        )
    return cur, base


def _gpu_timers(frame: pd.DataFrame) -> set[str]:
    """The timers of a run's measured GPU rows."""
    return set(frame.timer[(frame.device == "cuda") & (frame.status == "ok")].dropna())


def _host_note(b: pd.Series, c: pd.Series) -> str:
    """A note for runtime metrics where either run's runtime is host-bound (``bench.measure.host_bound``)."""
    bound = [
        f"{name} host-bound ({_num(r.host_ms):.3g} ms/call on the host)"
        for name, r in (("baseline", b), ("current", c))
        if host_bound(_num(r.runtime_ms), _num(r.host_ms), r.timer)
    ]
    return "; ".join(bound)


def _latest(frame: pd.DataFrame) -> dict[tuple[object, ...], pd.Series]:
    """One row per config key: the last one written."""
    return {tuple(r[k] for k in KEY_FIELDS): r for _, r in frame.iterrows()}


def _verdict_pair(metric: str, b: pd.Series, c: pd.Series, threshold: float) -> Comparison:
    kernel, config = str(c.kernel), _config(c)
    if b.status != "ok" and c.status != "ok":
        return Comparison(kernel, config, metric, None, None, None, "failed", f"{c.status}: {c.message}"[:200])
    if c.status != "ok":
        return Comparison(
            kernel,
            config,
            metric,
            _num(b[metric]),
            None,
            None,
            "regression",
            f"was ok, now {c.status}: {c.message}"[:200],
        )
    if b.status != "ok":
        return Comparison(kernel, config, metric, None, _num(c[metric]), None, "new", f"baseline was {b.status}")
    base, cur = _num(b[metric]), _num(c[metric])
    if base is None or cur is None or base == 0:
        return Comparison(kernel, config, metric, base, cur, None, "same", "not measured in one of the runs")
    ratio = cur / base
    host = _host_note(b, c) if metric in TIMED else ""
    if host and threshold < HOST_BOUND_THRESHOLD:
        threshold = HOST_BOUND_THRESHOLD
        host += f"; judged at {threshold:.0%}"
    worse = ratio < 1 - threshold if metric in HIGHER_IS_BETTER else ratio > 1 + threshold
    better = ratio > 1 + threshold if metric in HIGHER_IS_BETTER else ratio < 1 - threshold
    if better:
        return Comparison(kernel, config, metric, base, cur, ratio, "faster", host)
    if not worse:
        return Comparison(kernel, config, metric, base, cur, ratio, "same", host)
    if metric in NOISE_BANDS:
        lo, hi = NOISE_BANDS[metric]
        b_hi, c_lo = _num(b[hi]), _num(c[lo])
        if b_hi is not None and c_lo is not None and c_lo <= b_hi:
            note = "; ".join(n for n in ("noise bands overlap", host) if n)
            return Comparison(kernel, config, metric, base, cur, ratio, "slower", note)
    return Comparison(kernel, config, metric, base, cur, ratio, "regression", host)


def check_metrics(metrics: tuple[str, ...]) -> None:
    """``CheckInputError`` naming ``--metric`` unless ``metrics`` is a non-empty selection of ``METRICS``."""
    if not metrics:
        raise CheckInputError(f"--metric must name at least one of {', '.join(METRICS)}; got none")
    if bad := [m for m in metrics if m not in METRICS]:
        raise CheckInputError(f"--metric must be among {', '.join(METRICS)}; got {', '.join(bad)}")


def compare(
    current: pd.DataFrame,
    baseline: pd.DataFrame,
    threshold: float = DEFAULT_THRESHOLD,
    metrics: tuple[str, ...] = ("runtime_ms", "peak_mem_bytes"),
) -> list[Comparison]:
    """Every (config, metric) pair of the two runs with its verdict."""
    check_metrics(metrics)
    cur, base = _latest(current), _latest(baseline)
    out: list[Comparison] = []
    for key in list(dict.fromkeys([*base, *cur])):
        for metric in metrics:
            if key not in base:
                c = cur[key]
                out.append(Comparison(str(c.kernel), _config(c), metric, None, _num(c[metric]), None, "new"))
            elif key not in cur:
                b = base[key]
                out.append(Comparison(str(b.kernel), _config(b), metric, _num(b[metric]), None, None, "missing"))
            else:
                out.append(_verdict_pair(metric, base[key], cur[key], threshold))
    return out


def has_regression(results: list[Comparison]) -> bool:
    return any(r.verdict == "regression" for r in results)


COMPARED = ("faster", "same", "slower", "regression")


def gate_failures(results: list[Comparison], allow_missing: bool = False) -> list[str]:
    """Why the gate fails (empty: it passes): a regression; a baseline config the current run lacks (unless
    ``allow_missing``, for a partial run); or no pair measured in both runs, so that nothing was checked."""
    reasons = []
    if n := sum(r.verdict == "regression" for r in results):
        reasons.append(f"{n} regression{'s' if n > 1 else ''}")
    missing = {(r.kernel, r.config) for r in results if r.verdict == "missing"}
    if missing and not allow_missing:
        reasons.append(
            f"{len(missing)} baseline config{'s' if len(missing) > 1 else ''} missing from the current run "
            "(--allow-missing accepts a partial run)"
        )
    if not any(r.verdict in COMPARED for r in results):
        reasons.append("no config was measured in both runs: nothing was compared")
    return reasons


def _fmt(x: float | None, digits: str = ".4g") -> str:
    return "-" if x is None else format(x, digits)


def to_markdown(results: list[Comparison]) -> str:
    lines = [
        "| kernel | config | metric | baseline | current | ratio | verdict | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        verdict = f"**{r.verdict}**" if r.verdict == "regression" else r.verdict
        lines.append(
            f"| {r.kernel} | {r.config} | {r.metric} | {_fmt(r.baseline)} | {_fmt(r.current)} | "
            f"{_fmt(r.ratio, '.3f')} | {verdict} | {r.note} |"
        )
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    lines.append("")
    lines.append(", ".join(f"{n} {v}" for v, n in counts.items() if n))
    return "\n".join(lines)


def to_json(results: list[Comparison], allow_missing: bool = False, failures: list[str] | None = None) -> str:
    failures = gate_failures(results, allow_missing) if failures is None else failures
    return json.dumps(
        {
            "passed": not failures,
            "failures": failures,
            "regression": has_regression(results),
            "comparisons": [asdict(r) for r in results],
        },
        indent=1,
    )


def defining_paths(kernel: str) -> list[Path]:
    """The files and folders (relative to the repository) that define ``kernel``: the module of its callable and
    its spec's ``sources`` (for ours, the ``kernels/`` package it runs)."""
    import inspect
    import sys

    from bench.envinfo import ROOT
    from bench.registry import get

    spec = get(kernel)
    module = sys.modules.get(spec.fn.__module__)
    source = inspect.getsourcefile(module) if module is not None else None
    if source is None:
        return []
    try:
        rel = Path(source).resolve().relative_to(ROOT)
    except ValueError:
        return []  # defined outside the repository (a plugin, an installed package): no history to read
    return [rel, *(Path(p) for p in spec.sources)]


def staleness(current: pd.DataFrame, baseline: pd.DataFrame, repo: Path | None = None) -> list[str]:
    """Why a committed baseline may no longer describe the code: a file that defines a compared kernel changed since
    the baseline's ``git_commit`` (read with ``git diff`` against this tree), or the baseline was measured with
    another Triton or torch than the run. Empty: nothing found."""
    from bench.envinfo import ROOT, git

    repo = repo or ROOT
    notes = []
    for column in ("triton", "torch"):
        before, now = set(baseline[column].dropna()), set(current[column].dropna())
        if before and now and before != now:
            notes.append(
                f"the baseline was measured with {column} {', '.join(sorted(before))}, the run with {', '.join(sorted(now))}"
            )
    compared = baseline[(baseline.status == "ok") & baseline.kernel.isin(set(current.kernel))]
    commits = compared.git_commit.fillna("").str.removesuffix("-dirty")
    pairs = sorted({(c, k) for c, k in zip(commits, compared.kernel) if c})  # (commit, kernel) measured there
    unknown: set[str] = set()
    for commit, kernel in pairs:
        if commit in unknown:
            continue
        if git("cat-file", "-e", f"{commit}^{{commit}}", repo=repo).returncode != 0:
            unknown.add(commit)
            notes.append(f"the baseline's commit {commit[:12]} is not in this repository: its staleness is unknown")
            continue
        try:
            paths = defining_paths(kernel)
        except ValueError:
            continue  # not registered here
        if not paths:
            continue
        changed = git("diff", "--name-only", commit, "--", *map(str, paths), repo=repo).stdout.split()
        if changed:
            notes.append(
                f"{kernel}: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''} changed since the "
                f"baseline's commit {commit[:12]}"
            )
    return notes
