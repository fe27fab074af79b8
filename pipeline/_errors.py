"""Every error the pipeline raises, in one module at the bottom of the rooms.

Errors a user causes and can fix derive from `diffops_core`'s `InputError`
(the CLI prints them as one line); a failed block is a `BlockError`; the rest
are signals between rooms.
"""

from __future__ import annotations

from diffops_core.internal import InputError, InputValueError

__all__ = [
    "BlockError",
    "ClusterSetupError",
    "IdentityMismatch",
    "MissingDependencyError",
    "NotEnoughMemoryError",
    "NotPositiveDefiniteError",
    "NotPositiveDefiniteTile",
    "SpecError",
    "StoreError",
]


class StoreError(InputError, ValueError):
    """The store cannot be used as asked (wrong contents, locked, unreadable)."""


class NotEnoughMemoryError(InputError, MemoryError):
    """A block task cannot fit where it would run; the message has the numbers."""


class SpecError(InputError, ValueError):
    """A workflow spec is invalid; the message names the file and the field."""


class MissingDependencyError(InputError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


class ClusterSetupError(InputError, RuntimeError):
    """The cluster cannot run the block task (a module the workers or the
    scheduler cannot import, another computation on a worker)."""


class NotPositiveDefiniteError(InputValueError):
    """A stored matrix (plus the damping) has no Cholesky factor.

    **Attributes:** `location` (the store), `columns` (``(start, stop)`` of the
    tile where the factorisation broke down), `damping`, `smallest` (the
    smallest eigenvalue of the damped matrix, None when it could not be
    resolved), `nonpositive` (how many eigenvalues found are not positive).
    The message holds the same diagnostics in words.
    """

    def __init__(
        self,
        message: str,
        *,
        location=None,
        columns: tuple[int, int] = (0, 0),
        damping: float = 0.0,
        smallest: float | None = None,
        nonpositive: int | None = None,
    ):
        super().__init__(message)
        self.location, self.columns, self.damping = location, columns, damping
        self.smallest, self.nonpositive = smallest, nonpositive


class NotPositiveDefiniteTile(ArithmeticError):
    """The diagonal tile at columns ``start:stop`` has no Cholesky factor (raised
    by a tile task; the driver turns it into a `NotPositiveDefiniteError`)."""

    def __init__(self, start: int, stop: int):
        super().__init__(start, stop)
        self.start, self.stop = start, stop


class BlockError(RuntimeError):
    """A block failed; finished blocks stay complete and a rerun resumes."""

    def __init__(self, index: int, start: int, stop: int, axis: int, cause: str):
        self.index, self.start, self.stop = index, start, stop
        what = "columns" if axis == 1 else "rows"
        super().__init__(f"block {index} ({what} {start}:{stop}) failed: {cause}")

    def __reduce__(self):  # travels back from workers intact
        return (_rebuild_block_error, (self.index, self.start, self.stop, str(self)))


def _rebuild_block_error(index, start, stop, message):
    err = BlockError.__new__(BlockError)
    err.index, err.start, err.stop = index, start, stop
    RuntimeError.__init__(err, message)
    return err


class IdentityMismatch(RuntimeError):
    """``f`` traces to another computation on a worker than on the driver."""
