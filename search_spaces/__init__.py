"""Declarative search spaces and presets for nfscale studies.

A preset (`search_spaces.preset.Preset`) is one study as data: model variants ×
epoch budgets × learning rates on a factor-2 grid, the trainer settings every
trial shares, and a CPU form. Each preset module opens with the command that runs
it and what it costs:

- `paper`: [P1]'s grid (F0 ... F7+ × 0.25-8 epochs × 1.6·2^k) on JFT-like shards.
- `cpu-fashion`: a CPU-scale study on Fashion-MNIST.
- `cpu-scaling`: the documented CPU-scale reproduction (a full grid, every run to its end).
- `cpu-smoke`: minutes on a CPU; exercises searcher, scheduler, budget and ledger.

`get_preset(name)` finds a registered preset by name, or one of your own given as
`package.module[:ATTR]` or `path/to/file.py[:ATTR]` (ATTR defaults to `PRESET`);
search_spaces/README.md shows how to write one. `define_space(trial, preset)` is
the Optuna define-by-run space and `grid(preset)` every cell once.

The only import from `tuner` is `tuner.errors` (a leaf module), so a bad preset or
name is the same one-line `TunerError` as every other mistake a sweep can catch.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from search_spaces import cpu_fashion, cpu_scaling, cpu_smoke, paper
from search_spaces.preset import CELL_KEYS, Cell, Preset, base_lr, split_label
from search_spaces.space import (
    PARAM_NAMES,
    PresetSpace,
    define_space,
    grid,
    grid_space,
    normalise_point,
    parse_point,
)
from tuner.errors import TunerError

PRESETS: dict[str, Preset] = {p.name: p for p in (paper.PRESET, cpu_fashion.PRESET, cpu_scaling.PRESET, cpu_smoke.PRESET)}
DEFAULT_ATTR = "PRESET"

__all__ = [
    "CELL_KEYS",
    "PARAM_NAMES",
    "PRESETS",
    "Cell",
    "Preset",
    "PresetSpace",
    "base_lr",
    "define_space",
    "get_preset",
    "grid",
    "grid_space",
    "known_presets",
    "normalise_point",
    "parse_point",
    "split_label",
]


def known_presets() -> list[str]:
    return list(PRESETS)


def _unknown(name: str) -> TunerError:
    return TunerError(
        f"unknown preset {name!r}; known presets: {', '.join(known_presets())} "
        "(or give your own as package.module[:ATTR] or path/to/file.py[:ATTR])"
    )


def _from_file(path: Path, attr: str, spec_text: str) -> object:
    if not path.is_file():
        raise TunerError(f"preset file {path} does not exist; check the path in {spec_text!r}")
    spec = importlib.util.spec_from_file_location(f"nfscale_user_preset_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise TunerError(f"cannot load preset file {path}; give a .py file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, attr, None)


def _load(spec_text: str) -> Preset:
    target, _, attr = spec_text.partition(":")
    attr = attr or DEFAULT_ATTR
    if target.endswith(".py"):
        found = _from_file(Path(target).expanduser(), attr, spec_text)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise TunerError(f"cannot import preset module {target!r}: {exc}") from None
        found = getattr(module, attr, None)
    if not isinstance(found, Preset):
        raise TunerError(f"{spec_text!r} has no Preset named {attr}; define `{attr} = Preset(...)` there")
    return found


def get_preset(name: str, cpu: bool = False) -> Preset:
    """A preset by registered name or `module[:ATTR]` / `file.py[:ATTR]`; `cpu` gives its CPU form."""
    if name in PRESETS:
        preset = PRESETS[name]
    elif ":" in name or name.endswith(".py") or "." in name:
        preset = _load(name)
    else:
        raise _unknown(name)
    return preset.cpu() if cpu else preset
