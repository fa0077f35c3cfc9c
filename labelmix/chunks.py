"""The one chunker: an iterable in lists of at most N items (a dataset store's rows per row group,
MLflow's metrics and params per ``log_batch``)."""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in order, in lists of ``size`` (the last one shorter); reads ``items`` once, lazily."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
