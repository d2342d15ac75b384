"""``python -m linewatch`` runs the ``linewatch`` command."""

from linewatch.cli import run

run()
