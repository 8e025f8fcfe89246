"""Same-machine A/B of two trees (``bench check --against REF``): both sides measured in one job, interleaved.

Side A is ``REF`` checked out in a temporary git worktree, side B this tree. Each side has its own worker process
that imports that side's registry and kernels (``bench.worker._serve_tree``). Per config the rounds alternate the
order (A B, then B A, ...), so clock, thermal and background drift reach both sides alike. Every round of every
side is one row (columns ``side``, ``round``, ``git_commit``; the timestamp of the row's own measurement), so the
raw numbers and their order stay readable. ``combine`` folds the rounds of each side into one row per config for
``bench.check.compare``: the median of the rounds' medians, p20s and p80s.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console

from bench import envinfo, store
from bench.measure import check_timer
from bench.problem import KEY_FIELDS, Problem
from bench.registry import KernelSpec
from bench.runner import check_timeout, interruptible, make_row, precheck, with_peaks
from bench.worker import KernelWorker, Task

SIDES = ("A", "B")  # A: the ref (the baseline of the comparison), B: this tree


@dataclass(frozen=True)
class Side:
    """One tree of an A/B: its name (``SIDES``), where it is checked out, and its commit."""

    name: str
    root: Path
    commit: str


def resolve_ref(ref: str, repo: Path = envinfo.ROOT) -> str:
    """The commit of git ref ``ref`` in ``repo``; ``ValueError`` naming ``--against`` when there is none."""
    done = envinfo.git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", repo=repo)
    if done.returncode != 0 or not done.stdout.strip():
        raise ValueError(f"--against: {ref!r} is not a commit of the git repository {str(repo)!r}")
    return done.stdout.strip()


@contextlib.contextmanager
def worktree(commit: str, repo: Path = envinfo.ROOT) -> Iterator[Path]:
    """``commit`` checked out in a temporary, detached git worktree of ``repo``; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        path = Path(tmp) / "tree"
        done = envinfo.git("worktree", "add", "--detach", str(path), commit, repo=repo)
        if done.returncode != 0:
            raise ValueError(f"--against: cannot check out {commit[:12]}: {done.stderr.strip()}")
        try:
            yield path
        finally:
            envinfo.git("worktree", "remove", "--force", str(path), repo=repo)
            envinfo.git("worktree", "prune", repo=repo)


def _row(spec: KernelSpec, problem: Problem, m: object, meta: envinfo.RunMetadata, side: Side, rnd: int) -> dict:
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
    side_meta = envinfo.RunMetadata(**{**meta.as_dict(), "git_commit": side.commit, "timestamp": stamp})
    return make_row(spec, problem, m, side_meta) | {"side": side.name, "round": rnd}  # type: ignore[arg-type]


def ab_sweep(
    configs: list[tuple[KernelSpec, Problem]],
    sides: tuple[Side, Side],
    out: str | Path,
    *,
    rounds: int = 2,
    timeout_s: float = 300.0,
    timer: str = "events",
    console: Console | None = None,
) -> list[dict[str, object]]:
    """Measure every config ``rounds`` times on each side, the order alternating per round; each row appended to
    ``out`` as it is measured. A config decided before launch (unavailable / unsupported) gets one row per side.
    SIGINT, SIGTERM and SIGHUP stop the workers and raise ``SweepInterrupted`` once the rows so far are in ``out``."""
    if rounds < 1:
        raise ValueError(f"--rounds must be a positive integer; got {rounds!r}")
    check_timer(timer)
    check_timeout(timeout_s)
    console = console or Console(stderr=True)
    out = Path(out)
    store.check_writable(out)
    devices = {p.device for _, p in configs}
    meta = envinfo.collect(next(iter(devices)) if devices else "cpu")
    peaks: dict[str, tuple[float, float]] = {}
    workers: dict[tuple[str, str], KernelWorker] = {}
    rows: list[dict[str, object]] = []
    with interruptible(out, rows) as interrupts:
        try:
            for n, (spec, problem) in enumerate(configs, 1):
                console.print(f"[dim]A/B {n}/{len(configs)}: {spec.name} {problem}[/dim]")
                decided = precheck(spec, problem)
                if decided is not None:
                    new = [_row(spec, problem, decided, meta, side, 0) for side in sides]
                    with interrupts.writing():
                        store.append(out, new)
                        rows += new
                    continue
                run_meta = with_peaks(meta, peaks, problem)
                for rnd in range(rounds):
                    for side in sides if rnd % 2 == 0 else sides[::-1]:
                        key = (side.name, problem.device)
                        if key not in workers:
                            workers[key] = KernelWorker(problem.device, root=side.root)
                        task = Task(spec.name, problem, False, run_meta.peak_tflops, timer)
                        m = workers[key].run(task, timeout_s)
                        if m.status != "ok":
                            workers[key].stop(kill=True)  # a fresh process for what follows
                        row = _row(spec, problem, m, run_meta, side, rnd)
                        with interrupts.writing():
                            store.append(out, [row])
                            rows.append(row)
                following = configs[n][0] if n < len(configs) else None
                if spec is not following:  # a fresh process per kernel and side, as in a sweep
                    for side in sides:
                        if (side.name, problem.device) in workers:
                            workers[(side.name, problem.device)].stop()
        finally:
            for worker in workers.values():
                worker.close(kill=True)
    return rows


def combine(frame: pd.DataFrame, side: str) -> pd.DataFrame:
    """One row per config of ``side``: the median of its rounds' median runtimes, p20s and p80s (the noise band of a
    typical round), the largest peak memory; a config with any round not ``ok`` keeps that round's row (status,
    message)."""
    rows = frame[frame.side == side]
    out = []
    for _, group in rows.groupby(list(KEY_FIELDS), sort=False, dropna=False):
        failed = group[group.status != "ok"]
        if len(failed):
            out.append(failed.iloc[0])
            continue
        first = group.iloc[0].copy()
        first["runtime_ms"] = group.runtime_ms.median()
        first["runtime_p20_ms"] = group.runtime_p20_ms.median()
        first["runtime_p80_ms"] = group.runtime_p80_ms.median()
        first["peak_mem_bytes"] = group.peak_mem_bytes.max()
        first["tflops"] = group.tflops.median()
        out.append(first)
    return pd.DataFrame(out, columns=frame.columns)


def load_sides(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The combined rows of side B and side A of an A/B file (``combine``), to judge it again; ``None`` when
    ``path`` holds no rows of both sides."""
    frame = store.load(path)
    if "side" not in frame or not set(SIDES) <= set(frame.side.dropna()):
        return None
    return combine(frame, "B"), combine(frame, "A")
