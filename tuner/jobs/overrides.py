"""Trainer settings given as `KEY=VALUE` (`--set`): each key must be a trainer field and
each value parses to the field's type, with a one-line error otherwise.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from typing import Any

from tuner.errors import TunerError


def parse_value(text: str) -> Any:
    """A --set value: int, float, bool, none, or the text itself."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


_SET_EXPECTS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
}


def _trainer_field_types() -> dict[str, str]:
    """TrainConfig's field names and their annotations ("int", "float | None", ...)."""
    import nfnet.config as nfconfig  # JAX is imported, no backend initialised

    return {f.name: str(f.type) for f in dataclasses.fields(nfconfig.TrainConfig)}


def parse_override(item: str) -> tuple[str, Any]:
    """`"max_train_examples=2048"` -> ("max_train_examples", 2048), typed by TrainConfig's field.

    A mistake is a TunerError naming the `--set` item and what its key wants.
    """
    key, sep, text = item.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key:
        raise TunerError(f"--set takes KEY=VALUE (a TrainConfig field), got {item!r}")
    types = _trainer_field_types()
    if key not in types:
        close = difflib.get_close_matches(key, list(types), n=1)
        hint = f"did you mean {close[0]}?" if close else f"TrainConfig fields are {', '.join(sorted(types))}"
        raise TunerError(f"--set {item}: unknown trainer setting {key}; {hint}")
    kind, _, optional = types[key].partition(" | ")
    value = parse_value(text)
    if value is None and optional:
        return key, None
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": bool(text),
    }.get(kind, True)
    if not ok:
        wanted = _SET_EXPECTS.get(kind, kind) + (" or none" if optional else "")
        raise TunerError(f"--set {item}: expected {wanted}")
    return key, text if kind == "str" else value


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["max_train_examples=2048", "dtype=bfloat16"]` -> trainer field overrides."""
    return dict(parse_override(item) for item in items)
