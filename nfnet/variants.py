"""The NFNet variant table, as data.

Reference variants F0-F7 follow [P2] Table 1 and DeepMind's reference code
(`nfnets/nfnet.py`, `nfnet_params`); the "+" variants widen every stage
([P2] Appendix: widths [384, 768, 2048, 2048]) and keep everything else.
The small variants are F0's shape shrunk in width and depth so they train in
minutes on a 2-core CPU at 28-32px; they exist for CPU-scale studies.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from dataclasses import dataclass

from nfnet.errors import NFNetError

BASE_WIDTHS = (256, 512, 1536, 1536)
PLUS_WIDTHS = (384, 768, 2048, 2048)
# Group width of the grouped 3x3 convs in every reference variant ([P2] Sec. 4.1).
GROUP_WIDTH = 128

# The smallest input resolution, in px, for every variant. The network halves the image
# five times (stem 2x2, then stages 1, 2, 2, 2: 32x in all; nfnet.model). The four halvings
# before the last stage take 16 px to one pixel; below 16 px a stride-2 layer before the
# last stage would halve a single pixel, so part of the network sees no spatial context
# at all. (With SAME padding smaller inputs still run; they just waste that part.)
MIN_RESOLUTION = 16


@dataclass(frozen=True)
class Variant:
    """One NFNet shape. `group_width` is the channel count of one conv group."""

    name: str
    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    train_resolution: int
    test_resolution: int
    dropout: float
    group_width: int = GROUP_WIDTH
    width_mult: float = 1.0
    depth_mult: float = 1.0

    @property
    def label(self) -> str:
        """The name with its multipliers, as the ledger and logs show it."""
        parts = [self.name]
        if self.width_mult != 1.0:
            parts.append(f"w{self.width_mult:g}")
        if self.depth_mult != 1.0:
            parts.append(f"d{self.depth_mult:g}")
        return "-".join(parts)


def _f(n: int, depths, train, test, dropout, plus=False) -> dict[str, Variant]:
    name = f"F{n}+" if plus else f"F{n}"
    widths = PLUS_WIDTHS if plus else BASE_WIDTHS
    return {name: Variant(name, depths, widths, train, test, dropout)}


# [P2] Table 1 / reference `nfnet_params`: depths, train/test resolution, dropout.
_REFERENCE = [
    (0, (1, 2, 6, 3), 192, 256, 0.2),
    (1, (2, 4, 12, 6), 224, 320, 0.3),
    (2, (3, 6, 18, 9), 256, 352, 0.4),
    (3, (4, 8, 24, 12), 320, 416, 0.4),
    (4, (5, 10, 30, 15), 384, 512, 0.5),
    (5, (6, 12, 36, 18), 416, 544, 0.5),
    (6, (7, 14, 42, 21), 448, 576, 0.5),
    (7, (8, 16, 48, 24), 480, 608, 0.5),
]

VARIANTS: dict[str, Variant] = {}
for _n, _depths, _train, _test, _drop in _REFERENCE:
    VARIANTS.update(_f(_n, _depths, _train, _test, _drop))
    VARIANTS.update(_f(_n, _depths, _train, _test, _drop, plus=True))


def _small(name: str, depths, width_mult: float, dropout: float) -> Variant:
    widths = tuple(int(w * width_mult) for w in BASE_WIDTHS)
    return Variant(name, depths, widths, 32, 32, dropout, group_width=int(GROUP_WIDTH * width_mult))


# CPU-scale variants: F0's layout at 1/16 to 1/4 width, 28-32px inputs.
SMALL_VARIANTS: dict[str, Variant] = {
    "nano": _small("nano", (1, 1, 1, 1), 1 / 16, 0.0),
    "micro": _small("micro", (1, 1, 2, 1), 1 / 8, 0.0),
    "mini": _small("mini", (1, 2, 3, 2), 1 / 8, 0.1),
    "small": _small("small", (1, 2, 6, 3), 1 / 4, 0.2),
}
VARIANTS.update(SMALL_VARIANTS)

_SUFFIX = re.compile(r"^(?P<base>.+?)(?:-w(?P<w>[0-9.]+))?(?:-d(?P<d>[0-9.]+))?$")


def resolution_problem(value: object) -> str | None:
    """What is wrong with `value` as an input resolution in px ("must be ..."), or None."""
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if whole and value >= MIN_RESOLUTION:
        return None
    shown = int(value) if whole else repr(value)
    return (f"must be a whole number of px >= {MIN_RESOLUTION} (the network halves the image 5 times, "
            f"32x in all), got {shown}")


def check_resolution(value: object, flag: str = "--resolution") -> int:
    """`value` as a resolution in px, or NFNetError naming `flag`: the one resolution rule of
    nfnet.train, nfnet.finetune, nfnet.summary and the tuner commands."""
    problem = resolution_problem(value)
    if problem:
        raise NFNetError(f"{flag} {problem}")
    return int(value)  # type: ignore[call-overload]


def known_names() -> list[str]:
    return list(VARIANTS)


def _scale_depth(d: int, mult: float) -> int:
    return max(1, round(d * mult))


def get_variant(name: str, width_mult: float = 1.0, depth_mult: float = 1.0) -> Variant:
    """A variant by name, optionally scaled.

    Names may carry their multipliers (`F0-w0.5-d2`, as `Variant.label` writes
    them); explicit arguments multiply those. Below full width the group width
    shrinks with the widths, so every stage keeps whole groups: widths and the
    group width are rounded so each stage's bottleneck is a whole number of groups.
    """
    match = _SUFFIX.match(name.strip())
    base = match.group("base") if match else name
    if base not in VARIANTS:
        raise NFNetError(
            f"unknown variant {name!r}; known variants: {', '.join(known_names())} "
            "(add -w<mult>/-d<mult> for width/depth multipliers)"
        )
    width_mult *= float(match.group("w") or 1.0)
    depth_mult *= float(match.group("d") or 1.0)
    if width_mult <= 0 or depth_mult <= 0:
        raise NFNetError(f"width and depth multipliers must be > 0, got {width_mult:g} and {depth_mult:g}")
    v = VARIANTS[base]
    if width_mult == 1.0 and depth_mult == 1.0:
        return v
    group = max(1, round(v.group_width * width_mult)) if width_mult != 1.0 else v.group_width
    # Bottleneck = width/2 must hold whole groups: widths are multiples of 2*group.
    widths = tuple(max(2 * group, round(w * width_mult / (2 * group)) * 2 * group) for w in v.widths)
    depths = tuple(_scale_depth(d, depth_mult) for d in v.depths)
    return dataclasses.replace(
        v,
        depths=depths,
        widths=widths,
        group_width=group,
        width_mult=v.width_mult * width_mult,
        depth_mult=v.depth_mult * depth_mult,
    )
