"""Tag filters and orders of ``Library.search`` against a naive filter over ``lib.list()``,
and migration 6 (the covering index of embeddings by tag)."""

import random
import re

import pytest
from sqlalchemy import inspect

from conceptlib.catalog import migrations
from conceptlib.catalog.db import Catalog
from conceptlib.catalog.query import ORDERS, SearchQuery
from conceptlib.errors import UsageError
from conceptlib.registry.gallery import search_page
from conceptlib.registry.library import Library
from conceptlib.registry.samples import sample_embedding
from conceptlib.schemas.names import name_key
from conceptlib.schemas.records import TrainingRunRecord

WORDS = ["watercolor", "water", "neon", "ink", "plush", "castle"]
TAGS = ["a", "b", "c", "d"]
FAMILIES = ["sd1", "sd2", "sdxl"]


def _fill(lib) -> dict[str, dict[str, float | None]]:
    """30 entries with random tags, families, descriptions and CLIP scores (seeded);
    returns each entry's best CLIP-I / CLIP-T (None without a scored run)."""
    rng = random.Random(7)
    best: dict[str, dict[str, float | None]] = {}
    for i in range(30):
        name = f"{rng.choice(['Zed', 'alpha', 'Mid', 'beta'])}-{i:02d}"
        runs = []
        for _ in range(rng.choice([0, 1, 2])):
            # Scores repeat (one decimal) so that ties fall back to the name.
            runs.append(
                TrainingRunRecord(
                    config={}, steps=1, clip_i=rng.choice([0.1, 0.5, 0.9]), clip_t=rng.random()
                )
            )
        best[name] = {
            key: max((getattr(r, key) for r in runs), default=None) for key in ("clip_i", "clip_t")
        }
        lib.add_embedding(
            sample_embedding(FAMILIES[i % 3], 1, 100 + i),
            name=name,
            kind=rng.choice(["style", "object"]),
            tags=rng.sample(TAGS, rng.randint(0, 3)),
            description=" ".join(rng.sample(WORDS, 2)),
            training_runs=runs,
        )
    return best


def _naive(everything, best, *, text=None, tags=(), family=None, order="name"):
    def words(e):
        fields = [e.name, e.token, e.description or "", *e.tags]
        return [w for f in fields for w in re.split(r"[^0-9a-z]+", f.casefold()) if w]

    found = [
        e
        for e in everything
        if set(tags) <= set(e.tags)
        and (family is None or e.family == family)
        and (text is None or all(any(w.startswith(t) for w in words(e)) for t in text.split()))
    ]
    if order == "name":
        return sorted(found, key=lambda e: name_key(e.name))
    if order in ("newest", "oldest"):
        return sorted(found, key=lambda e: e.id, reverse=order == "newest")
    metric = "clip_i" if order == "clip-i" else "clip_t"
    return sorted(
        found,
        key=lambda e: (
            best[e.name][metric] is None,
            -(best[e.name][metric] or 0.0),
            name_key(e.name),
        ),
    )


FILTERS = [
    {"tags": ["a", "b"]},
    {"tags": ["a", "b", "c"]},
    {"tags": ["a"], "family": "sdxl"},
    {"tags": ["b", "c"], "family": "sd1"},
    {"text": "water", "tags": ["b"]},
    {"text": "neon", "tags": ["a", "c"]},
    {"text": "ink"},
    {},
]


def test_tag_filters_and_orders_match_a_naive_filter(lib):
    best = _fill(lib)
    everything = lib.list()
    assert len(everything) == 30
    for flt in FILTERS:
        query = flt.get("text")
        kw = {k: v for k, v in flt.items() if k != "text"}
        for order in ORDERS:
            expected = [e.name for e in _naive(everything, best, **flt, order=order)]
            got = [e.name for e in lib.search(query, **kw, order=order)]
            assert got == expected, (flt, order)
            assert [e.name for e in lib.search(query, **kw, order=order, limit=3)] == expected[:3]
            page = search_page(lib, query, **kw, order=order, page=2, size=4)
            assert page.total == len(expected)
            assert [e.name for e in page.items] == expected[4:8], (flt, order)
    # The filters are not vacuous: each set of tags matches some entries but not all.
    assert 0 < len(lib.search(tags=["a", "b"])) < 30


def test_search_order_is_validated(lib, _isolated_home, catalog_snapshot):
    lib.add_embedding(sample_embedding("sd1", 1, 1), name="one", tags=["a"])
    before = catalog_snapshot(_isolated_home)
    with pytest.raises(UsageError) as err:
        lib.search(tags=["a"], order="best")
    assert err.value.message == (
        "unknown order 'best'; expected one of name, newest, oldest, clip-i, clip-t"
    )
    assert err.value.exit_code == 2
    assert catalog_snapshot(_isolated_home) == before
    assert [e.name for e in lib.search(tags=["a"], order="newest")] == ["one"]


def _tag_plan(lib) -> str:
    q = SearchQuery(tags=["a"], family="sd1", limit=48)
    with lib.reader() as r:
        where, params = r._where(q)
        sql = "SELECT e.id FROM embedding e WHERE " + " AND ".join(where) + " ORDER BY e.name_key"
        plan = r._exec("EXPLAIN QUERY PLAN " + sql, params)
    return " | ".join(str(row[-1]) for row in plan)


def test_upgrade_to_6_indexes_tags_and_keeps_them_searchable(backend, tmp_path):
    from conceptlib.config import load_settings

    with Library.open(tmp_path) as lib:
        lib.add_embedding(sample_embedding("sd1", 1, 5), name="old-one", tags=["a"])
    cat = Catalog(load_settings(tmp_path).url)
    with cat.connection() as conn:  # back to version 5: what an older conceptlib left
        conn.exec_driver_sql("DROP INDEX ix_embedding_tag_tag_id_embedding_id")
        conn.exec_driver_sql("CREATE INDEX ix_embedding_tag_tag_id ON embedding_tag (tag_id)")
        conn.exec_driver_sql("DELETE FROM schema_migrations WHERE version = 6")
    assert cat.schema_version() == 5
    indexes = {ix["name"] for ix in inspect(cat.engine).get_indexes("embedding_tag")}
    assert "ix_embedding_tag_tag_id_embedding_id" not in indexes
    cat.dispose()
    with Library.open(tmp_path) as lib:
        assert lib.catalog.schema_version() == migrations.LATEST == 6
        indexes = {
            ix["name"]: ix for ix in inspect(lib.catalog.engine).get_indexes("embedding_tag")
        }
        assert indexes["ix_embedding_tag_tag_id_embedding_id"]["column_names"] == [
            "tag_id",
            "embedding_id",
        ]
        assert "ix_embedding_tag_tag_id" not in indexes  # a prefix of the new one
        assert [e.name for e in lib.search(tags=["a"], family="sd1")] == ["old-one"]
        assert lib.tags() == [("a", 1)]
        if backend == "sqlite":
            # The tag filter reads the new index alone (no table row per entry).
            plan = _tag_plan(lib)
            assert "COVERING INDEX ix_embedding_tag_tag_id_embedding_id (tag_id=?)" in plan, plan
        assert lib.verify().integrity == "ok"
