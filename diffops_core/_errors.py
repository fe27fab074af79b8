"""Error types for bad input.

Every refusal of bad input is an `InputError`, and also the standard type its
kind calls for: `InputValueError` is a `ValueError` (a bad value),
`InputTypeError` a `TypeError` (a bad type). Callers catch ``ValueError`` and
``TypeError`` as usual; the ``diffops`` command prints an `InputError` as one
line, while any other exception (a bug) keeps its traceback.
"""

from __future__ import annotations

__all__ = ["InputError", "InputTypeError", "InputValueError"]


class InputError(Exception):
    """Bad input: the message says what was wrong and what to do."""


class InputValueError(InputError, ValueError):
    """A bad value."""


class InputTypeError(InputError, TypeError):
    """A bad type."""
