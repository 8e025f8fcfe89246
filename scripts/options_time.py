"""Time the whole TFLA pass (``mlstm_tfla(backend="gluon")``) with one Gluon kernel's options overridden, against
the backend's own options, in one process on the same inputs: the option sets take turns within every round
(``--rounds``), so drift reaches all alike, and each set's output and gradients are compared with the backend's
own (relative difference, so an override that computes something else shows).

Usage: ``python scripts/options_time.py --kernel bw_dq_dk --set one_launch=1 --set one_launch=1,num_warps=8
[--shape 8,8,8192,256,512] [--chunks 256,1024] [--variants sig,exp] [--mode fwbw] [--rounds 3] [--rep-ms 300]``.
``--kernel``: a kernel whose options ``kernels.mlstm.tfla.gluon_options`` fetches (``OPTION_KERNELS``); ``--set``:
``field=value`` pairs of its options dataclass (``kernels.gluon.config``), one option set per ``--set``. Prints a
line per round and set, then a table: median of the rounds' medians (ms), its ratio to the backend's own options,
the widest p20..p80 band (% of the median) and the largest relative difference. Bad arguments exit 2 before any
GPU work.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Callable
from typing import Any

OPTION_KERNELS = ("fw_states", "bw_states", "bw_dq_dk")  # fetched through tfla.gluon_options at every call
MODES = ("fw", "fwbw")
VARIANTS = ("sig", "exp")


def _fields(kernel: str) -> dict[str, type]:
    """The option fields of ``kernel``'s options dataclass and their types (``bool`` or ``int``)."""
    from kernels.gluon import config

    cls = {"fw_states": config.FwStatesOptions, "bw_states": config.BwStatesOptions, "bw_dq_dk": config.BwDqDkOptions}
    hints = {"bool": bool, "int": int}
    return {f.name: hints.get(str(f.type), int) for f in dataclasses.fields(cls[kernel])}


def parse_set(kernel: str, text: str) -> dict[str, Any]:
    """``field=value,...`` for ``kernel``'s options: ``ValueError`` naming a field that is not one and the allowed
    ones, or a value that is not an integer (bools: 0 / 1, true / false)."""
    fields = _fields(kernel)
    out: dict[str, Any] = {}
    for pair in text.split(","):
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or name not in fields:
            raise ValueError(f"--set takes field=value pairs of {', '.join(fields)}; got {pair!r}")
        value = value.strip().lower()
        if fields[name] is bool:
            if value not in ("0", "1", "true", "false"):
                raise ValueError(f"--set {name} is a bool: 0, 1, true or false; got {value!r}")
            out[name] = value in ("1", "true")
        else:
            try:
                out[name] = int(value)
            except ValueError:
                raise ValueError(f"--set {name} is an integer; got {value!r}") from None
    return out


