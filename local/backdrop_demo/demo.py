"""``make demo``: the whole pipeline, end to end, on this machine.

Starts the local stack (moto, the local Runflow with real segmentation, the built functions), uploads
every photo in ``samples/`` under ``uploads/demo/``. Each photo goes up once with no colour metadata
(the default colour) and once with a per-object ``background-color``; the first also goes under
``uploads/demo/brand/``, where the stack's ``ColorRules`` parameter gives it the brand's grey.
The demo then waits for every job to finish and downloads originals and results into
``demo-output/``, where it also writes a contact sheet (HTML and PNG). Last it prints a summary
table. The stack's ``Renditions`` parameter names one rendition for each built-in profile, so every
result also gets its renditions, each with a verdict: the demo downloads them beside the results,
draws them on the contact sheet and gives the summary table a verdict column per rendition.
The exit status is 0 only if every job succeeded. The stack is always stopped, on Ctrl-C too.

    PYTHONPATH=local:layers/core .venv/bin/python -m backdrop_demo [--timeout 300]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mimetypes
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from backdrop.colours import parse_colour
from backdrop.jobs import Job, Status, parse_iso
from backdrop_demo.contactsheet import RGB, RenditionCell, SheetRow, build_contact_sheet, colour_text
from backdrop_local.aws import scan_items
from backdrop_local.progress import ProgressLine
from backdrop_local.stack import ROOT, LocalStack, StackOptions

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client

SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_TIMEOUT_SECONDS = 300.0
POLL_SECONDS = 1.0
DEMO_FOLDER = "demo"
NO_JOB = "no job"  # status shown for an upload the jobs table has no record of


@dataclass(frozen=True)
class ColourChoice:
    name: str
    metadata: str | None  # the object's background-color metadata; None: none, so a rule or the default
    folder: str = ""  # under uploads/demo/: where a prefix rule applies
    rule: str | None = None  # the colour the stack's ColorRules give that folder

    @property
    def expected(self) -> RGB:
        colour = parse_colour(self.metadata or self.rule or "255,255,255")
        return colour.red, colour.green, colour.blue


DEFAULT = ColourChoice("default", None)
# A sales channel's prefix with its own background, set as the ColorRules template parameter.
BRAND = ColourChoice("brand-rule", None, folder="brand/", rule="241,241,241")
COLOR_RULES = json.dumps({f"uploads/{DEMO_FOLDER}/{BRAND.folder}": BRAND.rule})
# One rendition per built-in profile, set as the Renditions template parameter; the dict's order is
# the order of the sheet's renditions and of the summary table's verdict columns.
RENDITION_PROFILES = {
    "amazon": "amazon-main",
    "google": "google-shopping",
    "shopify": "shopify-square",
    "zalando": "zalando",
    "thumb": "thumbnail",
}
RENDITIONS = json.dumps(RENDITION_PROFILES)
# Per-object colours, given in each of the notations users write.
PER_OBJECT = (
    ColourChoice("dodger-blue", "#1E90FF"),
    ColourChoice("zalando-grey", "241,241,241"),
    ColourChoice("marketplace-white", "#FFFFFF"),
)


@dataclass(frozen=True)
class Upload:
    sample: Path
    key: str
    colour: ColourChoice


@dataclass
class Outcome:
    upload: Upload
    uploaded_at: datetime
    job: Job | None = None
    finished_seen_at: datetime | None = None  # when the demo first saw the job in a terminal status
    original: Path | None = None
    result: Path | None = None
    problem: str | None = None  # why this upload counts as a failure of the demo (None: it succeeded)
    processing_ms: int | None = None  # Runflow's started_at → completed_at: the work without queueing
    files: dict[str, Path] = field(default_factory=dict)  # result key → the downloaded file

    @property
    def status(self) -> str:
        return self.job.status.value if self.job else NO_JOB

    @property
    def colour(self) -> RGB:
        if self.job and self.job.color:
            try:
                c = parse_colour(self.job.color)
            except ValueError:
                return self.upload.colour.expected
            return c.red, c.green, c.blue
        return self.upload.colour.expected

    @property
    def end_to_end_s(self) -> float | None:
        if self.job is None or not self.job.status.is_terminal:
            return None
        finished: datetime | None = self.finished_seen_at
        stamp = self.job.completed_at or self.job.updated_at
        if stamp:
            with contextlib.suppress(ValueError):
                finished = parse_iso(stamp)
        return None if finished is None else max((finished - self.uploaded_at).total_seconds(), 0.0)


# ---------------------------------------------------------------------------- planning
def find_samples(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SAMPLE_SUFFIXES)


def plan_uploads(samples: Sequence[Path], upload_prefix: str) -> list[Upload]:
    """Each sample twice: with the default colour, and with one of the per-object colours in turn;
    the first sample once more under the brand's prefix, where a colour rule picks its colour."""
    uploads: list[Upload] = []
    for index, sample in enumerate(samples):
        choices = [DEFAULT, PER_OBJECT[index % len(PER_OBJECT)]] + ([BRAND] if index == 0 else [])
        for colour in choices:
            name = f"{colour.folder}{sample.stem}-{colour.name}{sample.suffix.lower()}"
            uploads.append(Upload(sample, f"{upload_prefix}{DEMO_FOLDER}/{name}", colour))
    return uploads


