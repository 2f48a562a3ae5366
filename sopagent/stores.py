"""Session stores: where a service keeps conversations between requests.

One `SessionStore` Protocol, two implementations:

* `SqliteStore`: one embedded database file in WAL mode, zero setup; several worker processes
  on one host may share it.
* `RedisStore`: a Redis server shared by stateless workers on any number of hosts (the
  scale-out path). ``redis`` is imported only when it is created (extra ``redis``).

A stored session is the `Session` JSON plus what the service needs around it: the tenant that
owns it, its status (``active``, ``handoff``, ``ended``), a version number that every write
increments, the transcript (one record per turn, in order) and the idempotency keys already
answered. A write happens only under a lease (`SessionStore.acquire`) and is one atomic
`SessionStore.commit`: the session, its next transcript record and the idempotency key land
together or not at all, so a crash can never leave a turn half stored.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sopagent.errors import StoreError

if TYPE_CHECKING:
    import redis

__all__ = [
    "Commit",
    "RedisStore",
    "Replay",
    "SessionStore",
    "SqliteStore",
    "Status",
    "StoredSession",
    "open_store",
]

Status = Literal["active", "handoff", "ended"]


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A session as the store holds it.

    Attributes:
        id: the session id.
        tenant: the tenant that owns it; no other tenant may read it.
        policy: the policy's name.
        policy_hash: the exact policy version the session is pinned to.
        status: ``active``, ``handoff`` (humans have it) or ``ended``.
        version: incremented by every commit; a commit names the version it read.
        turns: how many transcript records there are (the opening turn counts).
        data: the `sopagent.Session` JSON.
        created: creation time, seconds since the epoch.
        updated: time of the last commit.
    """

    id: str
    tenant: str
    policy: str
    policy_hash: str
    status: Status
    version: int
    turns: int
    data: str
    created: float
    updated: float


@dataclass(frozen=True, slots=True)
class Commit:
    """One atomic write: the new session JSON and status, one transcript record, one key.

    Attributes:
        session_id: the session written.
        tenant: the tenant that owns the session.
        owner: the lease holder; the commit fails if the lease is no longer theirs.
        version: the version the writer read; the commit fails if it changed.
        turns: the transcript length the writer read: the index of ``record``.
        data: the new session JSON.
        status: the new status.
        record: the transcript record to append (JSON), or ``None``.
        idempotency_key: the client's key for this request, or ``None``.
        digest: a digest of the request the key was sent with.
    """

    session_id: str
    tenant: str
    owner: str
    version: int
    turns: int
    data: str
    status: Status
    record: str | None = None
    idempotency_key: str | None = None
    digest: str = ""


@dataclass(frozen=True, slots=True)
class Replay:
    """The answer already given to an idempotency key: the request digest and its record."""

    digest: str
    record: str


class SessionStore(Protocol):
    """Durable storage of sessions, transcripts and idempotency keys."""

    def create(self, session: StoredSession, record: str) -> None:
        """Store a new session with its first transcript record (the opening turn).

        Raises:
            StoreError: the store failed, or a session with that id exists.
        """
        ...

    def load(self, session_id: str) -> StoredSession | None:
        """Return the session, or ``None`` if there is none with that id."""
        ...

    def transcript(self, session_id: str, start: int = 0) -> list[str]:
        """Return the transcript records from index ``start`` on, oldest first."""
        ...

    def replay(self, session_id: str, key: str) -> Replay | None:
        """Return what was answered to idempotency ``key`` of the session, if anything."""
        ...

    def acquire(self, session_id: str, owner: str, ttl: float) -> StoredSession | None:
        """Take the session's write lease for ``ttl`` seconds and return the session.

        Returns ``None`` when someone else holds the lease or there is no such session.
        """
        ...

    def release(self, session_id: str, owner: str) -> None:
        """Give the lease back if ``owner`` still holds it."""
        ...

    def commit(self, commit: Commit) -> int | None:
        """Write atomically and release the lease; return the new version.

        Returns ``None`` (and writes nothing) when the lease was lost or the version moved.
        """
        ...

    def handoffs(self, tenant: str, limit: int = 100) -> list[StoredSession]:
        """Return the tenant's sessions waiting for a human, oldest first."""
        ...

    def ping(self) -> None:
        """Raise `StoreError` unless the store answers."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def open_store(url: str) -> SessionStore:
    """Open a store from a URL: ``sqlite:///path/to/file.db``, a bare path, or ``redis://...``.

    Raises:
        StoreError: the URL names no known store, or the store cannot be opened.
    """
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        # sqlite:///relative.db and sqlite:////abs.db, as SQLAlchemy writes them.
        path = path[1:] if path.startswith("/") else path
        return SqliteStore(path or "sessions.db")
    if "://" in url:
        raise StoreError(f"unknown store {url!r}: use sqlite:///FILE or redis://HOST:PORT/DB")
    return SqliteStore(url)


# --- SQLite ------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    policy TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    turns INTEGER NOT NULL,
    data TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sessions_status ON sessions (tenant, status, updated);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (session_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    session_id TEXT NOT NULL,
    key TEXT NOT NULL,
    digest TEXT NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (session_id, key)
) WITHOUT ROWID;
"""

