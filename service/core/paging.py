"""Cursor paging: the one way a listing turns ``limit + 1`` rows into a page and a cursor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing and the cursor of the next page (None on the last one)."""

    items: list[T]
    next_cursor: str | None


def page_of(rows: Sequence[T], limit: int, cursor_of: Callable[[T], str]) -> Page[T]:
    """``rows`` read with ``LIMIT limit + 1``: the first ``limit`` of them, and the cursor of the
    last one shown when the extra row says there is more."""
    items = list(rows[:limit])
    more = len(rows) > limit
    return Page(items, cursor_of(items[-1]) if more and items else None)
