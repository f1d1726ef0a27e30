"""The Library API: adding, names, duplicates, store integrity and failure paths.

Every user-caused error checks the message and that catalog and store are unchanged.
"""

import errno
import os
import sqlite3
import threading

import numpy as np
import pytest

from conceptlib.errors import (
    AlreadyExists,
    BlobCorrupt,
    CatalogCorrupt,
    CatalogLocked,
    DiskFull,
    InvalidName,
    NameCollision,
    NotFound,
)
from conceptlib.registry.formats.embedding import Embedding
from conceptlib.registry.library import Library
from conceptlib.schemas.records import Preview, TrainingRunRecord


def _unchanged(home, before, snap):
    assert snap(home) == before


def test_add_records_everything(lib, emb_factory):
    emb = emb_factory("sdxl", 2, 5)
    info = lib.add_embedding(
        emb,
        name="Neon-XL",
        token="<neon-xl>",
        kind="style",
        source="trained",
        base_model="conceptlib/tiny-sdxl",
        base_model_fingerprint="tiny:sdxl:v1",
        initializer="neon",
        training_images_hash="c" * 64,
        training_image_count=5,
        tags=["Style", "City Lights"],
        description="neon city",
        license="cc-by-4.0",
        previews=[Preview("loss.png", b"\x89PNG fake", role="loss_curve")],
        training_run=TrainingRunRecord(
            config={"lr": 0.005}, steps=100, final_loss=0.1, device="cpu"
        ),
    )
    assert info.family == "sdxl" and info.dims == [768, 1280] and info.num_vectors == 2
    assert info.tags == ["city-lights", "style"]
    assert info.tensor_sha256 == emb.tensor_sha256
    assert info.file_sha256 == emb.tensor_sha256  # no original file: the canonical bytes
    assert info.a1111_hash == info.file_sha256[:12]
    assert info.autov2 == info.file_sha256[:10].upper()
    assert info.previews[0].role == "loss_curve"
    assert info.training_runs[0].config == {"lr": 0.005}
    assert info.compatibility == {
        "sd1": "none",
        "sd2": "none",
        "sdxl": "full",
        "sd3": "partial",
        "flux": "partial",
    }
    d = info.to_dict()
    for key in (
        "name",
        "token",
        "kind",
        "family",
        "num_vectors",
        "tensor_sha256",
        "file_sha256",
        "tags",
        "source",
        "initializer",
        "training_images_hash",
    ):
        assert key in d
    assert lib.resolve("<neon-xl>").name == "Neon-XL"
    assert lib.resolve("neon-xl").name == "Neon-XL"
    loaded = lib.load("neon-xl")
    assert all(np.array_equal(loaded.vectors[k], emb.vectors[k]) for k in emb.vectors)


def test_sd1_is_partially_compatible_with_sdxl(lib, emb_factory):
    info = lib.add_embedding(emb_factory("sd1"), name="ea")
    assert info.compatibility == {
        "sd1": "full",
        "sd2": "none",
        "sdxl": "partial",
        "sd3": "partial",
        "flux": "partial",
    }


def test_not_found_suggests_close_names(lib, emb_factory):
    lib.add_embedding(emb_factory(), name="watercolor-wash")
    with pytest.raises(NotFound) as exc:
        lib.get("watercolour-wash")
    assert "watercolor-wash" in exc.value.hint


def test_same_tensors_twice_is_one_entry(lib, emb_factory, catalog_snapshot):
    emb = emb_factory()
    lib.add_embedding(emb, name="first")
    before = catalog_snapshot(lib.settings.home)
    with pytest.raises(AlreadyExists) as exc:
        lib.add_embedding(Embedding({k: v.copy() for k, v in emb.vectors.items()}), name="second")
    assert exc.value.existing == "first"
    assert "already in the catalog as 'first'" in exc.value.message
    _unchanged(lib.settings.home, before, catalog_snapshot)