def _ints(name: str, text: str) -> tuple[int, ...]:
    """``text`` as comma-separated integers, or ``ValueError`` naming the parameter ``name``."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{name} takes comma-separated integers; got {text!r}") from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, checked; ``SystemExit(2)`` with a message naming the parameter on bad input."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", required=True, choices=OPTION_KERNELS)
    p.add_argument("--set", dest="sets", action="append", required=True, metavar="FIELD=VALUE,...")
    p.add_argument("--shape", default="8,8,8192,256,512", help="B,NH,S,DHQK,DHHV")
    p.add_argument("--chunks", default="256,1024")
    p.add_argument("--variants", default="sig")
    p.add_argument("--mode", default="fwbw", choices=MODES)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rep-ms", type=int, default=300)
    a = p.parse_args(argv)
    try:
        a.overrides = [parse_set(a.kernel, text) for text in a.sets]
        a.shape = _ints("--shape", a.shape)
        if len(a.shape) != 5 or min(a.shape) < 1:
            raise ValueError(f"--shape is B,NH,S,DHQK,DHHV, five positive integers; got {a.shape}")
        a.chunks = _ints("--chunks", a.chunks)
        if min(a.chunks) < 16:
            raise ValueError(f"--chunks are chunk sizes of at least 16; got {a.chunks}")
        a.variants = tuple(a.variants.split(","))
        if not set(a.variants) <= set(VARIANTS):
            raise ValueError(f"--variants are among {', '.join(VARIANTS)}; got {','.join(a.variants)}")
        if a.rounds < 1 or a.rep_ms < 1:
            raise ValueError(f"--rounds and --rep-ms are positive integers; got {a.rounds} and {a.rep_ms}")
    except ValueError as err:
        p.error(str(err))
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    import torch
    import triton

    from kernels.gluon import config
    from kernels.mlstm.tfla import mlstm_tfla

    b, nh, s, dqk, dv = a.shape
    dev, dtype = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    base = [torch.randn(b, nh, s, d, device=dev, dtype=dtype) for d in (dqk, dqk, dv)]
    base += [torch.randn(b, nh, s, device=dev, dtype=dtype), (torch.randn(b, nh, s, device=dev) + 3.0).to(dtype)]
    dh = torch.randn(b, nh, s, dv, device=dev, dtype=dtype)
    x = [t.detach().clone().requires_grad_(a.mode == "fwbw") for t in base]
    own = getattr(config, f"{a.kernel}_options")
    sets = [("own", {})] + [(",".join(f"{k}={v}" for k, v in o.items()), o) for o in a.overrides]
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}, {a.kernel}, shape {a.shape}, {a.mode}")

    def step(variant: str, chunk: int) -> Callable[[], list[torch.Tensor]]:
        def run() -> list[torch.Tensor]:
            for t in x:
                t.grad = None
            if a.mode == "fw":
                with torch.no_grad():
                    return [mlstm_tfla(*x, variant=variant, normalize=variant == "exp", chunk_size=chunk,
                                       backend="gluon")]  # fmt: skip
            h = mlstm_tfla(*x, variant=variant, normalize=variant == "exp", chunk_size=chunk, backend="gluon")
            h.backward(dh)
            return [h] + [t.grad for t in x]

        return run

    times: dict[tuple, list[tuple[float, float, float]]] = {}
    diffs: dict[tuple, float] = {}
    try:
        for r in range(a.rounds):
            for variant in a.variants:
                for chunk in a.chunks:
                    order = sets if r % 2 == 0 else sets[::-1]
                    ref = None
                    for name, override in order:  # the others are compared with own where it ran first
                        setattr(config, f"{a.kernel}_options", config.overridden(a.kernel, **override))
                        run = step(variant, chunk)
                        outs = [t.detach().double() for t in run()]
                        if name == "own":
                            ref = outs
                        elif ref is not None:
                            diff = max(((o - e).norm() / e.norm()).item() for o, e in zip(outs, ref, strict=True))
                            key = (variant, chunk, name)
                            diffs[key] = max(diffs.get(key, 0.0), diff)
                        med, p20, p80 = triton.testing.do_bench(run, rep=a.rep_ms, quantiles=[0.5, 0.2, 0.8])
                        times.setdefault((variant, chunk, name), []).append((med, p20, p80))
                        print(f"round {r} {variant} chunk {chunk} {name}: {med:.3f} ms ({p20:.3f}..{p80:.3f})")
    finally:
        setattr(config, f"{a.kernel}_options", own)
    print("variant | chunk | options | ms (median of rounds) | / own | widest band % | max rel diff to own")
    for (variant, chunk, name), rows in times.items():
        med = statistics.median(t[0] for t in rows)
        own_med = statistics.median(t[0] for t in times[(variant, chunk, "own")])
        band = max((t[2] - t[1]) / t[0] * 100 for t in rows)
        diff = diffs.get((variant, chunk, name))
        print(f"{variant} | {chunk} | {name} | {med:.3f} | {med / own_med:.3f} | {band:.1f} | "
              f"{'-' if diff is None else f'{diff:.1e}'}")  # fmt: skip


if __name__ == "__main__":
    main()
