"""Errors the user can fix: the `visalign` command prints their message as one line and exits 2 (no traceback).

``UserError`` is a marker base class: each concrete error also derives from the builtin a caller would catch
(``ValueError`` for bad config values or data, ``FileNotFoundError`` for a model that is neither a folder nor
reachable), so library code and tests keep catching the usual types. The message names the file, row, key or model
and says what to pass instead.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input (config, data, model path): reported by the CLI as one line with exit code 2."""


class DataError(UserError, ValueError):
    """A dataset the trainers or scorers cannot use (missing column or caption file, bad row); names file and fix."""


class NotFoundError(UserError, FileNotFoundError):
    """A model, dataset or weights file that is neither a local path nor available from the Hugging Face Hub."""


class InputError(UserError, ValueError):
    """Bad command-line input (flags, missing files, mismatched prompts) of a `visalign` command."""