@pytest.mark.parametrize("other", ["CAT-TOY", "ｃａｔ-ｔｏｙ", " cat-toy"])
def test_names_equal_after_normalization_collide(lib, emb_factory, catalog_snapshot, other):
    lib.add_embedding(emb_factory(seed=1), name="cat-toy")
    before = catalog_snapshot(lib.settings.home)
    with pytest.raises(NameCollision) as exc:
        lib.add_embedding(emb_factory(seed=2), name=other)
    assert exc.value.existing == "cat-toy"
    _unchanged(lib.settings.home, before, catalog_snapshot)


def test_invalid_name_changes_nothing(lib, emb_factory, catalog_snapshot):
    before = catalog_snapshot(lib.settings.home)
    with pytest.raises(InvalidName):
        lib.add_embedding(emb_factory(), name="evil\u202ename")
    _unchanged(lib.settings.home, before, catalog_snapshot)


def test_expansion_name_clashes_with_multivector(lib, emb_factory, catalog_snapshot):
    lib.add_embedding(emb_factory(n=3, seed=1), name="foo")
    before = catalog_snapshot(lib.settings.home)
    with pytest.raises(NameCollision) as exc:
        lib.add_embedding(emb_factory(seed=2), name="foo_1")
    assert "foo_1" in exc.value.message and "3 vectors" in exc.value.message
    _unchanged(lib.settings.home, before, catalog_snapshot)
    # foo_3 is beyond foo's expansion (foo, foo_1, foo_2): allowed.
    lib.add_embedding(emb_factory(seed=3), name="foo_3")


def test_multivector_clashes_with_existing_expansion_name(lib, emb_factory):
    lib.add_embedding(emb_factory(seed=1), name="bar_2")
    with pytest.raises(NameCollision) as exc:
        lib.add_embedding(emb_factory(n=4, seed=2), name="bar")
    assert "bar_2" in exc.value.message


def test_token_collides_with_other_name(lib, emb_factory):
    lib.add_embedding(emb_factory(seed=1), name="alpha")
    with pytest.raises(NameCollision):
        lib.add_embedding(emb_factory(seed=2), name="beta", token="ALPHA")


def test_rename_rules(lib, emb_factory):
    lib.add_embedding(emb_factory(seed=1), name="ea")
    lib.add_embedding(emb_factory(seed=2), name="eb", token="<b-token>")
    with pytest.raises(NameCollision):
        lib.rename("ea", "EB")
    info = lib.rename("ea", "A2")
    assert info.token == "A2"
    info = lib.rename("eb", "bee")
    assert info.token == "<b-token>"
    assert lib.rename("bee", "BEE").name == "BEE"  # case change of itself is fine


def test_altered_blob_is_refused_and_reported(lib, emb_factory):
    info = lib.add_embedding(emb_factory(), name="ea")
    path = lib.store.path(info.tensor_sha256)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BlobCorrupt) as exc:
        lib.load("ea")
    assert "altered" in exc.value.message
    report = lib.verify()
    assert not report.ok and "altered" in report.problems[0]
    with pytest.raises(BlobCorrupt):
        lib.export("ea", "safetensors", lib.settings.home / "out")
    assert not (lib.settings.home / "out").exists()


def test_orphan_blob_from_a_killed_import_is_collected(lib, emb_factory):
    lib.add_embedding(emb_factory(seed=1), name="kept")
    orphan = lib.store.put(emb_factory(seed=2).canonical_bytes())  # blob written, row never came
    tmp = lib.store.root / "ab" / ".tmp-dead-x"
    tmp.parent.mkdir(exist_ok=True)
    tmp.write_bytes(b"partial")
    report = lib.verify()
    assert report.ok and report.orphan_blobs == [orphan]
    removed = lib.gc()
    assert orphan in removed and not lib.store.has(orphan) and not tmp.exists()
    assert lib.verify().orphan_blobs == [] and lib.load("kept")


