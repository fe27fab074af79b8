"""One writer per store, on every backend: the run lock of a local store (an
OS lock the kernel releases when its holder dies) and the run lease beside it
everywhere (an object created atomically where the store is, renewed while
the run lives, taken over only once it expired or its holder is known dead).

The lease is ``diffops.lease.<generation>``: the highest generation present
is the holder. Taking it is an exclusive create (``O_EXCL``-like hard link on
POSIX filesystems, NFS and Lustre included; ``If-None-Match: *`` on S3) of
generation 0 where there is none, or of the next generation where the
current one expired: of two runs that try at once, exactly one creates it.
The holder rewrites its own generation every quarter of `LEASE_SECONDS`,
checking that no higher one appeared; a holder that cannot renew for half of
it, or finds a higher generation, has lost the store and its run fails when
it ends. A lease of a process of this host that no longer lives is taken at
once (a killed run resumes without waiting). Hosts' clocks must agree to well
within `LEASE_SECONDS` (NTP): a lease of another host is taken over only
`LEASE_SECONDS / 2` after its expiry by this host's clock.

Backends with no atomic create (fsspec filesystems other than local and S3)
are refused unless the caller says there is a single writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import psutil

from .._errors import StoreError
from ._format import LOCK_NAME
from ._location import LEASE_PREFIX, Files, local_path, normalise_location, read_meta

__all__ = ["LEASE_SECONDS", "Lease", "RunLock", "lease_alive", "lock_is_free"]

#: How long a lease lasts without renewal (seconds); renewed every quarter of it.
LEASE_SECONDS = 60.0


def _kernel_locks() -> set[tuple[int, int, int]] | None:
    """(major, minor, inode) of every file this kernel holds a lock on, from
    ``/proc/locks``; None where there is no such table."""
    try:
        with open("/proc/locks") as fh:
            text = fh.read()
    except OSError:
        return None
    found = set()
    for line in text.splitlines():
        for field in line.split():
            parts = field.split(":")
            if len(parts) == 3 and all(parts):
                with contextlib.suppress(ValueError):
                    found.add((int(parts[0], 16), int(parts[1], 16), int(parts[2])))
                break
    return found


def lock_is_free(location) -> bool:
    """Whether no process on this host holds the lock of a local store, read
    from the kernel's lock table without taking the lock (a probe that took it,
    however briefly, could make a run starting then refuse). False where it
    cannot be told: a remote store, no lock table. A lock taken on another host
    of a network filesystem is not in this host's table: ask only about runs
    of this host."""
    path = local_path(location)
    if path is None:
        return False
    name = os.path.join(path, LOCK_NAME)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    held = _kernel_locks()
    if held is None:
        return False
    return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) not in held


class RunLock:
    """An exclusive OS lock (`filelock`) on ``diffops.lock`` in a local store.

    The kernel releases it when the holding process dies, however it dies, so
    there is no stale lock to guess about on a local filesystem. On a network
    filesystem the lock is only as good as the filesystem's own locking (NFSv4
    leases expire a while after a node dies); ``break_lock=True`` takes over a
    lock that a vanished host still holds: it replaces the lock file, so the
    old holder, if it is in fact alive, no longer excludes anyone. Object
    stores have no lock: run one writer per store there.
    """

    NAME = LOCK_NAME
    #: Locks this process holds, by path: (holding thread, depth, the lock). A
    #: thread that holds a store's lock may take it again (a run's finalize
    #: factorises under the lock the run holds); another thread may not.
    _held: dict[str, tuple[int, int, Any]] = {}
    _held_lock = threading.Lock()

    def __init__(
        self, location, *, break_lock: bool = False, holder=None, single_writer: bool = False
    ):
        location = normalise_location(location)
        self.location = location
        path = local_path(location)
        self.directory = path
        # one key per store, however it is spelt (the reentrant hold is by key)
        self.path = os.path.join(os.path.realpath(path), self.NAME) if path is not None else None
        self.key = self.path if path is not None else _remote_key(location)
        self.break_lock = break_lock
        self.single_writer = single_writer
        # who holds it, for the message: (location) -> words or None
        self.holder = holder
        self._lock = None

    def acquire(self):
        me = threading.get_ident()
        with RunLock._held_lock:
            held = RunLock._held.get(self.key)
            if held is not None and held[0] == me:
                RunLock._held[self.key] = (me, held[1] + 1, held[2])
                self._lock = held[2]
                return self
        lock: Any = _Both(self._os_lock(), None)
        try:
            lock.lease = Lease(
                self.location, break_lock=self.break_lock, single_writer=self.single_writer,
                holder=self.holder,
            ).acquire()  # fmt: skip
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        with RunLock._held_lock:
            RunLock._held[self.key] = (me, 1, lock)
        return self

    def _os_lock(self):
        """The kernel's lock on a local store's lock file (None elsewhere)."""
        if self.path is None:
            return None
        import filelock

        os.makedirs(self.directory, exist_ok=True)
        if self.break_lock:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        lock = filelock.FileLock(self.path, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            who = (self.holder or _holder)(self.directory)
            raise StoreError(
                f"another run{f' ({who})' if who else ''} is writing to {self.directory!r}; "
                "wait for it to finish. If that run is gone but its host still holds the lock "
                "(a network filesystem after a node failed), pass break_lock=True "
                "(diffops run --break-lock)"
            ) from None
        return lock

    def check(self) -> None:
        """**Raises:** `StoreError` when the lease was lost while held (another
        run took the store over): what this run wrote may be mixed with its."""
        if self._lock is not None and self._lock.lease is not None:
            self._lock.lease.check()

    def release(self):
        if self._lock is None:
            return
        with RunLock._held_lock:
            _thread, depth, lock = RunLock._held[self.key]
            if depth > 1:
                RunLock._held[self.key] = (_thread, depth - 1, lock)
            else:
                del RunLock._held[self.key]
                lock.release()
        self._lock = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, kind, value, traceback):
        try:
            if kind is None:
                self.check()  # a run that lost its store says so, never success
        finally:
            self.release()


def _holder(location) -> str | None:
    """Who holds the lock, from the store's run history (for the refusal)."""
    try:
        runs = read_meta(location).get("runs") or []
    except Exception:  # noqa: BLE001 - no history to read: say nothing
        return None
    running = [r for r in runs if isinstance(r, dict) and r.get("status") == "running"]
    if not running:
        return None
    r = running[-1]
    return f"run {r.get('run')}, pid {r.get('pid')} on {r.get('host')} since {r.get('start')}"


