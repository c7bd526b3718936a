"""Worker threads that take queued runs through dispatching and running to a terminal status.

Each worker handles one run at a time (so one image in memory per worker): it moves the run to
``dispatching``, keeps it there for ``dispatch_delay_s``, moves it to ``running``, fetches and
processes the image (``processing`` real or instant), writes ``outputs_per_run`` outputs and ends
the run as ``outcomes`` decides. Whatever goes wrong inside a run (bad input, a model error, a bug)
ends that run as failed with a code and message; it never takes the worker or the server down.
A run canceled meanwhile is left alone: its late result is dropped and its files deleted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from backdrop_local.runflow import doubtful, outcomes, pngfile
from backdrop_local.runflow.faults import FaultInjector
from backdrop_local.runflow.instant import InstantResults
from backdrop_local.runflow.netpolicy import NetPolicy, http_client
from backdrop_local.runflow.outputs import OutputDirectory
from backdrop_local.runflow.processing import Colour, ProcessingFailed, fetch_image, real_renderer
from backdrop_local.runflow.store import Delivery, OutputFile, Run, Store

log = logging.getLogger(__name__)

DeliveryPlanner = Callable[[Run], list[Delivery]]
DeliveryScheduler = Callable[[list[Delivery]], None]


class RunExecutor:
    def __init__(
        self,
        store: Store,
        faults: FaultInjector,
        policy: NetPolicy,
        outputs: OutputDirectory,
        plan_deliveries: DeliveryPlanner,
        schedule_deliveries: DeliveryScheduler,
        *,
        workers: int,
    ) -> None:
        if workers < 1:
            raise ValueError("at least one worker is needed")
        self._store = store
        self._faults = faults
        self._policy = policy
        self._outputs = outputs
        self._plan = plan_deliveries
        self._schedule = schedule_deliveries
        self._instant = InstantResults(outputs)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"runflow-worker-{n}", daemon=True)
            for n in range(workers)
        ]
        self._http = http_client()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, run_id: str) -> None:
        self._queue.put(run_id)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the runs in progress; runs still queued stay queued."""
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._http.close()

    def _loop(self) -> None:
        while True:
            run_id = self._queue.get()
            if run_id is None or self._stopping.is_set():
                return
            try:
                self._execute(run_id)
            except Exception:  # the run is already failed below; this guards the thread itself
                log.exception("worker crashed on run %s", run_id)
            finally:
                self._store.release_run(run_id)

    def _execute(self, run_id: str) -> None:
        if self._store.start_run(run_id) is None:
            return
        dispatched = self._faults.wait_dispatch(
            time.monotonic(),
            lambda: not self._stopping.is_set() and self._store.is_dispatching(run_id),
        )
        run = self._store.begin_running(run_id) if dispatched else None
        if run is None:
            return
        started = time.perf_counter()
        try:
            if self._faults.roll("processing_failure"):
                raise ProcessingFailed(
                    "PROCESSING_FAILED", "the model failed to process the image", "processing"
                )
            files, timing, fault = self._produce(run_id, run.input)
        except ProcessingFailed as failure:
            self._fail(run_id, failure.code, failure.message, failure.stage)
            return
        except Exception as exc:
            log.exception("run %s failed unexpectedly", run_id)
            self._fail(run_id, "PROCESSING_FAILED", f"internal error: {type(exc).__name__}", "processing")
            return
        timing = {**timing, "total_ms": round((time.perf_counter() - started) * 1000)}
        self._succeed(run_id, files, timing, fault)

    def _produce(
        self, run_id: str, run_input: dict[str, Any]
    ) -> tuple[list[OutputFile], dict[str, int], str | None]:
        """Fetch the input and write the run's outputs (real or instant processing), with an output
        fault applied when one fires (decided once the processing is done); raises ProcessingFailed.
        Returns the outputs, the timing so far and the fault."""
        settings = self._faults.settings
        fetched = time.perf_counter()
        data = fetch_image(self._http, str(run_input["image_url"]), self._policy)
        fetch_ms = round((time.perf_counter() - fetched) * 1000)
        rgb = (int(run_input["color_red"]), int(run_input["color_green"]), int(run_input["color_blue"]))
        colour = Colour(*rgb)
        count = settings.outputs_per_run
        step = time.perf_counter()
        if settings.processing == "instant":
            fault = self._faults.first(doubtful.OUTPUT_FAULTS)
            faulted = doubtful.faulted_output(fault, data, None, rgb) if fault else None
            if faulted is None:
                files = self._instant.produce(run_id, data, colour, count, settings.instant_output_bytes)
            else:
                files = self._write(run_id, faulted, count, settings.instant_output_bytes)
            instant_ms = round((time.perf_counter() - step) * 1000)
            return files, {"fetch_ms": fetch_ms, "instant_ms": instant_ms}, fault
        png, timing = real_renderer()(data, colour)
        fault = self._faults.first(doubtful.OUTPUT_FAULTS)
        if fault is not None:
            png = doubtful.faulted_output(fault, data, png, rgb) or png
        del data
        return self._write(run_id, png, count, 0), {"fetch_ms": fetch_ms, **timing}, fault

    def _write(self, run_id: str, png: bytes, count: int, total_bytes: int) -> list[OutputFile]:
        files = []
        for index in range(count):
            parts = pngfile.with_variant(png, index)
            if total_bytes:
                try:
                    parts = pngfile.padded(parts, total_bytes)
                except pngfile.PaddingImpossible as exc:
                    raise ProcessingFailed(
                        "PROCESSING_FAILED", f"instant_output_bytes={total_bytes}: {exc}", "processing"
                    ) from exc
            size = self._outputs.write_parts(run_id, index, parts)
            files.append(OutputFile(index=index, content_type="image/png", size=size))
        return files

    def _succeed(
        self, run_id: str, files: list[OutputFile], timing: dict[str, int], fault: str | None
    ) -> None:
        kept: list[OutputFile] = []

        def settle(target: Run) -> None:
            target.output_fault = fault
            outcome = outcomes.choose_success_outcome(self._faults)
            outcomes.settle_success(target, outcome, files, timing, self._faults)
            kept.extend(target.outputs)

        self._finish(run_id, settle, lambda: len(kept))

    def _fail(self, run_id: str, code: str, message: str, stage: str) -> None:
        def settle(target: Run) -> None:
            outcomes.settle_failed(target, code, message, stage, self._faults)

        self._finish(run_id, settle, lambda: 0)

    def _finish(self, run_id: str, settle: Callable[[Run], None], keep: Callable[[], int]) -> None:
        deliveries = self._store.finish_run(run_id, settle, self._plan)
        # Files of outputs the run does not keep (or of a run canceled meanwhile) are never handed
        # out; delete them so disk use follows what clients can fetch.
        self._outputs.remove(run_id, keep=keep() if deliveries is not None else 0)
        if deliveries:
            self._schedule(deliveries)
