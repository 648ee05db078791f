"""segscope's exceptions.

Every message names *what* was wrong, *what was expected* and *how to fix it*; the CLI prints the message
as one line and exits non-zero, without a traceback.

::

    SegscopeError
    ├── ConfigError            a parameter or config file is invalid
    ├── NotFittedError         a component was used before ``fit``
    ├── SchemaError            input columns or types do not match what is expected
    ├── DataError              values are unusable (empty, infinite, duplicate ids, ...)
    ├── SourceError            a file cannot be read (missing, wrong extension, corrupt)
    ├── SinkError              an output cannot be written
    ├── BackToLastCommit       outputs since the last commit may be lost: a polling run goes back to it
    ├── BundleError            a bundle is missing, tampered with, untrusted or incompatible
    └── MissingDependencyError an optional dependency is not installed

    SegscopeWarning (a UserWarning) something worked but deserves a look (drift, an all-null column, ...);
                                the CLI prints each as one ``warning:`` line
"""

from __future__ import annotations

__all__ = [
    "BackToLastCommit",
    "BundleError",
    "ConfigError",
    "DataError",
    "MissingDependencyError",
    "NotFittedError",
    "SchemaError",
    "SegscopeError",
    "SegscopeWarning",
    "SinkError",
    "SourceError",
]


class SegscopeError(Exception):
    """Root of every error segscope raises on purpose."""


class ConfigError(SegscopeError, ValueError):
    """A parameter or a config file is invalid."""


class NotFittedError(SegscopeError, AttributeError):
    """A component was used before it was fitted."""


class SchemaError(SegscopeError, ValueError):
    """Columns or types of the input do not match the expected schema."""


class DataError(SegscopeError, ValueError):
    """Values in the input cannot be used as they are."""


class SourceError(SegscopeError, OSError):
    """An input cannot be read."""


class SinkError(SegscopeError, OSError):
    """An output cannot be written."""


class BackToLastCommit(SegscopeError):
    """What was written since the source's last commit may be lost (outputs not acknowledged, a transaction
    aborted, a consumer that lost its cluster): a polling run goes back to that commit and goes on
    (:func:`segscope.run.run`). ``renew``: with a new client at the source; ``aborted``: a transaction was."""

    def __init__(self, reason: str, *, renew: bool = False, aborted: bool = False) -> None:
        super().__init__(reason)
        self.renew, self.aborted = renew, aborted


class BundleError(SegscopeError):
    """A bundle is missing, tampered with, untrusted or incompatible."""


class CheckpointError(SegscopeError):
    """An entity checkpoint or carried state cannot be restored (damaged, or written by another stream or entity
    config) or written."""


class MissingDependencyError(SegscopeError, ImportError):
    """An optional dependency is needed for this feature."""


class SegscopeWarning(UserWarning):
    """Something worked but deserves a look; the CLI prints it as one ``warning:`` line."""