# ---------------------------------------------------------------------------- AWS side
def upload_all(s3: S3Client, bucket: str, uploads: Sequence[Upload]) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    for upload in uploads:
        content_type = mimetypes.guess_type(upload.sample.name)[0] or "application/octet-stream"
        metadata = {"background-color": upload.colour.metadata} if upload.colour.metadata else {}
        uploaded_at = datetime.now(UTC)
        s3.put_object(
            Bucket=bucket,
            Key=upload.key,
            Body=upload.sample.read_bytes(),
            ContentType=content_type,
            Metadata=metadata,
        )
        outcomes[upload.key] = Outcome(upload, uploaded_at)
    return outcomes


def scan_jobs(ddb: DynamoDBClient, table: str, keys: Iterable[str]) -> dict[str, Job]:
    """The newest job of each of ``keys`` (source keys), read with a full scan of the jobs table."""
    wanted = set(keys)
    found: dict[str, Job] = {}
    for item in scan_items(ddb, table):
        if item.get("source_key") not in wanted:
            continue
        job = Job.from_item(item)
        current = found.get(job.source_key)
        if current is None or job.created_at > current.created_at:
            found[job.source_key] = job
    return found


def wait_for_jobs(
    ddb: DynamoDBClient, table: str, outcomes: dict[str, Outcome], timeout: float, progress: ProgressLine
) -> None:
    total = len(outcomes)
    started = time.monotonic()
    deadline = started + timeout
    while True:
        for key, job in scan_jobs(ddb, table, outcomes).items():
            outcome = outcomes[key]
            outcome.job = job
            if job.status.is_terminal and outcome.finished_seen_at is None:
                outcome.finished_seen_at = datetime.now(UTC)
        finished = [o for o in outcomes.values() if o.job and o.job.status.is_terminal]
        succeeded = sum(1 for o in finished if o.status == Status.SUCCEEDED)
        open_counts = Counter(
            o.status if o.job else "uploaded"
            for o in outcomes.values()
            if not (o.job and o.job.status.is_terminal)
        )
        waiting = ", ".join(f"{n} {status}" for status, n in sorted(open_counts.items()))
        line = f"  {len(finished)}/{total} jobs finished ({succeeded} succeeded)"
        if waiting:
            line += f" · {waiting}"
        progress.update(f"{line} · {time.monotonic() - started:.0f} s", key=line)
        if len(finished) == total or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    progress.close()