_COLUMNS = "id, tenant, policy, policy_hash, status, version, turns, data, created, updated"
# UPDATE ... RETURNING takes the lease and reads the session in one statement (SQLite 3.35+).
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)


class SqliteStore:
    """Sessions in one SQLite file (WAL), shared by the threads and processes of one host.

    Args:
        path: the database file; created with its tables if missing.
        synchronous: SQLite's ``synchronous`` setting. ``NORMAL`` (the default) keeps every
            committed turn through a crash or ``kill -9`` of the process; ``FULL`` also
            through a power cut, at the cost of one fsync per turn.
        timeout: seconds a writer waits for another process's write to finish.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        timeout: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self._synchronous = synchronous
        self._timeout = timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        # Writers of one process queue here rather than in SQLite's busy handler, which
        # sleeps in growing steps (up to 100 ms) while the holder may only be waiting for the
        # GIL; other processes still wait in the busy handler.
        self._writing = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._db()
            self._busy(db, "PRAGMA user_version")
            with self._writing:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._busy(db, statement)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # One connection per thread: sqlite3 connections must not be shared across threads.
            # No busy timeout: SQLite's handler sleeps in steps of up to 100 ms, so a busy
            # database is retried here in steps of a millisecond instead (see `_busy`).
            db = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
            self._busy(db, "PRAGMA journal_mode=WAL")
            self._busy(db, f"PRAGMA synchronous={self._synchronous}")
            self._local.db = db
            with self._guard:
                self._connections.append(db)
        return db

    def _busy(self, db: sqlite3.Connection, sql: str, values: Sequence[Any] = ()) -> Any:
        """Execute, retrying while another process holds the database (up to ``timeout``)."""
        deadline = time.monotonic() + self._timeout
        pause = 0.0005
        while True:
            try:
                return db.execute(sql, values)
            except sqlite3.OperationalError as exc:
                message = str(exc)
                if ("locked" not in message and "busy" not in message) or (
                    time.monotonic() > deadline
                ):
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.005)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        with self._writing:
            self._busy(db, "BEGIN IMMEDIATE")
            try:
                yield db
                # COMMIT is where a full disk shows (the WAL is written then); a COMMIT that
                # failed may leave the transaction open, holding the write lock for good.
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            db: sqlite3.Connection | None = getattr(self._local, "db", None)
            if db is not None and db.in_transaction:
                # A statement that failed on a full disk may leave its transaction open, and
                # with it the write lock: no other writer could ever go on.
                with suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise StoreError(f"SQLite store {self.path}: {what} failed: {exc}") from exc

    def create(self, session: StoredSession, record: str) -> None:
        """Store a new session with its opening transcript record."""
        s = session
        with self._errors("create"):
            try:
                with self._write() as db:
                    db.execute(
                        f"INSERT INTO sessions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (s.id, s.tenant, s.policy, s.policy_hash, s.status, s.version, 1,
                         s.data, s.created, s.updated),
                    )  # fmt: skip
                    db.execute(
                        "INSERT INTO turns (session_id, idx, record) VALUES (?, 0, ?)",
                        (s.id, record),
                    )
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"session {s.id} already exists") from exc

    def load(self, session_id: str) -> StoredSession | None:
        """Return the session or ``None``."""
        with self._errors("load"):
            row = self._row(self._db(), session_id)
        return None if row is None else StoredSession(*row)

    def transcript(self, session_id: str, start: int = 0) -> list[str]:
        """Return transcript records from ``start`` on."""
        with self._errors("transcript"):
            rows = self._busy(
                self._db(),
                "SELECT record FROM turns WHERE session_id = ? AND idx >= ? ORDER BY idx",
                (session_id, start),
            ).fetchall()
        return [row[0] for row in rows]

    def replay(self, session_id: str, key: str) -> Replay | None:
        """Return the record answered to ``key``, if any."""
        with self._errors("replay"):
            row = self._busy(
                self._db(),
                "SELECT i.digest, t.record FROM idempotency i JOIN turns t"
                " ON t.session_id = i.session_id AND t.idx = i.idx"
                " WHERE i.session_id = ? AND i.key = ?",
                (session_id, key),
            ).fetchone()
        return None if row is None else Replay(row[0], row[1])

    def acquire(self, session_id: str, owner: str, ttl: float) -> StoredSession | None:
        """Take the lease unless an unexpired one is held by someone else; return the session."""
        now = time.time()
        taking = (
            "UPDATE sessions SET lease_owner = ?, lease_until = ?"
            " WHERE id = ? AND (lease_until < ? OR lease_owner = ?)"
        )
        values = (owner, now + ttl, session_id, now, owner)
        with self._errors("acquire"), self._writing:
            db = self._db()
            if _RETURNING:
                # Every row is read: the statement commits only once it has run to the end,
                # and a commit that fails must raise here, not when the cursor is dropped.
                rows = self._busy(db, f"{taking} RETURNING {_COLUMNS}", values).fetchall()
                row = rows[0] if rows else None
            else:
                taken = self._busy(db, taking, values).rowcount == 1
                row = self._row(db, session_id) if taken else None
        return None if row is None else StoredSession(*row)

    def _row(self, db: sqlite3.Connection, session_id: str) -> Any:
        sql = f"SELECT {_COLUMNS} FROM sessions WHERE id = ?"
        return self._busy(db, sql, (session_id,)).fetchone()

    def release(self, session_id: str, owner: str) -> None:
        """Drop the lease if ``owner`` holds it."""
        with self._errors("release"), self._writing:
            self._busy(
                self._db(),
                "UPDATE sessions SET lease_owner = NULL, lease_until = 0"
                " WHERE id = ? AND lease_owner = ?",
                (session_id, owner),
            )

    def commit(self, commit: Commit) -> int | None:
        """Write the session, its record and key in one transaction, and release the lease."""
        c = commit
        now = time.time()
        turns = c.turns + (1 if c.record is not None else 0)
        with self._errors("commit"), self._write() as db:
            updated = db.execute(
                "UPDATE sessions SET data = ?, status = ?, version = ?, turns = ?, updated = ?,"
                " lease_owner = NULL, lease_until = 0"
                " WHERE id = ? AND version = ? AND turns = ? AND lease_owner = ?"
                " AND lease_until >= ?",
                (c.data, c.status, c.version + 1, turns, now, c.session_id, c.version, c.turns,
                 c.owner, now),
            ).rowcount  # fmt: skip
            if updated != 1:
                return None
            if c.record is not None:
                db.execute(
                    "INSERT INTO turns (session_id, idx, record) VALUES (?, ?, ?)",
                    (c.session_id, c.turns, c.record),
                )
                if c.idempotency_key is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO idempotency (session_id, key, digest, idx)"
                        " VALUES (?, ?, ?, ?)",
                        (c.session_id, c.idempotency_key, c.digest, c.turns),
                    )
        return c.version + 1

    def handoffs(self, tenant: str, limit: int = 100) -> list[StoredSession]:
        """Return the tenant's sessions in ``handoff``, oldest first."""
        with self._errors("handoffs"):
            rows = self._busy(
                self._db(),
                f"SELECT {_COLUMNS} FROM sessions WHERE tenant = ? AND status = 'handoff'"
                " ORDER BY updated LIMIT ?",
                (tenant, limit),
            ).fetchall()
        return [StoredSession(*row) for row in rows]

    def ping(self) -> None:
        """Run a trivial query."""
        with self._errors("ping"):
            self._busy(self._db(), "SELECT 1").fetchone()

    def close(self) -> None:
        """Close every thread's connection."""
        with self._guard:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()