class _Both:
    """A held run lock: the OS lock (local stores) and the lease."""

    def __init__(self, os_lock, lease):
        self.os_lock, self.lease = os_lock, lease

    def release(self):
        try:
            if self.lease is not None:
                self.lease.release()
        finally:
            if self.os_lock is not None:
                self.os_lock.release()


def _remote_key(location) -> str:
    if isinstance(location, str):
        return location.rstrip("/")
    return f"{type(location).__name__}:{id(location)}"


def _this_process() -> dict:
    proc = psutil.Process()
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": proc.create_time()}


def _generations(files: Files) -> dict[int, str]:
    found = {}
    for key in files.listing_top(LEASE_PREFIX):
        tail = key[len(LEASE_PREFIX) :]
        if key.startswith(LEASE_PREFIX) and tail.isdigit():
            found[int(tail)] = key
    return found


def _read(files: Files, key: str) -> dict | None:
    """A lease's document; None when it is gone; ``{}`` when it does not parse
    (leases are written whole, so that is damage): held by an unknown holder
    until ``break_lock`` takes it over."""
    try:
        doc = json.loads(files.read(key))
        return doc if isinstance(doc, dict) else {}
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


def _alive(doc: dict, now: float | None = None) -> bool:
    """Whether a lease still holds: its process lives (this host), or it has
    not expired by this host's clock with half a lease of grace (another)."""
    if doc.get("host") == socket.gethostname() and isinstance(doc.get("pid"), int):
        try:
            proc = psutil.Process(doc["pid"])
            return abs(proc.create_time() - float(doc.get("pid_start", 0))) < 1.0
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError, TypeError):
            return False
    try:
        expires = float(doc["expires"])
    except (KeyError, TypeError, ValueError):
        return True  # unknown: held, until broken by hand
    return (time.time() if now is None else now) <= expires + LEASE_SECONDS / 2


def lease_alive(location) -> bool | None:
    """Whether a live lease is on ``location``: None where it cannot be read."""
    try:
        files = Files(location)
        gens = _generations(files)
        if not gens:
            return False
        doc = _read(files, gens[max(gens)])
    except Exception:  # noqa: BLE001 - cannot tell
        return None
    return doc is not None and _alive(doc)


