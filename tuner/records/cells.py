"""How a ledger names a model: a cell label such as `F0-w0.5-d2` (variant, width and depth
multipliers), its parsing, and the parameter count nfscale trains for it.
"""

from __future__ import annotations

import re

from functools import lru_cache



def cell_label(variant: str, width_mult: float = 1.0, depth_mult: float = 1.0) -> str:
    """`F0`, `F0-w0.5`, `F0-w0.5-d2`: the same spelling as `nfnet.variants.Variant.label`."""
    parts = [variant]
    if width_mult != 1.0:
        parts.append(f"w{width_mult:g}")
    if depth_mult != 1.0:
        parts.append(f"d{depth_mult:g}")
    return "-".join(parts)


def parse_label(label: str) -> tuple[str, float, float]:
    """Split `F0-w0.5-d2` into ("F0", 0.5, 2.0); a plain name has multipliers 1."""
    match = _LABEL.match(label.strip())
    if not match:
        return label.strip(), 1.0, 1.0
    w, d = match.group("w"), match.group("d")
    try:
        return match.group("base"), float(w) if w else 1.0, float(d) if d else 1.0
    except ValueError:
        return label.strip(), 1.0, 1.0


def cell_shape(variant: str, width_mult: float = 1.0, depth_mult: float = 1.0) -> tuple[str, float, float]:
    """A label's base name and its multipliers times these: ("F0-w0.5", 2.0) -> ("F0", 1.0, 1.0)."""
    base, w, d = parse_label(variant)
    return base, w * width_mult, d * depth_mult


@lru_cache(maxsize=None)
def variant_params(name: str, width_mult: float = 1.0, depth_mult: float = 1.0, num_classes: int = 1000) -> int | None:
    """Parameter count of a variant with a `num_classes`-way head, or None when nfnet cannot say.

    Used for rows (imported CSVs) that carry no `params`; None is an unknown
    variant (or nfnet missing).
    """
    try:
        from nfnet.counting import count_params
        from nfnet.errors import NFNetError
        from nfnet.variants import get_variant
    except ImportError:
        return None
    try:
        return int(count_params(get_variant(name, width_mult, depth_mult), num_classes=num_classes))
    except NFNetError:
        return None


_LABEL = re.compile(r"^(?P<base>.+?)(?:-w(?P<w>[0-9.]+))?(?:-d(?P<d>[0-9.]+))?$")
