"""The consoles every command prints through: tables on stdout, errors and progress on stderr.

Piped output (files, CI logs, tests) gets a wide console so tables are not squeezed to 80 columns and an error
stays on one line.
"""
from __future__ import annotations

import sys

from rich.console import Console

out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 400)
