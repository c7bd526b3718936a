"""Shared test settings: Powertools quiet and offline, whatever the developer's shell has set."""

from __future__ import annotations

import os

# Metrics need a namespace; tracing has no X-Ray daemon here. Set before any handler is imported.
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "backdrop")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Backdrop")
os.environ["POWERTOOLS_TRACE_DISABLED"] = "true"
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
