"""Logger, metrics and tracer shared by every function. Their service name and metric namespace come
from the ``POWERTOOLS_SERVICE_NAME`` and ``POWERTOOLS_METRICS_NAMESPACE`` variables the template sets.

Tracing is opt-in and costs nothing until it is on: ``tracer`` stands in for Powertools' Tracer and
builds the real one (which imports and patches the AWS X-Ray SDK, about a quarter of a second of
every cold start) only in the first invocation that X-Ray samples. Lambda samples invocations only
when the function's tracing mode is ``Active`` (the template's ``Tracing`` setting) or an upstream
caller sent a sampled trace header. ``POWERTOOLS_TRACE_DISABLED=true`` keeps it off regardless.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from aws_lambda_powertools.logging import Logger
from aws_lambda_powertools.metrics import Metrics, MetricUnit
from aws_lambda_powertools.shared.functions import resolve_truthy_env_var_choice

if TYPE_CHECKING:
    from aws_lambda_powertools.tracing import Tracer

Handler = TypeVar("Handler", bound=Callable[..., Any])

logger = Logger()
metrics = Metrics()


def trace_sampled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether X-Ray samples this invocation: Lambda sets ``_X_AMZN_TRACE_ID`` for each one, with
    ``Sampled=1`` when it is recorded. Unsampled invocations record nothing even with the SDK."""
    if resolve_truthy_env_var_choice(env=environ.get("POWERTOOLS_TRACE_DISABLED", "false")):
        return False
    header = environ.get("_X_AMZN_TRACE_ID", "")
    return "Sampled=1" in (part.strip() for part in header.split(";"))


class LazyTracer:
    """The parts of Powertools' Tracer the functions use, with the real Tracer built on demand."""

    def __init__(self) -> None:
        self._tracer: Tracer | None = None
        self._invoked = False
        self._on_start: list[Callable[[], None]] = []

    def on_start(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the real Tracer is built (``backdrop.services`` forgets the
        clients it built untraced); registered by the caller, so this module imports none of it."""
        self._on_start.append(callback)

    @property
    def active(self) -> Tracer | None:
        """The real Tracer, built now if this invocation is sampled; None while tracing is off."""
        if self._tracer is None and trace_sampled():
            import aws_lambda_powertools.tracing.tracer as powertools_tracer
            from aws_lambda_powertools.tracing import Tracer

            if self._invoked:
                # Only the environment's first invocation is a cold start, traced or not.
                powertools_tracer.is_cold_start = False
            self._tracer = Tracer()
            # The SDK instruments HTTP clients created from now on; clients an earlier, untraced
            # invocation built are built again so that their calls are traced too.
            for callback in self._on_start:
                callback()
        return self._tracer

    @overload
    def capture_lambda_handler(
        self, lambda_handler: Handler, *, capture_response: bool | None = None
    ) -> Handler: ...

    @overload
    def capture_lambda_handler(
        self, lambda_handler: None = None, *, capture_response: bool | None = None
    ) -> Callable[[Handler], Handler]: ...

    def capture_lambda_handler(
        self, lambda_handler: Handler | None = None, *, capture_response: bool | None = None
    ) -> Handler | Callable[[Handler], Handler]:
        """As ``Tracer.capture_lambda_handler``; untraced invocations call the handler directly."""

        def decorate(handler: Handler) -> Handler:
            traced: Callable[..., Any] | None = None

            @functools.wraps(handler)
            def run(event: Any, context: Any, **kwargs: Any) -> Any:
                nonlocal traced
                real = self.active
                self._invoked = True
                if real is None:
                    return handler(event, context, **kwargs)
                if traced is None:
                    traced = real.capture_lambda_handler(handler, capture_response=capture_response)
                return traced(event, context, **kwargs)

            return run  # type: ignore[return-value]

        return decorate if lambda_handler is None else decorate(lambda_handler)

    def put_annotation(self, key: str, value: str | bool) -> None:
        if self._tracer is not None:
            self._tracer.put_annotation(key, value)


tracer = LazyTracer()


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def count_bytes(name: str, value: int) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Bytes, value=value)


def milliseconds(name: str, value: float) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Milliseconds, value=value)


def gauge_percent(name: str, value: float) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Percent, value=value)


__all__ = [
    "count",
    "count_bytes",
    "gauge_percent",
    "logger",
    "metrics",
    "milliseconds",
    "trace_sampled",
    "tracer",
]
