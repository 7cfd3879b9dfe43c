"""The embedded default's job store: one SQLite file in WAL mode.

Each object is one row holding its whole JSON body, plus indexed columns for lookups. Writes run
in IMMEDIATE transactions with `synchronous=FULL`, so a killed controller (or a power cut) leaves
the last committed state. One connection serves every thread behind a lock: the API's request
threads and the reconciler's loop write a handful of rows a second at most.
"""

from __future__ import annotations

import base64
import builtins
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from controller.store.base import (
    AlreadyExists,
    Conflict,
    NotFound,
    Page,
    R,
    Store,
    Transition,
)
from jobs.specs import KINDS, Resource

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL UNIQUE,
    resource_version INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    phase TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    time TEXT NOT NULL,
    phase TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_uid ON history (uid, id);
CREATE TABLE IF NOT EXISTS counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counter (id, value) VALUES (1, 0);
"""


def _now() -> datetime:
    return datetime.now(UTC)


def _encode_token(namespace: str, name: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([namespace, name]).encode()).decode()


def _decode_token(token: str) -> tuple[str, str]:
    try:
        namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(namespace, str) or not isinstance(name, str):
            raise ValueError
    except Exception:  # noqa: BLE001 - any garbage is the same error
        raise ValueError("invalid continue token") from None
    return namespace, name


class SQLiteStore(Store):
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(SCHEMA)

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _next_version(db: sqlite3.Connection) -> int:
        db.execute("UPDATE counter SET value = value + 1 WHERE id = 1")
        return int(db.execute("SELECT value FROM counter WHERE id = 1").fetchone()[0])

    @staticmethod
    def _load(kind: str, body: str) -> Resource:
        return KINDS[kind].model_validate_json(body)

    @staticmethod
    def _dump(obj: Resource) -> str:
        return obj.model_dump_json(by_alias=True, exclude_none=True)

    def _row(self, db: sqlite3.Connection, kind: str, namespace: str, name: str) -> tuple:
        row = db.execute(
            "SELECT body, resource_version, generation, uid FROM objects"
            " WHERE kind = ? AND namespace = ? AND name = ?",
            (kind, namespace, name),
        ).fetchone()
        if row is None:
            raise NotFound(kind, namespace, name)
        return row

    @staticmethod
    def _check_version(obj: Resource, stored_rv: int, stored_uid: str) -> None:
        meta = obj.metadata
        if meta.uid is not None and meta.uid != stored_uid:
            raise Conflict(f'{obj.kind} "{meta.name}" was deleted and re-created')  # type: ignore[attr-defined]
        if meta.resource_version is not None and meta.resource_version != str(stored_rv):
            raise Conflict(
                f'{obj.kind} "{meta.name}" was modified (resourceVersion '  # type: ignore[attr-defined]
                f"{meta.resource_version} is stale, now {stored_rv}); read it again"
            )

    def _record(self, db: sqlite3.Connection, obj: Resource, message: str = "") -> None:
        status = obj.status  # type: ignore[attr-defined]
        db.execute(
            "INSERT INTO history (kind, namespace, name, uid, time, phase, attempt, message)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                obj.kind,  # type: ignore[attr-defined]
                obj.metadata.namespace,
                obj.metadata.name,
                obj.metadata.uid,
                _now().isoformat(),
                status.phase.value,
                status.attempt,
                message or status.message,
            ),
        )

    # ------------------------------------------------------------------ interface

    def create(self, obj: R) -> R:
        kind: str = obj.kind  # type: ignore[attr-defined]
        meta = obj.metadata
        with self._tx() as db:
            exists = db.execute(
                "SELECT 1 FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
                (kind, meta.namespace, meta.name),
            ).fetchone()
            if exists:
                raise AlreadyExists(kind, meta.namespace, meta.name)
            version = self._next_version(db)
            new = obj.model_copy(deep=True)
            new.metadata.uid = str(uuid.uuid4())
            new.metadata.creation_timestamp = _now()
            new.metadata.generation = 1
            new.metadata.resource_version = str(version)
            new.metadata.deletion_timestamp = None
            db.execute(
                "INSERT INTO objects (kind, namespace, name, uid, resource_version, generation,"
                " phase, deleted, body) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (
                    kind,
                    meta.namespace,
                    meta.name,
                    new.metadata.uid,
                    version,
                    1,
                    new.status.phase.value,  # type: ignore[attr-defined]
                    self._dump(new),
                ),
            )
            self._record(db, new, "created")
        return new

    def get(self, kind: str, name: str, namespace: str = "default") -> Resource:
        with self._lock:
            body = self._row(self._db, kind, namespace, name)[0]
        return self._load(kind, body)

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Page:
        sql = "SELECT namespace, name, body FROM objects WHERE kind = ?"
        args: list[object] = [kind]
        if namespace is not None:
            sql += " AND namespace = ?"
            args.append(namespace)
        if continue_token:
            after = _decode_token(continue_token)
            sql += " AND (namespace, name) > (?, ?)"
            args.extend(after)
        sql += " ORDER BY namespace, name"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        items: list[Resource] = []
        for _ns, _name, body in rows:
            obj = self._load(kind, body)
            if labels and any(obj.metadata.labels.get(k) != v for k, v in labels.items()):
                continue
            if limit is not None and len(items) == limit:
                last = items[-1].metadata
                return Page(items, _encode_token(last.namespace, last.name))
            items.append(obj)
        return Page(items, None)

    def update(self, obj: R) -> R:
        kind: str = obj.kind  # type: ignore[attr-defined]
        meta = obj.metadata
        with self._tx() as db:
            body, rv, generation, uid = self._row(db, kind, meta.namespace, meta.name)
            self._check_version(obj, rv, uid)
            stored = self._load(kind, body)
            new = stored.model_copy(deep=True)
            new.metadata.labels = dict(meta.labels)
            new.metadata.annotations = dict(meta.annotations)
            if obj.spec != stored.spec:  # type: ignore[attr-defined]
                new.spec = obj.spec.model_copy(deep=True)  # type: ignore[attr-defined]
                generation += 1
            version = self._next_version(db)
            new.metadata.generation = generation
            new.metadata.resource_version = str(version)
            db.execute(
                "UPDATE objects SET resource_version = ?, generation = ?, body = ?"
                " WHERE kind = ? AND namespace = ? AND name = ?",
                (version, generation, self._dump(new), kind, meta.namespace, meta.name),
            )
        return new  # type: ignore[return-value]

    def update_status(self, obj: R) -> R:
        kind: str = obj.kind  # type: ignore[attr-defined]
        meta = obj.metadata
        with self._tx() as db:
            body, rv, _generation, uid = self._row(db, kind, meta.namespace, meta.name)
            self._check_version(obj, rv, uid)
            stored = self._load(kind, body)
            new = stored.model_copy(deep=True)
            new.status = obj.status.model_copy(deep=True)  # type: ignore[attr-defined]
            version = self._next_version(db)
            new.metadata.resource_version = str(version)
            db.execute(
                "UPDATE objects SET resource_version = ?, phase = ?, body = ?"
                " WHERE kind = ? AND namespace = ? AND name = ?",
                (
                    version,
                    new.status.phase.value,  # type: ignore[attr-defined]
                    self._dump(new),
                    kind,
                    meta.namespace,
                    meta.name,
                ),
            )
            old_status, new_status = stored.status, new.status  # type: ignore[attr-defined]
            if (old_status.phase, old_status.attempt) != (new_status.phase, new_status.attempt):
                self._record(db, new)
        return new  # type: ignore[return-value]

    def mark_deleted(self, kind: str, name: str, namespace: str = "default") -> Resource:
        with self._tx() as db:
            body = self._row(db, kind, namespace, name)[0]
            obj = self._load(kind, body)
            if obj.metadata.deletion_timestamp is not None:
                return obj
            version = self._next_version(db)
            obj.metadata.deletion_timestamp = _now()
            obj.metadata.resource_version = str(version)
            db.execute(
                "UPDATE objects SET resource_version = ?, deleted = 1, body = ?"
                " WHERE kind = ? AND namespace = ? AND name = ?",
                (version, self._dump(obj), kind, namespace, name),
            )
        return obj

    def remove(self, kind: str, name: str, namespace: str, uid: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ? AND uid = ?",
                (kind, namespace, name, uid),
            )
            db.execute("DELETE FROM history WHERE uid = ?", (uid,))

    def history(
        self, kind: str, name: str, namespace: str = "default"
    ) -> builtins.list[Transition]:
        with self._lock:
            uid = self._row(self._db, kind, namespace, name)[3]
            rows = self._db.execute(
                "SELECT time, phase, attempt, message FROM history WHERE uid = ? ORDER BY id",
                (uid,),
            ).fetchall()
        return [
            Transition(time=datetime.fromisoformat(t), phase=p, attempt=a, message=m)
            for t, p, a, m in rows
        ]

    def count_by_phase(self) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, phase, COUNT(*) FROM objects GROUP BY kind, phase"
            ).fetchall()
        return {(kind, phase): count for kind, phase, count in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
