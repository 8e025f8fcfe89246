"""What the code layout must not change: ``choose_tiles`` on 144 (dtype, chunk, head dims, grid) cases, the
registry's kernels and every preset's configs. ``python -m tests.layout_pins`` writes them to
``tests/data/layout_pins.json``; ``tests/test_layout.py`` compares the code with that file."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

PINS = Path(__file__).parent / "data" / "layout_pins.json"
CHUNKS = (64, 128, 256, 1024)
HEAD_DIMS = ((16, 32), (32, 64), (64, 128), (128, 256), (256, 512), (512, 1024))
GRIDS = ((0, 0), (32, 132))  # (batch * heads, SMs): no grid given, and a grid of one program per SM


def tile_cases() -> list[dict[str, object]]:
    """``choose_tiles`` for every dtype x chunk x head dims x grid (144 cases), as plain dicts."""
    import torch

    from kernels.mlstm.tiles import choose_tiles

    cases = []
    for dtype, chunk, (dqk, dv), (bh, sms) in itertools.product(
        (torch.float32, torch.float16, torch.bfloat16), CHUNKS, HEAD_DIMS, GRIDS
    ):
        tiles = choose_tiles(chunk, dqk, dv, False, dtype, bh, sms)
        key = {"dtype": str(dtype), "chunk": chunk, "dhqk": dqk, "dhhv": dv, "batch_heads": bh, "sm_count": sms}
        cases.append({**key, "tiles": dataclasses.asdict(tiles)})
    return cases


def registry_entries() -> list[dict[str, object]]:
    from bench.registry import all_specs

    keep = ("name", "family", "description", "uses_chunk_size", "input_names")
    specs = [s for s in all_specs() if not s.fn.__module__.startswith("tests")]  # not the test suite's fakes
    return [{k: getattr(s, k) for k in keep} | {"devices": list(s.devices)} for s in specs]


def preset_configs() -> dict[str, list[dict[str, object]]]:
    from bench.grid import load_preset, preset_names

    return {
        name: [{"kernel": s.name, **p.as_dict()} for s, p in load_preset(name).configs()] for name in preset_names()
    }


def collect() -> dict[str, object]:
    return {"choose_tiles": tile_cases(), "registry": registry_entries(), "presets": preset_configs()}


if __name__ == "__main__":
    PINS.write_text(json.dumps(collect(), indent=0, sort_keys=True, default=list) + "\n")
    print(f"wrote {PINS}")
