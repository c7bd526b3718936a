"""Logger, metrics and tracer shared by every function. Their service name and metric namespace come
from the ``POWERTOOLS_SERVICE_NAME`` and ``POWERTOOLS_METRICS_NAMESPACE`` variables the template sets."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger()
metrics = Metrics()
tracer = Tracer()


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def count_bytes(name: str, value: int) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Bytes, value=value)


def milliseconds(name: str, value: float) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Milliseconds, value=value)


def gauge_percent(name: str, value: float) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Percent, value=value)


__all__ = ["count", "count_bytes", "gauge_percent", "logger", "metrics", "milliseconds", "tracer"]
