"""Per-example image transforms (Pillow) and normalisation.

Train: a random-resized crop then a horizontal flip, resized to R×R. The crop keeps 35%–100% of
the image area (aspect ratio 3/4–4/3): the Inception crop's usual 8% lower bound would leave
a 2-pixel crop of an 8×8 digit, so small-image datasets get a milder range.
Eval: images whose short side is at most R are resized to R×R; larger ones are resized so the
short side is R/0.875 and centre-cropped to R (the usual ImageNet eval transform).
Both are one Pillow `resize(box=...)` per image, with bilinear filtering (antialiased when
shrinking). Randomness is a pure function of (seed, epoch, example index) via a counter hash,
so a resumed run augments every example exactly as the uninterrupted run did.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from PIL import Image

CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
EVAL_CROP_FRACTION = 0.875  # ImageNet convention: resize to R/0.875, centre-crop R.

# ImageNet channel statistics, used for every dataset so pre-trained weights and their
# fine-tuning runs on another dataset see inputs on the same scale. Grayscale images are
# replicated to 3 channels.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def example_uniforms(seed: int, epoch: int, indices: np.ndarray, count: int) -> np.ndarray:
    """`count` uniforms in [0, 1) per example, a pure function of (seed, epoch, example index)."""
    with np.errstate(over="ignore"):
        key = _splitmix64(np.array([seed % 2**64], np.uint64))
        key = _splitmix64(key ^ np.uint64(epoch % 2**64))
        key = _splitmix64(key ^ np.asarray(indices).astype(np.uint64))
        z = _splitmix64(key[:, None] + np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def train_boxes(shapes: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop boxes (x0, y0, x1, y1) and flip flags from [N, 2] (H, W) shapes and [N, 5] uniforms."""
    h, w = shapes[:, 0].astype(np.float64), shapes[:, 1].astype(np.float64)
    scale = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u[:, 0]
    log_lo, log_hi = np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1])
    ratio = np.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    cw = np.minimum(np.sqrt(scale * h * w * ratio), w)
    ch = np.minimum(np.sqrt(scale * h * w / ratio), h)
    x0 = u[:, 2] * (w - cw)
    y0 = u[:, 3] * (h - ch)
    return np.stack([x0, y0, x0 + cw, y0 + ch], axis=1), u[:, 4] < 0.5


def eval_boxes(shapes: np.ndarray, resolution: int) -> np.ndarray:
    """Centre boxes: the whole image when its short side is <= R, else the R/0.875 centre crop."""
    h, w = shapes[:, 0].astype(np.float64), shapes[:, 1].astype(np.float64)
    short = np.minimum(h, w)
    side = np.where(short <= resolution, 0.0, short * resolution / round(resolution / EVAL_CROP_FRACTION))
    cw = np.where(side > 0, side, w)
    ch = np.where(side > 0, side, h)
    x0, y0 = (w - cw) / 2, (h - ch) / 2
    return np.stack([x0, y0, x0 + cw, y0 + ch], axis=1)


def crop_resize(
    images: Sequence[np.ndarray] | np.ndarray, boxes: np.ndarray, flips: np.ndarray | None, resolution: int
) -> np.ndarray:
    """uint8 [N, R, R, C]: each image's box resized to R×R (and flipped); C=3 if any input is RGB."""
    channels = 3 if any(im.shape[-1] == 3 for im in images) else 1
    out = np.empty((len(images), resolution, resolution, channels), np.uint8)
    size = (resolution, resolution)
    for i, im in enumerate(images):
        pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
        arr = np.asarray(pil.resize(size, Image.Resampling.BILINEAR, box=tuple(boxes[i])))
        if flips is not None and flips[i]:
            arr = arr[:, ::-1]
        out[i] = arr[..., None] if arr.ndim == 2 else arr
    return out


def to_rgb(batch: np.ndarray) -> np.ndarray:
    """uint8 [N, R, R, 1|3] -> uint8 [N, R, R, 3], grey replicated (what the loader ships)."""
    return batch if batch.shape[-1] == 3 else np.repeat(batch, 3, axis=-1)


# (x/255 - MEAN) / STD as x * _SCALE + _SHIFT, shared by the host and device forms.
_SCALE = (1.0 / (255.0 * STD)).astype(np.float32)
_SHIFT = (-MEAN / STD).astype(np.float32)


def normalise(batch: np.ndarray) -> np.ndarray:
    """uint8 [N, R, R, 1|3] -> float32 [N, R, R, 3], (x/255 - MEAN) / STD (numpy, on the host)."""
    out = np.empty(batch.shape[:3] + (3,), np.float32)
    np.multiply(batch, _SCALE, out=out)
    out += _SHIFT
    return out


def normalise_on_device(x):
    """The same normalisation inside a jitted function: uint8 [N, R, R, 3] -> float32.

    The loader ships uint8 images (4x fewer bytes than float32) and the train and eval
    steps call this first; float inputs are taken as already normalised and pass through.
    """
    if x.dtype != jnp.uint8:
        return x
    return x.astype(jnp.float32) * _SCALE + _SHIFT