def test_disk_full_while_writing_blob(lib, emb_factory, catalog_snapshot, monkeypatch):
    before = catalog_snapshot(lib.settings.home)
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(DiskFull) as exc:
        lib.add_embedding(emb_factory(), name="x")
    monkeypatch.setattr(os, "write", real_write)
    assert "no space left" in exc.value.message
    _unchanged(lib.settings.home, before, catalog_snapshot)
    assert list(lib.store.iter_temp_files()) == []


def test_io_error_on_commit_rolls_back(lib, emb_factory, monkeypatch, catalog_snapshot):
    from conceptlib.catalog import dialect

    before_rows = lib.dump()

    def broken(*a, **k):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(dialect, "refresh_fts_many", broken)
    with pytest.raises(Exception) as exc:
        lib.add_embedding(emb_factory(), name="x")
    assert "disk I/O error" in str(exc.value)
    monkeypatch.undo()
    assert lib.dump() == before_rows
    # The blob written before the failed commit was removed again: store as before.
    assert lib.verify().ok and lib.verify().orphan_blobs == []


def test_catalog_locked_past_busy_timeout(tmp_path, monkeypatch, emb_factory):
    monkeypatch.setenv("CONCEPTLIB_BUSY_TIMEOUT", "0.2")
    lib = Library.open(tmp_path)
    blocker = sqlite3.connect(tmp_path / "catalog.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(CatalogLocked) as exc:
            lib.add_embedding(emb_factory(), name="x")
        assert "locked by another writer" in exc.value.message
        assert "CONCEPTLIB_BUSY_TIMEOUT" in exc.value.hint
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert lib.count() == 0
    lib.close()


def test_corrupt_catalog_file(tmp_path):
    (tmp_path / "catalog.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CatalogCorrupt) as exc:
        Library.open(tmp_path)
    assert "corrupt" in exc.value.message


def test_concurrent_adds_from_threads(lib, emb_factory):
    errors = []

    def worker(i):
        try:
            lib.add_embedding(emb_factory(seed=100 + i), name=f"t{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert lib.count() == 8


def test_ordinary_word_as_name_or_token_is_refused(lib, emb_factory, catalog_snapshot):
    before = catalog_snapshot(lib.settings.home)
    with pytest.raises(InvalidName) as exc:
        lib.add_embedding(emb_factory(), name="painting")
    assert "ordinary word" in exc.value.message and "painting-style" in exc.value.hint
    with pytest.raises(InvalidName):
        lib.add_embedding(emb_factory(), name="my-concept", token="Style")
    assert catalog_snapshot(lib.settings.home) == before
    # "<painting>" is a distinct token, not the word.
    assert (
        lib.add_embedding(emb_factory(), name="my-painting", token="<painting>").token
        == "<painting>"
    )


def test_imported_file_named_like_a_word_gets_a_suffix(tmp_path, lib, emb_factory):
    from conceptlib.registry.formats import write_embedding

    files = write_embedding(emb_factory(seed=4), "safetensors", name="style", token="style")
    path = tmp_path / "style.safetensors"
    path.write_bytes(next(iter(files.values())))
    report = lib.import_paths([path])
    assert report.outcomes[0].status == "imported"
    info = lib.get("style-ti")
    assert info.token == "style-ti" and info.extra["renamed_from"] == "style"
    # An explicit --name that is an ordinary word is refused, not renamed.
    other = tmp_path / "other.safetensors"
    other.write_bytes(
        next(
            iter(write_embedding(emb_factory(seed=5), "safetensors", name="o", token="o").values())
        )
    )
    (outcome,) = lib.import_paths([other], name="painting").outcomes
    assert outcome.status == "rejected" and isinstance(outcome.exception, InvalidName)
    assert "ordinary word" in outcome.reason


def test_gc_grace_period_spares_young_blobs(lib, emb_factory):
    import os
    import time

    orphan = lib.store.put(emb_factory(seed=3).canonical_bytes())
    assert lib.gc(grace_s=60) == [] and lib.store.has(orphan)
    old = time.time() - 120
    os.utime(lib.store.path(orphan), (old, old))
    assert lib.gc(grace_s=60) == [orphan] and not lib.store.has(orphan)
