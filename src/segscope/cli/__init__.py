"""The ``segscope`` command: a thin shell over the library (parsing, progress, printing).

One module per group of commands; importing them registers them on :data:`app`.
"""

from segscope.cli import files, labels, loop, services  # noqa: F401  (registers the commands)
from segscope.cli._app import app, command, main

__all__ = ["app", "command", "main"]
