"""``LocalRunflow``: the local stand-in for Runflow's API for ``runflow/background-color``.

It wires the HTTP server, the run workers and the callback sender to one in-memory store, and
offers the controls tests and the local stack need (faults, stats, ``wait_idle``, restarting the
callback sender). It binds only to loopback and only ever contacts loopback hosts or the origins
it is told to allow.

Settings that change behaviour at run time are ``FaultSettings`` (see ``faults``). ``clock``
(keyword, default ``time.time``) is the wall clock of output URL expiry, ``X-RateLimit-Reset`` and
``list_lag_s``, so a test can move time on instead of sleeping.

``stats()`` (also ``GET /_emulator/stats``) reports counters: ``runs_created``,
``idempotent_replays``, ``idempotency_keys_ignored`` (POSTs whose key the ``ignore`` setting
disregarded), ``create_rate_limited``, ``create_server_errors``, ``create_answers_lost``,
``create_answers_reset``, ``get_rate_limited`` (get and list 429s), ``list_refused`` (list 403s),
``admin_cancellations`` (cancellations that changed a run), ``late_results_dropped`` (results of
runs canceled while they ran), ``unauthorized_requests``, the callback counters
(``callbacks_sent``, ``callback_attempts_failed``, ``callbacks_delivered``,
``callback_deliveries_created``, ``callback_deliveries_failed``, ``callbacks_dropped``,
``callbacks_duplicated``, ``callback_redeliveries``, ``callback_deliveries_pending``),
``callback_answer_ms`` and ``callback_attempts_by_status`` (see ``store``), the output counters
(``output_fetches``, ``output_fetch_errors``, ``output_url_rejections``), ``callback_secrets``,
``runs_by_status`` (every status a run can have, 0 included) and ``faults_fired`` (per rate).
``output_faults()`` (also ``GET /_emulator/output-faults``) maps each run an output fault struck
to the fault's setting (see ``faults``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from backdrop_local.runflow.callbacks import ATTEMPT_TIMEOUT_S, CallbackSender, DueQueue
from backdrop_local.runflow.faults import FaultInjector, FaultSettings
from backdrop_local.runflow.ids import utc_now
from backdrop_local.runflow.netpolicy import NetPolicy, format_origin, is_loopback_host
from backdrop_local.runflow.outputs import OutputDirectory, OutputSigner
from backdrop_local.runflow.ratelimit import RateLimitHeaders
from backdrop_local.runflow.server import QuietRequestHandler, RunflowApp
from backdrop_local.runflow.service import RunflowService
from backdrop_local.runflow.store import Delivery, Store
from backdrop_local.runflow.workers import RunExecutor

DEFAULT_RETRY_DELAYS = (1.0, 2.0)


class LocalRunflow:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: frozenset[str] = frozenset({"rf_live_local"}),
        allow_http_origins: tuple[str, ...] = (),
        output_ttl_seconds: float = 3600.0,
        workers: int = 2,
        faults: FaultSettings | None = None,
        seed: int | None = None,
        callback_retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
        *,
        callback_threads: int = 4,
        callback_timeout_seconds: float = ATTEMPT_TIMEOUT_S,
        output_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        bridge_host: str | None = None,
    ) -> None:
        # Loopback, or the host's address on the Docker bridge this machine's run created (so that
        # `sam local` containers can reach it): nothing else, ever.
        if not is_loopback_host(host) and host != bridge_host:
            raise ValueError(f"the local Runflow only binds to loopback addresses, not {host!r}")
        if any(delay < 0 for delay in callback_retry_delays):
            raise ValueError("callback retry delays must not be negative")
        self._host = host
        self._port = port
        self._url: str | None = None
        self._policy = NetPolicy.from_origins(allow_http_origins)
        self._retry_delays = tuple(float(d) for d in callback_retry_delays)
        self._callback_threads = callback_threads
        self._callback_timeout = callback_timeout_seconds
        self.store = Store()
        self._faults = FaultInjector(faults or FaultSettings(), seed)
        self._outputs = OutputDirectory(output_dir)
        self._signer = OutputSigner(lambda: self.url, output_ttl_seconds, clock=clock)
        self._service = RunflowService(
            self.store,
            self._faults,
            self._policy,
            self._signer,
            self._outputs,
            lambda: self.url,
            self._retry_delays,
            RateLimitHeaders(clock),
            clock,
        )
        self._due = DueQueue()
        self._sender = self._new_sender()
        self._executor = RunExecutor(
            self.store,
            self._faults,
            self._policy,
            self._outputs,
            self._service.plan_deliveries,
            self._schedule,
            workers=workers,
        )
        self._service.submit_run = self._executor.submit
        self._service.schedule = self._schedule
        self._app = RunflowApp(self._service, api_keys)
        self._server: BaseWSGIServer | None = None
        self._server_thread: threading.Thread | None = None
        self._sender_lock = threading.Lock()
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("LocalRunflow is not started")
        return self._url

    def start(self) -> LocalRunflow:
        if self._server is not None:
            raise RuntimeError("LocalRunflow is already started")
        if self._stopped:
            raise RuntimeError("a stopped LocalRunflow cannot be started again")
        server = make_server(
            self._host, self._port, self._app, threaded=True, request_handler=QuietRequestHandler
        )
        self._url = format_origin(("http", self._host, server.server_port))
        self._server = server
        self._executor.start()
        self._sender.start()
        # A short poll interval makes stop() quick; the idle cost is negligible.
        self._server_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="runflow-http", daemon=True
        )
        self._server_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, let runs and callback attempts in progress finish, delete the outputs."""
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._server_thread is not None:
            self._server_thread.join(5.0)
        self._executor.stop()
        with self._sender_lock:
            self._sender.stop()
        self._outputs.close()

    def __enter__(self) -> LocalRunflow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ controls
    def create_callback_secret(self, label: str = "local") -> str:
        """A new signing secret, made current; returns its plain ``whsec_...`` string."""
        return self.store.create_secret(label, make_current=True).plain_secret

    def set_faults(self, faults: FaultSettings, seed: int | None = None, *, reseed: bool = False) -> None:
        self._faults.configure(faults, seed, reseed=reseed)

    @property
    def faults(self) -> FaultSettings:
        return self._faults.settings

    def stats(self) -> dict[str, Any]:
        return self._service.stats()

    def output_faults(self) -> dict[str, str]:
        """Run id to the output fault that struck it (also ``GET /_emulator/output-faults``)."""
        return self.store.output_faults()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once no run is queued, dispatching or running, no worker is still finishing a run
        (one canceled while it ran) and no callback delivery is pending."""
        return self.store.wait_idle(timeout)

    @contextmanager
    def holding_callbacks(self) -> Iterator[None]:
        """No callback attempt starts inside the block (attempts in flight finish, deliveries stay
        pending and keep their due times); afterwards each is sent once due. A test sees a delivery
        between its attempts without racing the retry delay."""
        self._due.hold()
        try:
            yield
        finally:
            self._due.release()

    def restart_callback_sender(self) -> None:
        """Stop the sender threads and start fresh ones; pending deliveries are kept.

        The store, not the queue, is the record of what is pending: after the old threads have
        finished their attempts in flight, the queue is rebuilt from the store's pending deliveries
        at their recorded next-attempt times.
        """
        with self._sender_lock:
            self._sender.stop()
            self._due.clear()
            self._sender = self._new_sender()
            self._sender.start()
            self._schedule(self.store.pending_deliveries())

    # ------------------------------------------------------------------ wiring
    def _new_sender(self) -> CallbackSender:
        return CallbackSender(
            self.store,
            self._due,
            self._policy,
            self._retry_delays,
            threads=self._callback_threads,
            timeout_s=self._callback_timeout,
        )

    def _schedule(self, deliveries: list[Delivery]) -> None:
        now = utc_now()
        for delivery in deliveries:
            due = delivery.next_attempt_at or now
            self._due.push(delivery.id, (due - now).total_seconds())
