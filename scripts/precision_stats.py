"""Worst relative error of the TFLA kernels over many fresh draws (CPU, ``TRITON_INTERPRET=1``).

Runs the shapes of ``tests/test_tfla.py`` (and its gate-extreme and signed-input cases with ``--all``)
``--draws`` times each and prints, per dtype and output, the worst error and the case it came from: the
evidence behind the tests' bounds. Usage: ``python scripts/precision_stats.py [--draws 25] [--dtypes
float32,float16] [--all]``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from kernels.mlstm.accuracy import (  # noqa: E402
    GATE_EXTREMES,
    SHAPES,
    AccuracyCase,
    gate_extreme_case,
    relative_errors,
    signed_input_case,
)


def cases(dtype: torch.dtype, extra: bool) -> list[AccuracyCase]:
    out = [AccuracyCase(*shape[:6], dtype, shape[6]) for shape in SHAPES]
    if extra:
        for variant in ("exp", "sig"):
            out += [gate_extreme_case(variant, f_shift, i_scale, dtype) for f_shift, i_scale in GATE_EXTREMES]
            out.append(signed_input_case(variant, dtype))
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--draws", type=int, default=25)
    p.add_argument("--dtypes", default="float32,float16")
    p.add_argument("--all", action="store_true", help="also the gate-extreme and signed-input cases")
    a = p.parse_args()
    start = time.time()
    for dtype in [getattr(torch, name) for name in a.dtypes.split(",")]:
        worst: dict[str, tuple[float, AccuracyCase]] = {}
        for case in cases(dtype, a.all):
            for _ in range(a.draws):
                for name, err in relative_errors(case).items():
                    if err > worst.get(name, (-1.0, case))[0]:
                        worst[name] = (err, case)
        print(f"{dtype} ({a.draws} draws per case): worst relative error per output")
        for name, (err, c) in worst.items():
            where = f"{c.variant} normalize={c.normalize} S={c.S} DK={c.DK} DV={c.DV} L={c.L} states={c.with_states}"
            extra = (
                f" f_shift={c.f_shift} i_scale={c.i_scale} qk_mean={c.qk_mean}"
                if c.i_scale != 3.0 or c.qk_mean == 0
                else ""
            )
            print(f"  {name:7s} {err:.1e}  {where}{extra}")
    print(f"{time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
