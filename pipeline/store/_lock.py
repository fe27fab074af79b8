"""The run lock of a local store, and whether anyone holds it."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from .._errors import StoreError
from ._format import LOCK_NAME
from ._location import local_path, read_meta

__all__ = ["RunLock", "lock_is_free"]


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

    def __init__(self, location, *, break_lock: bool = False, holder=None):
        path = local_path(location)
        self.directory = path
        # one key per directory, however it is spelt (the reentrant hold is by path)
        self.path = os.path.join(os.path.realpath(path), self.NAME) if path is not None else None
        self.break_lock = break_lock
        # who holds it, for the message: (location) -> words or None
        self.holder = holder
        self._lock = None

    def acquire(self):
        if self.path is None:  # remote stores: no lock (documented)
            return self
        import filelock

        me = threading.get_ident()
        with RunLock._held_lock:
            held = RunLock._held.get(self.path)
            if held is not None and held[0] == me:
                RunLock._held[self.path] = (me, held[1] + 1, held[2])
                self._lock = held[2]
                return self
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
        self._lock = lock
        with RunLock._held_lock:
            RunLock._held[self.path] = (me, 1, lock)
        return self

    def release(self):
        if self._lock is None:
            return
        with RunLock._held_lock:
            _thread, depth, lock = RunLock._held[self.path]
            if depth > 1:
                RunLock._held[self.path] = (_thread, depth - 1, lock)
            else:
                del RunLock._held[self.path]
                lock.release()
        self._lock = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
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