def _describe(doc: dict) -> str:
    if not doc:
        return "an unreadable lease"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(doc.get("renewed", 0))))
    return f"pid {doc.get('pid')} on {doc.get('host')}, lease renewed {when} UTC"


class Lease:
    """The run lease of a store (see the module's docstring). ``acquire`` takes
    it or raises `StoreError` naming the holder; a thread renews it until
    ``release``; ``check`` raises if it was lost meanwhile."""

    def __init__(self, location, *, break_lock=False, single_writer=False, holder=None):
        self.location = normalise_location(location)
        self.break_lock, self.single_writer, self.holder = break_lock, single_writer, holder
        self.files: Files | None = None
        self.key: str | None = None
        self.doc: dict = {}
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> Lease:
        files = Files(self.location)
        if not files.atomic:
            if self.single_writer:
                return self
            raise StoreError(
                f"{self.location!r} is on {files.protocol}, which offers no atomic create, so "
                "diffops cannot make sure that only one run writes there (two runs would mix "
                "their blocks). If you are sure only one run writes to it at a time, pass "
                "single_writer=True (diffops run --single-writer); else use a local or "
                "network filesystem path, or S3"
            )
        self.files = files
        for _attempt in range(8):
            gens = _generations(files)
            target = 0
            if gens:
                top = max(gens)
                doc = _read(files, gens[top])
                if doc is None:
                    continue  # released meanwhile: look again
                if not self.break_lock and _alive(doc):
                    raise self._refusal(doc)
                target = top + 1
            self.doc = {**_this_process(), "token": uuid.uuid4().hex, "generation": target}
            self._stamp()
            key = f"{LEASE_PREFIX}{target}"
            if not files.create(key, json.dumps(self.doc).encode()):
                continue  # another run took it first: its lease is read next time
            if max(_generations(files)) != target:  # a later taker won meanwhile
                files.remove(key)
                continue
            self.key = key
            for generation, old in gens.items():
                if generation < target:
                    files.remove(old)  # taken over: the expired holder's
            self._thread = threading.Thread(target=self._renew, name="diffops-lease", daemon=True)
            self._thread.start()
            return self
        raise StoreError(
            f"could not take the run lease of {self.location!r}: other runs kept taking it; "
            "wait for them to finish"
        )

    def _refusal(self, doc: dict) -> StoreError:
        who = (self.holder or _holder)(self.location) or _describe(doc)
        return StoreError(
            f"another run ({who}) is writing to {self.location!r}; wait for it to finish. "
            f"If that run is gone (its host died), its lease expires {LEASE_SECONDS:.0f} s "
            "after its last renewal; to take it over now, pass break_lock=True "
            "(diffops run --break-lock)"
        )

    def _stamp(self) -> None:
        now = time.time()
        self.doc.update(renewed=now, expires=now + LEASE_SECONDS, seconds=LEASE_SECONDS)

    def _renew(self) -> None:
        assert self.files is not None and self.key is not None
        last = time.monotonic()
        while not self._stop.wait(LEASE_SECONDS / 4):
            try:
                gens = _generations(self.files)
                mine = _read(self.files, self.key)
                if (
                    mine is None
                    or mine.get("token") != self.doc["token"]
                    or max(gens) > int(self.doc["generation"])
                ):
                    holder = _read(self.files, gens[max(gens)]) if gens else None
                    self.lost = f"another run took the store over ({_describe(holder or {})})"
                    return
                self._stamp()
                self.files.write(self.key, json.dumps(self.doc).encode())
                last = time.monotonic()
            except Exception as err:  # noqa: BLE001 - retried; lost after half a lease
                if time.monotonic() - last > LEASE_SECONDS / 2:
                    self.lost = f"the lease could not be renewed ({type(err).__name__}: {err})"
                    return

    def check(self) -> None:
        if self.lost is not None:
            raise StoreError(
                f"this run lost the run lease of {self.location!r}: {self.lost}. Blocks it "
                "wrote may be mixed with another run's: run `diffops verify` on the store, or "
                "recompute it (overwrite=True)"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.files is not None and self.key is not None and self.lost is None:
            mine = _read(self.files, self.key)
            if mine is not None and mine.get("token") == self.doc.get("token"):
                self.files.remove(self.key)
        self.key = None
