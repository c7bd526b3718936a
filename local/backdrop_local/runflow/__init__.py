"""A local Runflow: an HTTP server a Runflow client cannot tell from the real API for the
``runflow/background-color`` model (runs, callbacks, signing secrets, signed output URLs), doing
real image work, with fault injection for tests. See ``emulator.LocalRunflow`` and ``cli``.

The contract lives here; the image model a real run applies is the demo's (``backdrop_demo.imaging``),
loaded on the first such run (``processing.real_renderer``).
"""

from backdrop_local.runflow.emulator import LocalRunflow
from backdrop_local.runflow.faults import FaultSettings

__all__ = ["FaultSettings", "LocalRunflow"]