# --- Redis -------------------------------------------------------------------------------------

# KEYS: session hash, transcript list, idempotency hash, lease, tenant's handoff set.
# ARGV: owner, version read, data, status, now, record ('' for none), key ('' for none), digest,
# session id, transcript length read.
_COMMIT = """
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return -1 end
local version = redis.call('HGET', KEYS[1], 'version')
if version ~= ARGV[2] then return -2 end
local turns = tonumber(redis.call('HGET', KEYS[1], 'turns'))
if turns ~= tonumber(ARGV[10]) then return -3 end
if ARGV[6] ~= '' then
    -- Records past the session's count are what a commit cut short left (see RedisStore).
    if redis.call('LLEN', KEYS[2]) > turns then redis.call('LTRIM', KEYS[2], 0, turns - 1) end
    redis.call('RPUSH', KEYS[2], ARGV[6])
    if ARGV[7] ~= '' then
        redis.call('HSET', KEYS[3], ARGV[7], ARGV[8] .. ' ' .. turns)
    end
    turns = turns + 1
end
local new = tonumber(version) + 1
redis.call('HSET', KEYS[1], 'data', ARGV[3], 'status', ARGV[4], 'version', new,
           'turns', turns, 'updated', ARGV[5])
if ARGV[4] == 'handoff' then
    redis.call('ZADD', KEYS[5], ARGV[5], ARGV[9])
else
    redis.call('ZREM', KEYS[5], ARGV[9])
end
redis.call('DEL', KEYS[4])
return new
"""

