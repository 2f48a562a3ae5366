"""The SessionStore contract, run against both stores: SQLite and a real redis-server."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sopagent.errors import StoreError
from sopagent.stores import (
    Commit,
    RedisStore,
    SessionStore,
    SqliteStore,
    StoredSession,
    open_store,
)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    """Each store kind, empty: a fresh SQLite file, or a fresh key prefix on redis-server."""
    if request.param == "sqlite":
        made: SessionStore = SqliteStore(tmp_path / "sessions.db")
    else:
        url = request.getfixturevalue("redis_url")
        made = RedisStore(url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
    yield made
    made.close()


def _session(session_id: str = "", tenant: str = "acme", status: str = "active") -> StoredSession:
    now = time.time()
    return StoredSession(
        id=session_id or uuid.uuid4().hex,
        tenant=tenant,
        policy="refund",
        policy_hash="sha256:0123456789abcdef",
        status=status,  # type: ignore[arg-type]
        version=1,
        turns=1,
        data='{"state": "greeting"}',
        created=now,
        updated=now,
    )


def _commit(stored: StoredSession, owner: str, **changes: object) -> Commit:
    fields: dict[str, object] = {
        "session_id": stored.id,
        "tenant": stored.tenant,
        "owner": owner,
        "version": stored.version,
        "turns": stored.turns,
        "data": '{"state": "next"}',
        "status": "active",
        "record": '{"turn": 1}',
    }
    fields.update(changes)
    return Commit(**fields)  # type: ignore[arg-type]


def test_create_then_load_round_trips(store: SessionStore) -> None:
    """A created session loads back field for field, with its opening record."""
    stored = _session()
    store.create(stored, '{"turn": 0}')
    loaded = store.load(stored.id)
    assert loaded is not None
    assert (loaded.tenant, loaded.policy, loaded.status, loaded.version, loaded.turns) == (
        "acme", "refund", "active", 1, 1,
    )  # fmt: skip
    assert loaded.data == stored.data
    assert store.transcript(stored.id) == ['{"turn": 0}']


def test_missing_session_loads_as_none(store: SessionStore) -> None:
    """An unknown id is None, with an empty transcript, no replay and no lease."""
    assert store.load("f" * 32) is None
    assert store.acquire("f" * 32, "a", 10) is None
    assert store.transcript("f" * 32) == []
    assert store.replay("f" * 32, "key") is None


def test_creating_an_existing_id_fails(store: SessionStore) -> None:
    """Two sessions never share an id."""
    stored = _session()
    store.create(stored, "{}")
    with pytest.raises(StoreError, match="already exists"):
        store.create(stored, "{}")


def test_lease_is_exclusive_until_released(store: SessionStore) -> None:
    """One owner holds the lease; another is refused until it is released."""
    stored = _session()
    store.create(stored, "{}")
    taken = store.acquire(stored.id, "a", 10)
    assert taken is not None
    assert (taken.id, taken.version, taken.data) == (stored.id, 1, stored.data)
    assert not store.acquire(stored.id, "b", 10)
    store.release(stored.id, "b")  # not b's: nothing happens
    assert not store.acquire(stored.id, "b", 10)
    store.release(stored.id, "a")
    assert store.acquire(stored.id, "b", 10)


def test_expired_lease_can_be_taken(store: SessionStore) -> None:
    """A lease left by a dead worker stops blocking the session once it expires."""
    stored = _session()
    store.create(stored, "{}")
    assert store.acquire(stored.id, "dead", 0.05)
    time.sleep(0.15)
    assert store.acquire(stored.id, "alive", 10)


def test_commit_appends_record_and_bumps_version(store: SessionStore) -> None:
    """A commit stores the new data, appends one record, increments the version, frees the lease."""
    stored = _session()
    store.create(stored, '{"turn": 0}')
    assert store.acquire(stored.id, "a", 10)
    assert store.commit(_commit(stored, "a")) == 2
    loaded = store.load(stored.id)
    assert loaded is not None
    assert (loaded.version, loaded.turns, loaded.data) == (2, 2, '{"state": "next"}')
    assert store.transcript(stored.id) == ['{"turn": 0}', '{"turn": 1}']
    assert store.transcript(stored.id, 1) == ['{"turn": 1}']
    assert store.acquire(stored.id, "b", 10)


def test_commit_without_the_lease_writes_nothing(store: SessionStore) -> None:
    """A writer that lost its lease (or never had it) cannot commit."""
    stored = _session()
    store.create(stored, "{}")
    assert store.commit(_commit(stored, "nobody")) is None
    assert store.acquire(stored.id, "other", 10)
    assert store.commit(_commit(stored, "nobody")) is None
    loaded = store.load(stored.id)
    assert loaded is not None
    assert (loaded.version, loaded.turns) == (1, 1)


def test_commit_on_a_stale_version_writes_nothing(store: SessionStore) -> None:
    """A writer that read an older version or transcript cannot overwrite a newer one."""
    stored = _session()
    store.create(stored, "{}")
    assert store.acquire(stored.id, "a", 10)
    assert store.commit(_commit(stored, "a", version=7)) is None
    assert store.commit(_commit(stored, "a", turns=5)) is None
    assert store.transcript(stored.id) == ["{}"]
    assert store.commit(_commit(stored, "a")) == 2


def test_idempotency_key_replays_its_record(store: SessionStore) -> None:
    """The record committed with a key is found by that key, with the request's digest."""
    stored = _session()
    store.create(stored, '{"turn": 0}')
    assert store.acquire(stored.id, "a", 10)
    store.commit(_commit(stored, "a", idempotency_key="k-1", digest="d1"))
    replay = store.replay(stored.id, "k-1")
    assert replay is not None
    assert (replay.digest, replay.record) == ("d1", '{"turn": 1}')
    assert store.replay(stored.id, "k-2") is None


