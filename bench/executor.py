"""Where a sweep's configs are measured: slots fed from one queue, while the sweep's thread writes every row.

A ``Slot`` is one worker process at a time: on a GPU machine pinned to one GPU (``CUDA_VISIBLE_DEVICES`` names
that GPU alone, so two workers never share one and each times its kernels alone), on the CPU one of N workers.
``LocalPool`` runs one thread per slot. Each thread takes the next config from the queue, decides it before launch
where it can (``precheck``) or measures it in its slot's worker (a fresh process per kernel and after any
failure), and hands the result to the sweep's thread, the only writer of ``--out``. One slot is the plain sweep;
``--parallel N`` gives N. ``RayPool`` (``--ray``) makes each config a Ray task instead; both yield ``Result``s to
the same runner loop (``bench.runner``).
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bench import envinfo
from bench.measure import Measurement
from bench.problem import Problem
from bench.registry import KernelSpec
from bench.worker import KernelWorker, Task


@dataclass(frozen=True)
class Slot:
    """One worker place: ``gpu`` is the GPU's index among those visible to the sweep (``None`` on the CPU), ``env``
    what its worker's environment adds (the pinning)."""

    index: int
    device: str
    gpu: int | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """A config's measurement, the metadata its row takes, the slot that measured it and how long it took (s)."""

    spec: KernelSpec
    problem: Problem
    measurement: Measurement
    meta: envinfo.RunMetadata
    slot: Slot
    seconds: float


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (indices or UUIDs)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [x.strip() for x in listed.split(",") if x.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def parse_parallel(value: str | int) -> int | None:
    """``--parallel``: a positive worker count, or ``None`` for ``all``; ``ValueError`` naming the option."""
    if value == "all":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(n) != str(value).strip():
        raise ValueError(f"--parallel takes a positive number of workers or 'all'; got {value!r}")
    return n


def local_slots(parallel: int | None, device: str, share_gpus: bool = False) -> list[Slot]:
    """``parallel`` slots on ``device`` (``None``: every visible GPU, or every CPU core); on a GPU machine each
    pinned to a GPU of its own. ``ValueError`` naming ``--parallel`` when there are fewer GPUs than workers.
    ``share_gpus`` (untimed work only, e.g. ``bench verify``, whose rows' times are not kept) pins the slots to the
    GPUs in turn, several to a GPU, so compile-bound configs overlap."""
    if device != "cuda":
        n = parallel or os.cpu_count() or 1
        return [Slot(i, device) for i in range(n)]
    gpus = visible_gpus()
    if not gpus and parallel in (None, 1):
        return [Slot(0, device)]  # no GPU: every config becomes an `unavailable` row before launch
    n = len(gpus) if parallel is None else parallel
    if share_gpus and gpus:
        return [Slot(i, device, i % len(gpus), {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]}) for i in range(n)]
    if n > len(gpus):
        raise ValueError(
            f"--parallel {n}: only {len(gpus)} GPU(s) visible, and a GPU is never shared by two workers "
            f"(allowed: 1..{len(gpus)} or all)"
        )
    return [Slot(i, device, i, {"CUDA_VISIBLE_DEVICES": gpus[i]}) for i in range(n)]


def check_placement(devices: set[str], parallel: int | None, ray: str | None, share_gpus: bool = False) -> None:
    """``ValueError`` naming the option when configs on ``devices`` cannot be measured by ``parallel`` local
    workers or by Ray: several workers (or Ray) need the configs on one device, and GPU workers a GPU each
    (unless ``share_gpus``: ``local_slots``)."""
    if len(devices) > 1 and (parallel != 1 or ray is not None):
        option = "--ray" if ray is not None else "--parallel"
        raise ValueError(f"{option} needs the configs on one device; got {', '.join(sorted(devices))}")
    if ray is None and devices == {"cuda"} and parallel != 1:
        local_slots(parallel, "cuda", share_gpus)  # refuses more workers than visible GPUs


def longest_first(configs: list[tuple[KernelSpec, Problem]]) -> list[tuple[KernelSpec, Problem]]:
    """``configs`` by estimated work, largest first (FLOPs, then bytes), so that the last to finish are short;
    the kernels' order among equals is kept."""

    def work(pair: tuple[KernelSpec, Problem]) -> tuple[float, float]:
        spec, problem = pair
        return (-spec.flops(problem), -spec.bytes(problem))

    return sorted(configs, key=work)


