"""`load_dataset(spec, split)`: one entry point for every image source."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nfnet.data.dataset import Dataset
from nfnet.data.digits import load_digits
from nfnet.data.idx import load_fashion_mnist
from nfnet.data.imagefolder import load_imagefolder
from nfnet.data.parquet import load_parquet
from nfnet.data.synthetic import load_synthetic, synthetic_config
from nfnet.errors import NFNetError

SPLITS = ("train", "test")


def _no_kwargs(source: str, kw: dict[str, Any]) -> None:
    if kw:
        raise NFNetError(f"dataset {source!r} takes no options, got {sorted(kw)}")


def _fashion(arg: str, split: str, data_dir: str | None, kw: dict[str, Any]) -> Dataset:
    _no_kwargs("fashion_mnist", kw)
    return load_fashion_mnist(split, arg or data_dir)


def _no_data_dir(source: str, data_dir: str | None) -> None:
    if data_dir is not None:
        raise NFNetError(f"dataset {source!r} is built in and reads no data directory; drop --data-dir {data_dir}")


def _digits(arg: str, split: str, data_dir: str | None, kw: dict[str, Any]) -> Dataset:
    _no_kwargs("digits", kw)
    _no_data_dir("digits", data_dir)
    if arg:
        raise NFNetError(f"dataset 'digits' takes no argument, got {arg!r}")
    return load_digits(split)


def _synthetic(arg: str, split: str, data_dir: str | None, kw: dict[str, Any]) -> Dataset:
    _no_data_dir("synthetic", data_dir)
    params: dict[str, Any] = {}
    for item in filter(None, arg.split(",")):
        key, sep, value = item.partition("=")
        try:
            params[key.strip()] = int(value)
        except ValueError:
            sep = ""
        if not sep:
            raise NFNetError(f"bad synthetic option {item!r}; write e.g. synthetic:n=4096,classes=10,size=32")
    params.update(kw)
    return load_synthetic(split, synthetic_config(params))


def _located(source: str, arg: str, data_dir: str | None) -> str:
    location = arg or data_dir
    if not location:
        raise NFNetError(f"dataset {source!r} needs a location: write {source}:<path> or pass --data-dir")
    return location


def _parquet(arg: str, split: str, data_dir: str | None, kw: dict[str, Any]) -> Dataset:
    allowed = {"image_column", "label_column", "num_classes"}
    if set(kw) - allowed:
        raise NFNetError(f"dataset 'parquet' takes options {sorted(allowed)}, got {sorted(kw)}")
    return load_parquet(_located("parquet", arg, data_dir), split, **kw)


def _imagefolder(arg: str, split: str, data_dir: str | None, kw: dict[str, Any]) -> Dataset:
    _no_kwargs("imagefolder", kw)
    return load_imagefolder(_located("imagefolder", arg, data_dir), split)


SOURCES: dict[str, Callable[[str, str, str | None, dict[str, Any]], Dataset]] = {
    "fashion_mnist": _fashion,
    "digits": _digits,
    "synthetic": _synthetic,
    "parquet": _parquet,
    "imagefolder": _imagefolder,
}


def load_dataset(spec: str, split: str, data_dir: str | None = None, **kw: Any) -> Dataset:
    """Load one split of a dataset named by `spec`.

    `spec` is `fashion_mnist`, `digits`, `synthetic[:n=...,classes=...,size=...]`,
    `parquet:<path-or-uri>` or `imagefolder:<dir>`; `split` is `train` or `test` (held-out).
    `data_dir` overrides where Fashion-MNIST is read from, or gives the location of
    parquet/imagefolder when the spec has none. `kw` are source options (synthetic sizes,
    parquet column names and num_classes).
    """
    if split not in SPLITS:
        raise NFNetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    source, _, arg = spec.partition(":")
    source = source.strip().lower().replace("-", "_")
    if source not in SOURCES:
        raise NFNetError(f"unknown dataset source {source!r} in {spec!r}; known sources: {', '.join(SOURCES)}")
    return SOURCES[source](arg.strip(), split, data_dir, dict(kw))
