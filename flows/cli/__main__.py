"""``python -m flows.cli``: the same as the ``tlp`` command."""

from flows.cli import console

console()