class LocalPool:
    """One thread and worker process per slot, fed from one queue (module docstring). ``results(configs)`` yields
    every config's ``Result`` in the order they finish; ``close`` ends the workers (``kill``: at once)."""

    def __init__(
        self,
        slots: list[Slot],
        task: Callable[[KernelSpec, Problem], Task],
        meta: Callable[[Problem], envinfo.RunMetadata],
        precheck: Callable[[KernelSpec, Problem], Measurement | None],
        timeout_s: float,
    ) -> None:
        self.slots, self._task, self._meta, self._precheck, self._timeout = slots, task, meta, precheck, timeout_s
        self._workers: dict[int, KernelWorker] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _serve(self, slot: Slot, pending: collections.deque, done: queue.Queue) -> None:
        previous: KernelSpec | None = None
        try:
            while not self._stop.is_set():
                with self._lock:
                    if not pending:
                        return
                    spec, problem = pending.popleft()
                t0 = time.perf_counter()
                m = self._precheck(spec, problem)
                if m is None:
                    worker = self._workers.get(slot.index)
                    if worker is not None and worker.device != problem.device:
                        worker.close()  # its environment is its device's (the interpreter on the CPU)
                        worker = None
                    if worker is None:
                        worker = self._workers[slot.index] = KernelWorker(problem.device, env=slot.env)
                    elif spec is not previous:
                        worker.stop()  # a fresh process for the next kernel
                    previous = spec
                    if self._stop.is_set():
                        return
                    m = worker.run(self._task(spec, problem), self._timeout)
                    if m.status != "ok":
                        worker.stop(kill=True)  # a fresh process for what follows
                        previous = None
                if self._stop.is_set():
                    return  # interrupted: this config's result is not written
                done.put(Result(spec, problem, m, self._meta(problem), slot, time.perf_counter() - t0))
        finally:
            done.put(slot)  # this slot has finished

    def results(self, configs: list[tuple[KernelSpec, Problem]]) -> Iterator[Result]:
        pending = collections.deque(configs)
        done: queue.Queue = queue.Queue()
        self._threads = [
            threading.Thread(target=self._serve, args=(slot, pending, done), daemon=True, name=f"slot-{slot.index}")
            for slot in self.slots
        ]
        for thread in self._threads:
            thread.start()
        running = len(self._threads)
        while running:
            try:
                item = done.get(timeout=0.1)  # short waits: the sweep's thread handles signals in between
            except queue.Empty:
                continue
            if isinstance(item, Slot):
                running -= 1
            else:
                yield item

    def close(self, kill: bool = False) -> None:
        """Stop handing out configs, end every worker (``kill``: a running measurement is cut off and dropped) and
        wait for the threads."""
        self._stop.set()
        if kill:
            for worker in list(self._workers.values()):
                worker.interrupt()  # the slot threads waiting on them return at once
        for thread in self._threads:
            thread.join(30)
        for worker in list(self._workers.values()):
            worker.close(kill=kill)


_RAY_PEAKS: dict[str, tuple[float, float]] = {}


def _ray_measure(
    task: dict[str, object], env: dict[str, str]
) -> tuple[dict[str, object], dict[str, object], int | None]:
    """A Ray task (``RayPool``): measure one config where Ray placed it; returns the measurement, the metadata of
    that machine (its host, GPU, driver, packages; the GPU's peaks) and the GPU it ran on."""  # pragma: no cover
    import dataclasses

    os.environ.update(env)
    import ray

    from bench import envinfo
    from bench.measure import measure
    from bench.problem import Problem
    from bench.registry import get
    from bench.runner import precheck

    problem = Problem(**task["problem"])  # type: ignore[arg-type]
    spec = get(str(task["kernel"]))
    meta = envinfo.collect(problem.device)
    gpus = ray.get_gpu_ids()
    gpu = int(gpus[0]) if gpus else None
    if (decided := precheck(spec, problem)) is not None:  # on the machine that would run it: its GPU, packages
        return dataclasses.asdict(decided), meta.as_dict(), gpu
    if problem.device == "cuda":
        if problem.dtype not in _RAY_PEAKS:  # once per dtype in each Ray worker process (Ray reuses them)
            _RAY_PEAKS[problem.dtype] = envinfo.measure_peaks(problem.dtype)
        peak_tflops, peak_gbs = _RAY_PEAKS[problem.dtype]
        meta = envinfo.RunMetadata(**{**meta.as_dict(), "peak_tflops": peak_tflops, "peak_bandwidth_gbs": peak_gbs})
    m = measure(spec, problem, check=bool(task["verify"]), peak_tflops=meta.peak_tflops, timer=str(task["timer"]))
    return dataclasses.asdict(m), meta.as_dict(), gpu


