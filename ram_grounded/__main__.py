"""``python -m ram_grounded`` = the ``ram-grounded`` command."""

from .cli import main

main()