# KEYS: lease. ARGV: owner. Deletes the lease only if it is still the owner's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_FIELDS = ("tenant", "policy", "policy_hash", "status", "version", "turns", "data", "created",
           "updated")  # fmt: skip


class RedisStore:
    """Sessions in Redis, shared by any number of stateless workers.

    Each session is a hash, its transcript a list and its idempotency keys a hash; the lease is
    a key with an expiry, and a commit is one Lua script, so it is atomic. Run Redis with
    ``appendonly yes`` to keep sessions through a restart of Redis itself, and
    ``appendfsync always`` to keep every acknowledged turn through a crash of Redis.

    The session hash's ``turns`` is what counts: a commit whose effects were kept only in part
    (a crash of Redis in the middle of writing its append-only file may leave a prefix of
    them) may leave a transcript record past it, or an idempotency key pointing there. Such
    a record is not read, such a key is not replayed, and the next commit overwrites them.

    Args:
        url: ``redis://host:port/db`` (or ``rediss://``, ``unix://``).
        prefix: prepended to every key, to share a database between services.
        client: an existing ``redis.Redis`` client to use instead of ``url``.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "sopagent:",
        client: redis.Redis | None = None,
    ) -> None:
        try:
            import redis as redis_module  # noqa: PLC0415 (optional dependency: extra "redis")
        except ImportError as exc:
            raise StoreError(
                "the Redis store needs redis-py: pip install 'sopagent[redis]'"
            ) from exc
        self._redis_errors: tuple[type[Exception], ...] = (redis_module.RedisError,)
        self.url = url
        self.prefix = prefix
        # redis-py annotates replies for its sync and async clients as one union, so the
        # decoded replies of this sync client are narrowed by hand below.
        self._client: Any = client or redis_module.Redis.from_url(
            url, decode_responses=True, health_check_interval=30
        )
        self._commit = self._client.register_script(_COMMIT)
        self._release = self._client.register_script(_RELEASE)

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (handoff streams reuse it)."""
        client: redis.Redis = self._client
        return client

    def _keys(self, session_id: str) -> tuple[str, str, str, str]:
        p = self.prefix
        sid = session_id
        return f"{p}s:{sid}", f"{p}t:{sid}", f"{p}i:{sid}", f"{p}l:{sid}"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._redis_errors as exc:
            raise StoreError(f"Redis store {self.url}: {what} failed: {exc}") from exc

    def create(self, session: StoredSession, record: str) -> None:
        """Store a new session with its opening transcript record."""
        s = session
        key, turns, _, _ = self._keys(s.id)
        fields: dict[str, Any] = {
            "tenant": s.tenant, "policy": s.policy, "policy_hash": s.policy_hash,
            "status": s.status, "version": s.version, "turns": 1, "data": s.data,
            "created": repr(s.created), "updated": repr(s.updated),
        }  # fmt: skip
        with self._errors("create"):
            if not self._client.hsetnx(key, "tenant", s.tenant):
                raise StoreError(f"session {s.id} already exists")
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(key, mapping=fields)
            pipe.rpush(turns, record)
            pipe.execute()

    def load(self, session_id: str) -> StoredSession | None:
        """Return the session or ``None``."""
        key = self._keys(session_id)[0]
        with self._errors("load"):
            values = self._client.hmget(key, list(_FIELDS))
        if values[0] is None or values[6] is None:
            return None
        return self._stored(session_id, values)

    def transcript(self, session_id: str, start: int = 0) -> list[str]:
        """Return transcript records from ``start`` on."""
        key, turns_key, _, _ = self._keys(session_id)
        with self._errors("transcript"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(key, "turns")
            pipe.lrange(turns_key, start, -1)
            count, records = pipe.execute()
        if count is None:
            return []
        kept: list[str] = records[: max(0, int(count) - start)]
        return kept

    def replay(self, session_id: str, key: str) -> Replay | None:
        """Return the record answered to ``key``, if any."""
        session, turns, keys, _ = self._keys(session_id)
        with self._errors("replay"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(keys, key)
            pipe.hget(session, "turns")
            found, count = pipe.execute()
            if found is None or count is None:
                return None
            digest, _, index = found.rpartition(" ")
            if int(index) >= int(count):
                return None  # left by a commit cut short: that turn was never answered
            record: str | None = self._client.lindex(turns, int(index))
        return None if record is None else Replay(digest, record)

    def acquire(self, session_id: str, owner: str, ttl: float) -> StoredSession | None:
        """Take the lease unless someone else holds it; return the session (one round trip)."""
        key, _, _, lease = self._keys(session_id)
        with self._errors("acquire"):
            pipe = self._client.pipeline(transaction=False)
            pipe.set(lease, owner, nx=True, px=max(1, int(ttl * 1000)))
            pipe.hmget(key, list(_FIELDS))
            taken, values = pipe.execute()
            if not taken:
                return None
            if values[0] is None or values[6] is None:
                self._release(keys=[lease], args=[owner])
                return None
        return self._stored(session_id, values)

    @staticmethod
    def _stored(session_id: str, values: list[Any]) -> StoredSession:
        tenant, policy, policy_hash, status, version, turns, data, created, updated = values
        return StoredSession(
            session_id, tenant, policy, policy_hash, status, int(version), int(turns), data,
            float(created), float(updated),
        )  # fmt: skip

    def release(self, session_id: str, owner: str) -> None:
        """Drop the lease if ``owner`` holds it."""
        with self._errors("release"):
            self._release(keys=[self._keys(session_id)[3]], args=[owner])

    def commit(self, commit: Commit) -> int | None:
        """Write atomically (one Lua script) and release the lease."""
        c = commit
        keys = [*self._keys(c.session_id), f"{self.prefix}h:{c.tenant}"]
        args = [
            c.owner, c.version, c.data, c.status, repr(time.time()), c.record or "",
            c.idempotency_key or "", c.digest, c.session_id, c.turns,
        ]  # fmt: skip
        with self._errors("commit"):
            result = int(self._commit(keys=keys, args=args))  # type: ignore[arg-type]
        return result if result > 0 else None

    def handoffs(self, tenant: str, limit: int = 100) -> list[StoredSession]:
        """Return the tenant's sessions in ``handoff``, oldest first."""
        with self._errors("handoffs"):
            ids: list[str] = self._client.zrange(f"{self.prefix}h:{tenant}", 0, limit - 1)
        found = [self.load(session_id) for session_id in ids]
        return [s for s in found if s is not None]

    def ping(self) -> None:
        """Send PING."""
        with self._errors("ping"):
            self._client.ping()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
