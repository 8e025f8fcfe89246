"""``Grid``: the axes of a sweep, from a preset (TOML) and/or CLI flags; expands to (kernel, Problem) pairs.

A preset is a TOML file in ``bench/presets/`` (or any path) with keys named as ``Grid`` fields, e.g.

    kernels = ["tfla.mlstm_sig", "sdpa.cudnn"]
    seq_len = [1024, 2048]
    tokens = 65536        # const-token sweep: batch = tokens // seq_len (overrides batch)
    width = 4096          # heads = width // head_dim_v (overrides heads)
    qk_ratio = 0.5        # head_dim_qk = head_dim_v * qk_ratio (overrides head_dim_qk)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import tomllib

from bench.problem import Problem
from bench.registry import KernelSpec, resolve

PRESET_DIR = Path(__file__).parent / "presets"
LIST_FIELDS = ("seq_len", "batch", "heads", "head_dim_qk", "head_dim_v", "chunk_size", "dtype", "mode")
INT_LISTS = ("seq_len", "batch", "heads", "head_dim_qk", "head_dim_v", "chunk_size")
STR_LISTS = ("kernels", "dtype", "mode")
OPTIONAL_INTS = ("tokens", "width")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_value(name: str, value: object) -> object:
    """``value`` for grid key ``name`` (lists as tuples), or ``ValueError`` naming the key, what it takes and an
    example: presets and flags are checked by type before any config is built."""
    if name in INT_LISTS or name in STR_LISTS:
        kind, ok, example = ("integers", _is_int, "[64]") if name in INT_LISTS else ("names", _is_str, '["a"]')
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list of {kind}, e.g. {name} = {example}; got {value!r}")
        if not value:
            raise ValueError(f"{name} must name at least one value; got an empty list")
        bad = [v for v in value if not ok(v)]
        if bad:
            raise ValueError(f"{name} must be a list of {kind}; got {bad[0]!r} in {list(value)!r}")
        return tuple(value)
    if name in OPTIONAL_INTS:
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
        return value
    if name == "qk_ratio":
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"qk_ratio must be a number above 0; got {value!r}")
        return value
    if name in ("device", "description") and not isinstance(value, str):
        raise ValueError(f"{name} must be a string; got {value!r}")
    return value


def _is_str(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


@dataclass(frozen=True)
class Grid:
    """Axes of a sweep; every combination is one problem per kernel."""

    kernels: tuple[str, ...] = ()
    seq_len: tuple[int, ...] = (1024,)
    batch: tuple[int, ...] = (1,)
    heads: tuple[int, ...] = (8,)
    head_dim_qk: tuple[int, ...] = (128,)
    head_dim_v: tuple[int, ...] = (128,)
    chunk_size: tuple[int, ...] = (64,)
    dtype: tuple[str, ...] = ("bfloat16",)
    mode: tuple[str, ...] = ("fw",)
    device: str = "cuda"
    tokens: int | None = None
    width: int | None = None
    qk_ratio: float | None = None
    description: str = field(default="", compare=False)

    def with_overrides(self, **overrides: object) -> Grid:
        """A copy with every non-``None`` override applied (lists become tuples)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown grid keys {sorted(unknown)}; allowed: {[f.name for f in fields(self)]}")
        return replace(self, **{k: check_value(k, v) for k, v in changes.items()})

    def problems(self) -> list[Problem]:
        """Every validated problem of the grid (const-token and const-width rules applied)."""
        out: list[Problem] = []
        for s, b, h, dqk, dv, c, dt, m in itertools.product(*(getattr(self, f) for f in LIST_FIELDS)):
            if self.tokens is not None:
                if self.tokens % s:
                    raise ValueError(f"tokens ({self.tokens}) must be a multiple of every seq_len, got seq_len {s}")
                b = self.tokens // s
            if self.qk_ratio is not None:
                dqk = int(dv * self.qk_ratio)
            if self.width is not None:
                if self.width % dv:
                    raise ValueError(f"width ({self.width}) must be a multiple of every head_dim_v, got {dv}")
                h = self.width // dv
            out.append(Problem(b, h, s, dqk, dv, c, dt, m, self.device).validate())
        return list(dict.fromkeys(out))

    def configs(self) -> list[tuple[KernelSpec, Problem]]:
        """(spec, problem) pairs, grouped by kernel; kernels without a chunk size get ``chunk_size=0`` once."""
        if not self.kernels:
            raise ValueError("kernels must name at least one kernel (see `bench list`)")
        specs = resolve(self.kernels)
        problems = self.problems()
        pairs: list[tuple[KernelSpec, Problem]] = []
        for spec in specs:
            seen = dict.fromkeys(p if spec.uses_chunk_size else p.with_(chunk_size=0) for p in problems)
            pairs += [(spec, p) for p in seen]
        return pairs


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_path: str) -> Grid:
    """A preset by name (``bench/presets/NAME.toml``) or by path; ``ValueError`` naming the allowed ones."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name_or_path!r}; allowed: {', '.join(preset_names())} or a TOML path")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"preset {str(path)!r} is not valid TOML: {err}") from err
    except OSError as err:
        raise ValueError(f"preset {str(path)!r} cannot be read: {err.strerror or err}") from err
    try:
        return Grid().with_overrides(**data)
    except ValueError as err:
        raise ValueError(f"preset {str(path)!r}: {err}") from err


def default_preset() -> str:
    """``gpu`` where a CUDA GPU is visible, else the small ``cpu`` preset."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"