def _relative(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def download(s3: S3Client, bucket: str, key: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    target.write_bytes(body.read())
    return target


def collect_files(s3: S3Client, info: dict[str, Any], outcomes: Iterable[Outcome], out_dir: Path) -> None:
    """Originals from the uploads bucket, results from the results bucket, into ``out_dir``."""
    for outcome in outcomes:
        key = outcome.upload.key
        target = out_dir / "originals" / _relative(key, info["upload_prefix"])
        try:
            outcome.original = download(s3, info["uploads_bucket"], key, target)
        except (ClientError, BotoCoreError, OSError):
            # The local copy is the same bytes; the sheet should still show the photo.
            target.parent.mkdir(parents=True, exist_ok=True)
            outcome.original = Path(shutil.copyfile(outcome.upload.sample, target))
        job = outcome.job
        if job is None or not job.result_keys:
            continue
        bucket = job.result_bucket or info["results_bucket"]
        for index, result_key in enumerate(job.result_keys):
            target = out_dir / "results" / _relative(result_key, info["results_prefix"])
            try:
                path = download(s3, bucket, result_key, target)
            except (ClientError, BotoCoreError, OSError) as exc:
                if outcome.problem is None:
                    outcome.problem = f"result s3://{bucket}/{result_key} could not be downloaded: {exc}"
                continue
            outcome.files[result_key] = path
            if index == 0:
                outcome.result = path


def fetch_processing_times(runflow_url: str, api_key: str, outcomes: Iterable[Outcome]) -> None:
    """Ask Runflow for each run's started/completed times (best effort: the demo works without them).

    A job's ``runflow_duration_ms`` is Runflow's wall clock from creating the run, queueing included;
    with a dozen uploads and two local workers most of it is waiting. Processing time is the rest.
    """
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=runflow_url, headers=headers, timeout=5.0) as http:
        for outcome in outcomes:
            if outcome.job is None or not outcome.job.run_id:
                continue
            try:
                response = http.get(f"/v1/runs/{outcome.job.run_id}")
                response.raise_for_status()
                run = response.json()
                started, completed = run.get("started_at"), run.get("completed_at")
                if isinstance(started, str) and isinstance(completed, str):
                    seconds = (parse_iso(completed) - parse_iso(started)).total_seconds()
                    outcome.processing_ms = round(seconds * 1000)
            except (httpx.HTTPError, ValueError, TypeError, AttributeError):
                continue


# ---------------------------------------------------------------------------- judging and reporting
def judge(outcome: Outcome, timeout: float) -> None:
    """Set ``outcome.problem`` unless the job succeeded with the colour it was asked for."""
    job = outcome.job
    if outcome.problem is not None:
        return
    if job is None:
        outcome.problem = f"no job was recorded for this upload within {timeout:.0f} s"
    elif not job.status.is_terminal:
        outcome.problem = f"still {job.status.value} after {timeout:.0f} s"
        if job.error_code or job.error_message:
            outcome.problem += f" (last error {job.error_code}: {job.error_message})"
    elif job.status != Status.SUCCEEDED:
        detail = f"{job.error_code or 'no error code'}: {job.error_message or 'no error message'}"
        outcome.problem = f"{job.status.value}: {detail}"
    elif outcome.colour != outcome.upload.colour.expected:
        outcome.problem = (
            f"asked for {outcome.upload.colour.expected} ({outcome.upload.colour.name}) but the job "
            f"recorded {job.color}"
        )
    elif not job.result_keys:
        outcome.problem = "succeeded without a result key"
    elif missing := [name for name in RENDITION_PROFILES if name not in job.renditions]:
        outcome.problem = f"succeeded without the renditions {', '.join(missing)}"


def rendition_cells(outcome: Outcome) -> tuple[RenditionCell, ...]:
    """The job's renditions in the order of ``RENDITION_PROFILES``, each with its downloaded file."""
    made = outcome.job.renditions if outcome.job else {}
    cells = []
    for name in RENDITION_PROFILES:
        entry = made.get(name)
        if entry is None:
            continue
        key = entry.get("key")
        size = f"{entry.get('width')}x{entry.get('height')} {entry.get('format') or ''}".strip()
        cells.append(
            RenditionCell(
                name=name,
                verdict=str(entry.get("verdict")),
                reasons=tuple(str(r) for r in entry.get("reasons") or ()),
                path=outcome.files.get(key) if isinstance(key, str) else None,
                size=size if key else "",
            )
        )
    return tuple(cells)


def sheet_rows(outcomes: Iterable[Outcome], upload_prefix: str) -> list[SheetRow]:
    rows = []
    for o in outcomes:
        job = o.job
        error = o.problem
        if error is None and job is not None and job.error_message:
            error = f"{job.error_code}: {job.error_message}"  # recovered from: worth seeing anyway
        rows.append(
            SheetRow(
                label=_relative(o.upload.key, upload_prefix),
                colour=o.colour,
                colour_name=o.upload.colour.name,
                status=o.status,
                original=o.original,
                result=o.result,
                error=error,
                runflow_ms=job.runflow_duration_ms if job else None,
                processing_ms=o.processing_ms,
                end_to_end_s=o.end_to_end_s,
                result_key=job.result_keys[0] if job and job.result_keys else None,
                renditions=rendition_cells(o),
            )
        )
    return rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def verdicts(outcome: Outcome) -> list[str]:
    """One cell per rendition: its verdict, ``-`` where the job has none."""
    made = outcome.job.renditions if outcome.job else {}
    return [str(made[name].get("verdict")) if name in made else "-" for name in RENDITION_PROFILES]


def summary_table(outcomes: Sequence[Outcome], upload_prefix: str) -> str:
    rows = []
    for o in outcomes:
        job = o.job
        e2e = o.end_to_end_s
        rows.append(
            (
                _relative(o.upload.key, upload_prefix),
                f"{o.upload.colour.name} ({colour_text(o.colour)})",
                o.status,
                f"{job.runflow_duration_ms:,}" if job and job.runflow_duration_ms is not None else "-",
                f"{o.processing_ms:,}" if o.processing_ms is not None else "-",
                f"{e2e:.1f}" if e2e is not None else "-",
                *verdicts(o),
                job.result_keys[0] if job and job.result_keys else "-",
            )
        )
    header = (
        "key",
        "colour",
        "status",
        "runflow ms",
        "processing ms",
        "end-to-end s",
        *RENDITION_PROFILES,
        "result key",
    )
    return format_table(header, rows, right={3, 4, 5})


def prepare_output(out_dir: Path) -> None:
    """Remove what an earlier demo left, only the parts this demo writes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("originals", "results"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in ("contact-sheet.html", "contact-sheet.png"):
        (out_dir / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------- main
def run(stack: LocalStack, samples: Sequence[Path], out_dir: Path, timeout: float) -> int:
    t0 = time.monotonic()
    print("Starting the local stack (moto, local Runflow with u2netp, the built functions) ...", flush=True)
    info = stack.start()
    print(f"  ready in {time.monotonic() - t0:.1f} s · Runflow at {info['runflow_url']}", flush=True)

    s3: S3Client = stack.s3()
    ddb: DynamoDBClient = stack.dynamodb()
    uploads = plan_uploads(samples, info["upload_prefix"])
    print(
        f"Uploading {len(uploads)} photos to s3://{info['uploads_bucket']}/{info['upload_prefix']}{DEMO_FOLDER}/"
    )
    for upload in uploads:
        given = upload.colour.metadata or (
            f"no metadata: the rule for its prefix ({upload.colour.rule})"
            if upload.colour.rule
            else "no metadata: the default colour"
        )
        print(f"  {_relative(upload.key, info['upload_prefix']):40} background-color {given}")
    t_upload = time.monotonic()
    outcomes = upload_all(s3, info["uploads_bucket"], uploads)

    print(f"Waiting for {len(outcomes)} jobs (at most {timeout:.0f} s) ...", flush=True)
    wait_for_jobs(ddb, info["jobs_table"], outcomes, timeout, ProgressLine())
    t_done = time.monotonic()

    prepare_output(out_dir)
    ordered = [outcomes[u.key] for u in uploads]
    collect_files(s3, info, ordered, out_dir)
    fetch_processing_times(info["runflow_url"], info["runflow_api_key"], ordered)
    for outcome in ordered:
        judge(outcome, timeout)
    sheet = build_contact_sheet(sheet_rows(ordered, info["upload_prefix"]), out_dir, title="Backdrop demo")

    print()
    print(summary_table(ordered, info["upload_prefix"]))
    print("runflow ms: Runflow's duration_ms, run created to completed, queueing included;")
    print("processing ms: the run's started_at to completed_at (fetch, u2netp, composite, encode).")
    print(f"Renditions ({RENDITIONS}): each one's verdict, pass, warn or fail; the reasons are on the sheet.")
    print()
    durations = sorted(d for o in ordered if (d := o.end_to_end_s) is not None)
    if durations:
        median = durations[len(durations) // 2]
        print(f"End-to-end per job: median {median:.1f} s, slowest {durations[-1]:.1f} s")
    print(f"All jobs done {t_done - t_upload:.1f} s after the first upload", end="; ")
    print(f"demo total {time.monotonic() - t0:.1f} s")
    print(f"Originals, results and renditions: {out_dir}/originals, {out_dir}/results")
    print(f"Contact sheet: {sheet.html}")
    print(f"               {sheet.png}")

    failed = [o for o in ordered if o.problem]
    if not failed:
        print(f"\nAll {len(ordered)} jobs succeeded.")
        return 0
    print(f"\n{len(failed)} of {len(ordered)} jobs did not succeed:", file=sys.stderr)
    for o in failed:
        job_id = f" (job {o.job.job_id})" if o.job else ""
        print(f"  {o.upload.key}{job_id}: {o.problem}", file=sys.stderr)
    print(f"Function logs: {info['logs_dir']}", file=sys.stderr)
    return 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m backdrop_demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--samples", type=Path, default=ROOT / "samples", help="folder of photos to upload")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "demo-output", help="where results and the sheet go"
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="total seconds to wait for the jobs"
    )
    return parser.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    samples = find_samples(args.samples) if args.samples.is_dir() else []
    if not samples:
        print(f"no photos ({', '.join(SAMPLE_SUFFIXES)}) in {args.samples}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)  # `kill` stops the stack as cleanly as Ctrl-C does
    stack = LocalStack(
        StackOptions(
            reconcile_every_seconds=10,
            reconcile_min_age_seconds=30,
            parameter_overrides={"ColorRules": COLOR_RULES, "Renditions": RENDITIONS},
        )
    )
    try:
        return run(stack, samples, args.output.resolve(), args.timeout)
    except KeyboardInterrupt:
        print("\nInterrupted: stopping the local stack.", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # e.g. `make build` has not been run
        print(f"demo failed: {exc}", file=sys.stderr)
        return 2
    finally:
        try:
            stack.stop()
        except KeyboardInterrupt:
            print(
                "Interrupted again while stopping; some stack processes may still be exiting.",
                file=sys.stderr,
            )
        except Exception as exc:
            print(f"warning: stopping the local stack: {exc.__class__.__name__}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