def test_handoffs_are_listed_per_tenant(store: SessionStore) -> None:
    """Sessions in handoff are listed for their tenant only, and leave the list when ended."""
    mine, theirs = _session(), _session(tenant="other")
    for stored in (mine, theirs):
        store.create(stored, "{}")
        assert store.acquire(stored.id, "a", 10)
        store.commit(_commit(stored, "a", status="handoff"))
    assert [s.id for s in store.handoffs("acme")] == [mine.id]
    assert [s.id for s in store.handoffs("other")] == [theirs.id]
    loaded = store.load(mine.id)
    assert loaded is not None
    assert store.acquire(mine.id, "a", 10)
    store.commit(_commit(loaded, "a", status="ended", record=None))
    assert store.handoffs("acme") == []


def test_concurrent_writers_never_interleave(store: SessionStore) -> None:
    """Threads racing on one session: every successful commit is one contiguous record."""
    stored = _session()
    store.create(stored, '"0"')
    done: list[int] = []
    lock = threading.Lock()

    def writer(name: str) -> None:
        for _ in range(20):
            current = store.acquire(stored.id, name, 5)
            if current is None:
                continue
            version = store.commit(
                _commit(current, name, record=f'"{current.turns}"', data=f'"{name}"')
            )
            if version is not None:
                with lock:
                    done.append(version)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    loaded = store.load(stored.id)
    assert loaded is not None
    assert loaded.turns == 1 + len(done)
    assert sorted(done) == list(range(2, 2 + len(done)))
    assert store.transcript(stored.id) == [f'"{i}"' for i in range(loaded.turns)]


def test_ping_answers(store: SessionStore) -> None:
    """A working store answers a ping."""
    store.ping()


def test_unreachable_redis_is_a_store_error() -> None:
    """A Redis URL nobody listens on fails with StoreError, not a raw client exception."""
    from tests.conftest import free_port  # noqa: PLC0415

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreError, match="ping failed"):
        store.ping()
    with pytest.raises(StoreError):
        store.load("a" * 32)


def test_open_store_understands_urls(tmp_path: Path) -> None:
    """sqlite:/// URLs and bare paths open SQLite; an unknown scheme is refused."""
    absolute = open_store(f"sqlite:///{tmp_path}/a.db")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == tmp_path / "a.db"
    bare = open_store(str(tmp_path / "b.db"))
    assert isinstance(bare, SqliteStore)
    with pytest.raises(StoreError, match="unknown store"):
        open_store("postgres://localhost/x")


def test_sqlite_store_in_an_unwritable_place_is_a_store_error(tmp_path: Path) -> None:
    """A database path that cannot be created fails with StoreError."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open SQLite store"):
        SqliteStore(blocker / "sessions.db")


class _FullOnCommit(sqlite3.Connection):
    """A connection whose next ``fail`` COMMITs fail as on a full disk, the transaction open."""

    fail = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.fail:
            self.fail -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


def test_sqlite_commit_failing_on_a_full_disk_leaves_the_store_usable(tmp_path: Path) -> None:
    """A COMMIT that fails writes nothing and frees the write lock: the next commit works."""
    path = tmp_path / "sessions.db"
    store = SqliteStore(path)
    stored = _session()
    store.create(stored, '{"turn": 0}')
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=_FullOnCommit)
    db.fail = 1
    store._local.db = db  # this thread's connection (the store closes it)
    store._connections.append(db)
    assert store.acquire(stored.id, "a", 10)
    with pytest.raises(StoreError, match="disk is full"):
        store.commit(_commit(stored, "a"))
    assert not db.in_transaction
    loaded = store.load(stored.id)
    assert loaded is not None
    assert (loaded.version, loaded.turns) == (1, 1)
    assert store.transcript(stored.id) == ['{"turn": 0}']
    other = SqliteStore(path, timeout=0.5)  # another process's writer is not locked out
    other.release(stored.id, "nobody")
    other.close()
    assert store.acquire(stored.id, "a", 10)
    assert store.commit(_commit(stored, "a")) == 2
    assert store.transcript(stored.id) == ['{"turn": 0}', '{"turn": 1}']
    store.close()
