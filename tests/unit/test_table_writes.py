"""Bulk table writes into Faust's RocksDB store (``pipeline.agents.faust.changelog.put_all``): one write batch per
flush must leave the store exactly as Faust's own key-by-key ``table[key] = value`` does."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from pipeline.agents.faust.build import bytes_table
from pipeline.agents.faust.changelog import put_all


def _store(tmp_path: Path, store: str = "rocksdb://") -> Any:
    app = faust.App(
        "t-table-writes",
        store=store,
        datadir=str(tmp_path),
        autodiscover=False,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    return bytes_table(app, "devices-state", 4).data


def test_write_batch_lands_in_the_partitions_database(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.use_rocksdict  # the production store: the batched path is the one under test
    put_all(store, 2, [(b"dev-1", b"s1"), (b"dev-2", b"s2")], contextlib.nullcontext)
    put_all(store, 3, [(b"dev-3", b"s3")], contextlib.nullcontext)
    put_all(store, 2, [(b"dev-1", b"s1-newer")], contextlib.nullcontext)  # a later flush overwrites
    assert store._db_for_partition(2).get(b"dev-1") == b"s1-newer"
    assert store._db_for_partition(2).get(b"dev-2") == b"s2"
    assert store._db_for_partition(3).get(b"dev-3") == b"s3"
    assert store._db_for_partition(3).get(b"dev-1") is None  # in its own partition only
    # Faust's reads find them without an event (the key index is only a cache of a key's partition).
    assert store._get(b"dev-2") == b"s2"
    assert store._get(b"dev-3") == b"s3"


def test_active_partitions_iterate_what_was_written(tmp_path: Path) -> None:
    """``runner.load(table.items(), ...)`` after a restart reads the store through Faust's iteration."""
    store = _store(tmp_path)
    put_all(store, 1, [(b"a", b"1"), (b"b", b"2")], contextlib.nullcontext)
    put_all(store, 0, [(b"c", b"3")], contextlib.nullcontext)
    topic = store.table.changelog_topic.get_topic_name()
    store.app.assignor.assigned_actives = lambda: {TP(topic, 0), TP(topic, 1)}  # type: ignore[method-assign]
    assert sorted(store.items()) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]


def test_other_stores_are_written_key_by_key_in_the_given_context(tmp_path: Path) -> None:
    store = _store(tmp_path, "memory://")
    entered: list[bool] = []

    @contextlib.contextmanager
    def context() -> Any:
        entered.append(True)
        yield

    put_all(store, 0, [(b"a", b"1"), (b"b", b"2")], context)
    assert entered == [True]
    assert dict(store.items()) == {b"a": b"1", b"b": b"2"}
