"""One page of search results and the number of matches: what a gallery pages through.

The same indexed queries as ``search`` (:class:`~conceptlib.catalog.query.Reader`), with
an order and an offset; both queries run on one short read (no transaction is held
open between requests, so a long-lived process never pins an old snapshot of the
catalog).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from conceptlib.catalog.query import ORDERS, SearchQuery, normalize_tag
from conceptlib.errors import UsageError
from conceptlib.schemas.records import EmbeddingInfo

if TYPE_CHECKING:
    from conceptlib.registry.library import Library

#: Most entries on one page.
MAX_PAGE_SIZE = 500
#: ``order`` values :func:`search_page` takes.
SORTS = tuple(ORDERS)


@dataclass
class Page:
    """One page of matches.

    Attributes:
        items: the entries on this page (tags included, no previews or runs).
        total: how many entries match in all.
        page: this page's number, from 1.
        size: entries per page.
    """

    items: list[EmbeddingInfo] = field(default_factory=list)
    total: int = 0
    page: int = 1
    size: int = 48

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))


def search_page(
    library: Library,
    query: str | None = None,
    *,
    tags: Sequence[str] = (),
    family: str | None = None,
    kind: str | None = None,
    compatible_with: str | None = None,
    source: str | None = None,
    order: str = "name",
    page: int = 1,
    size: int = 48,
) -> Page:
    """Page ``page`` (from 1) of the entries matching the filters (as ``Library.search``).

    Raises:
        UsageError: a page below 1, a size outside 1..500, an unknown order
            (:class:`~conceptlib.catalog.query.SearchQuery` checks it).
    """
    if page < 1 or not 1 <= size <= MAX_PAGE_SIZE:
        raise UsageError(f"page must be 1 or more and size 1 to {MAX_PAGE_SIZE}")
    q = SearchQuery(
        text=query or None,
        tags=[normalize_tag(t) for t in tags if t.strip()],
        family=family,
        kind=kind,
        compatible_with=compatible_with,
        source=source,
        limit=size,
        offset=(page - 1) * size,
        order=order,
    )
    with library.reader() as r:
        total = r.count_matching(q)
        items = r.search(q) if q.offset < total else []
    return Page(items=items, total=total, page=page, size=size)
