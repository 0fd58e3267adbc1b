"""Server-side filtering and paging of lists, so a page stays small with thousands of rows."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    page: int
    size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def paginate(items: Sequence[T], page: int, size: int) -> Page[T]:
    size = max(1, min(size, MAX_PAGE_SIZE))
    pages = max(1, -(-len(items) // size))
    page = max(1, min(page, pages))
    start = (page - 1) * size
    return Page(items=list(items[start:start + size]), total=len(items), page=page, size=size)


def matches_query(query: str | None, *fields: str | None) -> bool:
    """Case-insensitive: every word of ``query`` appears in one of ``fields``."""
    if not query:
        return True
    haystack = " ".join(f for f in fields if f).lower()
    return all(word in haystack for word in query.lower().split())


def filter_items(items: Sequence[T], keep: Callable[[T], bool]) -> list[T]:
    return [i for i in items if keep(i)]