class RayPool:
    """Each config a Ray task with one GPU (``num_gpus=1``; on the CPU ``num_cpus=1``), so one command runs on one
    node or a Ray cluster. At most as many tasks are in flight as the cluster has GPUs (CPUs), so a task's time
    from its submission is its own. A task whose process dies is a ``crash`` row (no retries); one past the timeout
    is cancelled (``ray.cancel(force=True)``) and a ``timeout`` row. Each row's metadata comes from the machine that
    measured it. ``address``: ``auto`` (a running cluster), ``local`` (start one here) or a cluster address; a Ray
    already initialised in this process is used as it is."""

    def __init__(
        self,
        address: str,
        device: str,
        task: Callable[[KernelSpec, Problem], Task],
        meta: envinfo.RunMetadata,
        timeout_s: float,
    ) -> None:
        import ray

        from bench.registry import PLUGINS_ENV
        from bench.worker import worker_env

        self._ray = ray
        self._running: dict[object, tuple[KernelSpec, Problem, float]] = {}
        self._started = not ray.is_initialized()
        if self._started:
            try:
                ray.init(address=None if address == "local" else address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ValueError(f"--ray {address}: {err}") from None
        self.device, self._task, self._meta, self._timeout = device, task, meta, timeout_s
        resource = "GPU" if device == "cuda" else "CPU"
        self.capacity = int(ray.cluster_resources().get(resource, 0))
        if self.capacity < 1:
            self.close()
            raise ValueError(f"--ray: the Ray cluster has no {resource} for {device} configs")
        env = {
            **worker_env(device),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(envinfo.ROOT), os.environ.get("PYTHONPATH")])),
        }
        if plugins := os.environ.get(PLUGINS_ENV):
            env[PLUGINS_ENV] = plugins
        need = {"num_gpus": 1} if device == "cuda" else {"num_cpus": 1}
        self._remote = ray.remote(max_retries=0, **need)(_ray_measure)
        self._env = env

    def _result(self, spec: KernelSpec, problem: Problem, m: Measurement, t0: float, meta: dict | None = None,
                gpu: int | None = None) -> Result:  # fmt: skip
        # the measuring machine's metadata, under this sweep's run id
        run_meta = envinfo.RunMetadata(**{**meta, "run_id": self._meta.run_id}) if meta else self._meta
        return Result(spec, problem, m, run_meta, Slot(-1, self.device, gpu), time.perf_counter() - t0)

    def results(self, configs: list[tuple[KernelSpec, Problem]]) -> Iterator[Result]:
        from bench.worker import _measurement, _task_dict

        ray = self._ray
        pending = collections.deque(configs)
        while pending or self._running:
            while pending and len(self._running) < self.capacity:
                spec, problem = pending.popleft()
                t0 = time.perf_counter()
                ref = self._remote.remote(_task_dict(self._task(spec, problem)), self._env)
                self._running[ref] = (spec, problem, t0)
            if not self._running:
                continue
            ready, _ = ray.wait(list(self._running), num_returns=1, timeout=0.1)
            now = time.perf_counter()
            for ref in ready:
                spec, problem, t0 = self._running.pop(ref)
                try:
                    reply, meta, gpu = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    m = Measurement("error", str(err).strip().splitlines()[-1][:500])
                    yield self._result(spec, problem, m, t0)
                except ray.exceptions.RayError as err:  # the task's process died
                    m = Measurement("crash", f"Ray worker died ({type(err).__name__}): {str(err)[:400]}")
                    yield self._result(spec, problem, m, t0)
                else:
                    yield self._result(spec, problem, _measurement(reply), t0, meta, gpu)
            for ref, (spec, problem, t0) in list(self._running.items()):
                if now - t0 > self._timeout:
                    ray.cancel(ref, force=True)
                    del self._running[ref]
                    m = Measurement("timeout", f"no result within {self._timeout:g} s; Ray task cancelled")
                    yield self._result(spec, problem, m, t0)

    def close(self, kill: bool = False) -> None:
        """Cancel the tasks still running (their results are dropped); shut down a Ray this pool started."""
        for ref in list(self._running):
            self._ray.cancel(ref, force=True)
        self._running.clear()
        if self._started:
            self._ray.shutdown()
