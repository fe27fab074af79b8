"""Error types for bad input.

Every refusal of bad input is an `InputError`, and also the standard type its
kind calls for: `InputValueError` is a `ValueError` (a bad value),
`InputTypeError` a `TypeError` (a bad type). Callers catch ``ValueError`` and
``TypeError`` as usual; the ``diffops`` command prints an `InputError` as one
line, while any other exception (a bug) keeps its traceback.
"""

from __future__ import annotations

__all__ = ["InputError", "InputTypeError", "InputValueError", "SparsityWarning"]


class InputError(Exception):
    """Bad input: the message says what was wrong and what to do."""


class InputValueError(InputError, ValueError):
    """A bad value."""


class InputTypeError(InputError, TypeError):
    """A bad type."""


class SparsityWarning(UserWarning):
    """``sparsity="auto"`` found no structure it could use because detection gave
    up (a primitive without a rule, or a pattern past its budget), and the
    dense result is computed instead: the message says where, and how to give
    the pattern."""
