"""Sub-commands of ``ram-grounded`` beyond the core ones in :mod:`ram_grounded.cli`.

Each module here defines ``register(app)`` that adds its commands to the Typer app.
"""

COMMAND_MODULES = ("annotate", "serve", "bench")
