"""A local Runflow: an HTTP server a Runflow client cannot tell from the real API for the
``runflow/background-color`` model (runs, callbacks, signing secrets, signed output URLs), doing
real image work, with fault injection for tests. See ``emulator.LocalRunflow`` and ``cli``.
"""

from backdrop_local.runflow.emulator import LocalRunflow
from backdrop_local.runflow.faults import FaultSettings

__all__ = ["FaultSettings", "LocalRunflow"]
