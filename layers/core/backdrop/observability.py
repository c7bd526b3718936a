"""Logger, metrics and tracer shared by every function (Powertools reads its POWERTOOLS_* settings)."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger(service="backdrop")
metrics = Metrics(namespace="Backdrop", service="backdrop")
tracer = Tracer(service="backdrop")


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def count_bytes(name: str, value: int) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Bytes, value=value)


__all__ = ["count", "count_bytes", "logger", "metrics", "tracer"]
