"""Engines move batches of Records through a Pipeline over a dataset and into a store.

An engine never looks inside a stage. :mod:`.local` runs in this process (threads decode
images, one forward per batch); other engines (e.g. Ray) follow the same contract.
"""

from ram_grounded.engine.local import Progress, run_local

__all__ = ["Progress", "run_local"]
