"""One exception root for everything a user can cause.

Every error a person can fix carries a one-line message that says what is
wrong and how to fix it; the CLI prints exactly that line (the traceback only
with ``MLTRAIN_FULL_ERROR=1``). Anything *not* derived from ``MltrainError``
is a bug in mltrain and is reported as such.
"""

from __future__ import annotations


class MltrainError(Exception):
    """Root of all user-facing errors. ``str(err)`` is the one line to print."""

    exit_code = 2


class UsageError(MltrainError):
    """The command line itself is malformed (unknown flag, missing argument)."""


class ConfigError(MltrainError):
    """The composed configuration is invalid (unknown key, wrong type, missing value, ...)."""


class SourceError(MltrainError):
    """The source directory, script or a file inside the snapshot is unusable."""


class SnapshotError(SourceError):
    """The snapshot could not be taken (too large, unreadable file, link leaving the tree, ...)."""


class EnvironmentBuildError(MltrainError):
    """Preparing the software environment failed; the message names the failing step."""


class StoreError(MltrainError):
    """The run history (``runs.db``) or workspace cannot be used."""


class RunNotFound(StoreError):
    """No run (or more than one run) matches the id the user gave."""


class SweepNotFound(StoreError):
    """No sweep (or more than one sweep) matches the id the user gave."""


class TargetError(MltrainError):
    """The compute target cannot be reached or refused the job."""


class RunFailed(MltrainError):
    """A run ended without completing; raised by ``Run.wait(raise_on_failure=True)``."""

    exit_code = 1
