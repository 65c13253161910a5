"""Runs execute their steps in one process, one after another.

Each daily run is a short chain (audit -> backfill -> candles, then checks) of IO-bound steps;
a process per step (the multiprocess default) would spend more time importing than working.
Parallelism comes from running several days (runs) at once; the REST steps still take turns
through the ``venue_rest`` pool (dagster.yaml), which the in-process executor honours.
"""

import dagster as dg


@dg.definitions
def executor() -> dg.Definitions:
    return dg.Definitions(executor=dg.in_process_executor)
