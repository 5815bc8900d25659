"""One exception hierarchy so every failure reaches the user as one line with a meaningful exit code.

Exit codes follow the CI-gate convention: 1 = the thing ran and failed (a regression, a failed
download), 2 = the input was bad (malformed manifest, missing file, bad argument).
"""

from __future__ import annotations


class ZooError(Exception):
    """A failure the user can act on; `str()` is the one-line message shown by the CLI."""

    exit_code: int = 1


class InputError(ZooError):
    """Bad input: a malformed file, a missing path, an invalid argument."""

    exit_code = 2


class StackError(ZooError):
    """The installed OpenMMLab/torch stack is broken or incompatible."""

    exit_code = 3
