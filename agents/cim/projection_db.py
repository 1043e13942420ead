"""Read models that survive restarts: one SQLite file per agent, checkpointed with the stream.

An agent's projections (the pipeline's search index and relation graph, the dashboard's unit
list) live in one SQLite database under its state directory, together with the position in
CIM_EVENTS they cover, written in the same transaction as the rows. On start the agent
resumes after that position and replays only what is newer.

Why SQLite: it is in Python's standard library and in every Python nixpkgs builds, one
transaction covers the rows and the checkpoint (so a projection is never ahead of what it
says it covers), FTS5 is a real search engine (stemming, phrases, prefixes, snippets, BM25),
and one file is simple to wipe and rebuild.

Before it is used, a checkpoint is checked against the stream: the stream's creation time
(a stream recreated by `cim restore` is another stream), its end (a projection cannot be
ahead of it) and the id of the event at the checkpoint (the same history). A file that fails
SQLite's own check, or whose schema is older, is set aside and rebuilt by replay, and the log
says why. A projection is rebuilt, never served, once it is found corrupt.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, ProjectionUnavailable
from .events import EventStore, StoredEvent
from .names import EVENTS_STREAM
from .nats.api import api, not_found
from .nats.read import last_seq
from .tasks import cancel_and_wait

log = logging.getLogger("cim.projections")

BATCH = 1000  # events applied per transaction while catching up
WATCH_SECONDS = 2.0  # how often a running feed checks that its stream is still the same one


@dataclass(frozen=True)
class Checkpoint:
    stream_created: str
    seq: int
    event_id: str
    # Every event the projection reads, up to this stream sequence, is applied (events it
    # does not read may follow `seq`): a start on a stream that ends here has nothing to do,
    # and need not ask where its subjects end (a second per subject at a million units).
    covered: int = 0


# SQLite's primary result codes that mean the file itself is damaged; anything else (a full
# disk, an I/O error, a read-only file) is a condition to report and retry, not a reason to
# throw a good projection away.
CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def is_corrupt(err: sqlite3.DatabaseError) -> bool:
    return str(getattr(err, "sqlite_errorname", "")).startswith(CORRUPT)


def state_dir(configured: Path | None) -> Path | None:
    """Where an agent keeps its state: its `state_dir` setting, else systemd's
    $STATE_DIRECTORY (NixOS: the unit's StateDirectory), else nowhere (kept in memory)."""
    if configured is not None:
        return configured
    env = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(env) if env else None


class ProjectionDb:
    """One SQLite file of read models and the stream position they cover.

    `schema` is the DDL of the model's tables; `version` names it: a file written with
    another version is rebuilt (the rows would not mean what the code reads them as).
    """

    def __init__(self, directory: Path | None, name: str, *, schema: str, version: int):
        self.path = directory / f"{name}.sqlite" if directory is not None else None
        self.name = name
        self.schema = schema
        self.version = version
        self.conn: sqlite3.Connection = sqlite3.connect(":memory:")
        self._lock: Any = None
        self.rebuilt_because: str | None = None

    def open(self) -> None:
        if self.path is None:
            self.conn = self._connect(":memory:")
            self.rebuilt_because = "no state directory: kept in memory and rebuilt at every start"
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._take_lock()
            reason = self._problem() if self.path.exists() else "no projection file yet"
            if reason:
                self._set_aside(reason)
            self.conn = self._connect(str(self.path))
        except OSError as err:
            raise ConfigError(str(self.path.parent), [("state_dir", (
                f"cannot keep the projection in {self.path.parent}: {err.strerror or err}; give the agent a state "
                "directory it can write (state_dir, or the unit's StateDirectory)"))]) from None
        except sqlite3.OperationalError as err:
            raise ConfigError(str(self.path.parent), [("state_dir", (
                f"cannot open {self.path}: {err}; check the disk and the directory's permissions"))]) from None

    def _take_lock(self) -> None:
        """Two agents writing one projection would each checkpoint the other's rows."""
        assert self.path is not None
        lock_path = self.path.with_suffix(".lock")
        self._lock = lock_path.open("a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise ConfigError(str(lock_path.parent), [(
                "state_dir", f"{lock_path.parent} is in use by another agent; give each instance its own state_dir")]) from None

    def _problem(self) -> str | None:
        """Why the file on disk cannot be resumed from, or None."""
        assert self.path is not None
        clean = self._closed_cleanly()
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                # SQLite's own check reads the whole file: seconds at a million units. It runs
                # unless the file is exactly as this agent left it at its last clean stop (a
                # crash, or any write since, and it runs); damage found later by a query or a
                # write still rebuilds it.
                if not clean:
                    started = time.monotonic()
                    ok = conn.execute("PRAGMA quick_check").fetchone()
                    if not ok or ok[0] != "ok":
                        return f"it is corrupt ({ok[0] if ok else 'no answer'})"
                    log.info("projection %s: not closed cleanly at its last stop; checked in %.1f s", self.path,
                             time.monotonic() - started)
                else:
                    log.info("projection %s: closed cleanly at its last stop; resuming without a full check", self.path)
                found = conn.execute("SELECT version FROM cim_checkpoint WHERE id = 1").fetchone()
            finally:
                conn.close()
        except sqlite3.DatabaseError as err:
            return f"it is corrupt ({err})"
        if not found:
            return "it has no checkpoint"
        if found[0] != self.version:
            return f"it was written by schema {found[0]}, this agent reads schema {self.version}"
        return None

    def _stamp_path(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.name + ".closed")

    def _closed_cleanly(self) -> bool:
        """The file's size and modification time are those recorded when it was last closed."""
        stamp = self._stamp_path()
        try:
            recorded = stamp.read_text().split()
            st = os.stat(self.path)  # type: ignore[arg-type]
            wal = os.path.exists(f"{self.path}-wal")
        except (OSError, ValueError):
            return False
        finally:
            with contextlib.suppress(OSError):
                stamp.unlink()  # the file is about to change: the stamp no longer holds
        return not wal and recorded == [str(st.st_size), str(st.st_mtime_ns)]

    def _set_aside(self, reason: str) -> None:
        """Move a file that cannot be resumed from out of the way (kept, the last one only, as
        `<name>.sqlite.bad` for an operator to look at) and start an empty one."""
        assert self.path is not None
        existed = self.path.exists()
        if existed:
            os.replace(self.path, f"{self.path}.bad")  # a rename: it needs no free space
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{self.path}.bad{suffix}")
        self.rebuilt_because = reason
        if existed:
            log.warning("projection %s: %s; moved to %s.bad, rebuilding it by replaying the event stream", self.path,
                        reason, self.path.name)

    def _connect(self, where: str) -> sqlite3.Connection:
        conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        # WAL: readers never wait for the writer. synchronous=NORMAL: a power cut may lose the
        # last transactions, never corrupt; a lost one is replayed (the checkpoint went too).
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.executescript(
            "CREATE TABLE IF NOT EXISTS cim_checkpoint (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL,"
            " stream_created TEXT NOT NULL, seq INTEGER NOT NULL, event_id TEXT NOT NULL,"
            " covered INTEGER NOT NULL DEFAULT 0);" + self.schema)
        if "covered" not in [row[1] for row in conn.execute("PRAGMA table_info(cim_checkpoint)")]:
            conn.execute("ALTER TABLE cim_checkpoint ADD COLUMN covered INTEGER NOT NULL DEFAULT 0")  # files from before it
        return conn

    def checkpoint(self) -> Checkpoint | None:
        row = self.conn.execute("SELECT stream_created, seq, event_id, covered FROM cim_checkpoint WHERE id = 1").fetchone()
        return Checkpoint(*row) if row else None

    def commit(self, apply: Callable[[sqlite3.Connection], None], stream_created: str, last: StoredEvent,
               covered: int = 0) -> None:
        """Apply rows and move the checkpoint to `last` in one transaction."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            apply(self.conn)
            self.conn.execute(
                "INSERT INTO cim_checkpoint (id, version, stream_created, seq, event_id, covered) VALUES (1, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version, stream_created = excluded.stream_created,"
                " seq = excluded.seq, event_id = excluded.event_id, covered = excluded.covered",
                (self.version, stream_created, last.seq, last.id, max(covered, last.seq)))
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def reset(self, reason: str) -> None:
        """Drop everything and start from an empty file (a stream restored, a corrupt page).
        If the file cannot be moved aside, the projection is kept in memory until the agent
        restarts, and the log says what to fix: a projection is never left unusable."""
        self.conn.close()
        if self.path is not None:
            try:
                self._set_aside(reason)
                self.conn = self._connect(str(self.path))
                return
            except (OSError, sqlite3.Error) as err:
                log.error("projection %s: %s, and it cannot be replaced (%s); kept in memory until the agent restarts: "
                          "check the state directory's disk and permissions", self.path, reason, err)
        else:
            log.warning("projection %s: %s; rebuilding it by replay", self.name, reason)
        self.rebuilt_because = reason
        self.conn = self._connect(":memory:")

    def close(self) -> None:
        """Close, and stamp the file as closed cleanly: the next start skips the full check."""
        clean = True
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
        except sqlite3.Error:
            clean = False
        self.conn.close()
        if clean and self.path is not None and self.path.exists() and not os.path.exists(f"{self.path}-wal"):
            with contextlib.suppress(OSError):
                st = self.path.stat()
                tmp = self._stamp_path().with_suffix(".tmp")
                tmp.write_text(f"{st.st_size} {st.st_mtime_ns}\n")
                os.replace(tmp, self._stamp_path())
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class _Rebuild(Exception):
    """A rebuild was asked for; its reason."""


Apply = Callable[[list[StoredEvent]], Any]  # returns rows to write: Callable[[Connection], None], maybe awaited


class Follower:
    """Feeds one ProjectionDb from CIM_EVENTS: resumes after the checkpoint, then follows live.

    `prepare(events)` is awaited outside the transaction (it may read content) and returns the
    function that writes the rows; that runs with the checkpoint in one transaction.
    `on_new_stream()` is awaited when the stream turns out to be another one than the feed
    read before (recreated while the agent ran), before anything of it is applied: what the
    agent keeps beside the rows (the dashboard's last events) starts over too.
    """

    def __init__(self, events: EventStore, db: ProjectionDb, subjects: list[str], prepare: Apply,
                 on_new_stream: Callable[[], Awaitable[None]] | None = None):
        self.events = events
        self.db = db
        self.subjects = subjects
        self.prepare = prepare
        self.on_new_stream = on_new_stream
        self.replayed = 0  # events applied since this agent started (a resumed start applies few)
        self.caught_up = asyncio.Event()
        self.interrupted = False
        self.started_at = time.monotonic()
        self._created = ""
        self._stream_end = 0
        self._rebuild: asyncio.Future[str] | None = None
        self._asked: str | None = None  # a rebuild asked for while no feed was running

    def rebuild(self, why: str) -> None:
        """Start over from an empty projection (a query found it damaged): the feed stops,
        the file is set aside, and the replay starts from the first event."""
        self.caught_up.clear()
        if self._rebuild is not None and not self._rebuild.done():
            self._rebuild.set_result(why)
        else:
            self._asked = why

    @property
    def as_of(self) -> int:
        cp = self.db.checkpoint()
        return cp.seq if cp else 0

    @property
    def stale(self) -> bool:
        """Behind the stream as far as it knows: still catching up, or cut off from it."""
        return not self.caught_up.is_set() or self.interrupted

    def state(self) -> dict[str, Any]:
        return {"as_of": self.as_of, "stale": self.stale}

    async def run(self) -> None:
        while True:
            try:
                if self._asked:
                    why, self._asked = self._asked, None
                    raise _Rebuild(why)
                await self._verify()
                await self._follow()
            except asyncio.CancelledError:
                raise
            except _Rebuild as why:
                self.caught_up.clear()
                self.db.reset(str(why))
            except sqlite3.DatabaseError as err:
                self.caught_up.clear()
                if is_corrupt(err):
                    self.db.reset(f"it failed while being written ({err})")
                    continue
                # A full disk, an I/O error, a read-only file: the transaction was rolled back
                # and the good rows stay; say what is wrong and try again.
                self.interrupted = True
                log.error("projection %s: cannot write it (%s); free space or fix the state directory, it resumes "
                          "after #%d by itself", self.db.path or self.db.name, err, self.as_of)
                await asyncio.sleep(5)  # backoff before writing again, not a wait for a condition
            except Exception as err:  # the feed, or a read the batch needed, failed: resume after the checkpoint
                self.interrupted = True
                self.caught_up.clear()  # until the feed is back and has caught up again
                log.warning("projection %s: event feed interrupted (%s); resuming after #%d", self.db.name, err,
                            self.as_of)
                await asyncio.sleep(2)  # backoff before a new catch-up, not a wait for a condition

    async def _verify(self) -> None:
        """Is the checkpoint about this stream's history? If not, start over."""
        info = await api(self.events.nc, f"STREAM.INFO.{EVENTS_STREAM}", timeout=self.events.timeout)
        if "error" in info:
            raise ProjectionUnavailable(f"cannot read {EVENTS_STREAM}: {info['error'].get('description')}")
        created = str(info.get("created", ""))
        if self._created and created != self._created and self.on_new_stream is not None:
            await self.on_new_stream()  # before `_created` moves: should it fail, the next try calls it again
        self._created = created
        end = self._stream_end = int(info.get("state", {}).get("last_seq", 0))
        cp = self.db.checkpoint()
        if cp is None:
            return
        why = None
        if cp.stream_created != self._created:
            why = f"{EVENTS_STREAM} was recreated since the checkpoint (restored?)"
        elif cp.seq > end:
            why = f"the checkpoint (#{cp.seq}) is ahead of {EVENTS_STREAM}, which ends at #{end}"
        else:
            try:
                msg = await self.events.js.get_msg(EVENTS_STREAM, cp.seq)
            except Exception as err:
                if not not_found(err):
                    raise  # a timeout, a leader election: try again, do not throw the projection away
                why = f"event #{cp.seq} of the checkpoint is not in {EVENTS_STREAM}"
            else:
                found = StoredEvent.from_message(msg.subject or "", cp.seq, dict(msg.headers or {}), msg.data or b"")
                if found.id != cp.event_id:
                    why = f"event #{cp.seq} is not the one the checkpoint recorded"
        if why:
            self.db.reset(why)

    async def _stream_created(self) -> str:
        info = await api(self.events.nc, f"STREAM.INFO.{EVENTS_STREAM}", timeout=self.events.timeout)
        return str(info.get("created", "")) if "error" not in info else ""

    async def _watch_stream(self, rebuild: asyncio.Future[str]) -> None:
        """A stream deleted and created again while the feed runs (`cim restore` on a wiped
        leaf) is another history: the feed's position means nothing there."""
        while not rebuild.done():
            await asyncio.sleep(WATCH_SECONDS)  # the polling interval, not a wait for a condition
            with contextlib.suppress(Exception):  # unreachable now: the feed says so itself
                created = await self._stream_created()
                if created and created != self._created and not rebuild.done():
                    rebuild.set_result(f"{EVENTS_STREAM} was recreated while the agent ran (restored?)")

    async def _follow(self) -> None:
        self.interrupted = False  # the stream answered (_verify): stale now only while catching up
        start = self.as_of + 1
        cp = self.db.checkpoint()
        stream_end = self._stream_end
        if cp is not None and cp.covered >= stream_end:
            end = 0  # nothing new since the last run: no need to ask where the subjects end
        else:
            end = await last_seq(self.events.nc, EVENTS_STREAM, self.subjects, self.events.timeout)
        if end < start:
            self._caught_up()
            if cp is not None and cp.covered < stream_end:  # what came since is none of ours
                self.db.conn.execute("UPDATE cim_checkpoint SET covered = ? WHERE id = 1", (stream_end,))
        queue: asyncio.Queue[StoredEvent] = asyncio.Queue(maxsize=BATCH * 4)

        async def read() -> None:
            async for e in self.events.read(self.subjects, start_seq=start, follow=True, batch=BATCH):
                await queue.put(e)

        reader = asyncio.create_task(read(), name=f"projection-{self.db.name}-read")
        self._rebuild = rebuild = asyncio.get_running_loop().create_future()
        watcher = asyncio.create_task(self._watch_stream(rebuild), name=f"projection-{self.db.name}-watch")
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, reader, rebuild}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    if rebuild.done():
                        raise _Rebuild(rebuild.result())
                    reader.result()  # raises what ended the read
                    raise ProjectionUnavailable("the event feed ended")
                batch = [getter.result()]
                while len(batch) < BATCH and not queue.empty():
                    batch.append(queue.get_nowait())
                write = self.prepare(batch)
                if asyncio.iscoroutine(write):
                    write = await write
                if rebuild.done():  # asked for while the batch's content was read: not written
                    raise _Rebuild(rebuild.result())
                # Reaching the last event of ours that existed at the start covers the stream
                # as far as it went then.
                reached = batch[-1].seq >= end
                self.db.commit(write, self._created, batch[-1], covered=stream_end if reached else 0)
                self.replayed += len(batch)
                self.interrupted = False
                if reached:
                    self._caught_up()
        finally:
            self._rebuild = None
            if not rebuild.done():
                rebuild.cancel()  # the watcher's loop ends on it too, whatever becomes of its cancellation
            await cancel_and_wait(reader, watcher)

    def _caught_up(self) -> None:
        if not self.caught_up.is_set():
            self.caught_up.set()
            log.info("projection %s caught up at #%d (%d events applied since start, %.1f s)%s", self.db.name,
                     self.as_of, self.replayed, time.monotonic() - self.started_at,
                     f"; rebuilt because {self.db.rebuilt_because}" if self.db.rebuilt_because else "")
