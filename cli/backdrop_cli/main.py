"""The ``backdrop`` command: options, help and exit statuses of every subcommand."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from botocore.exceptions import BotoCoreError, ClientError

from backdrop.colours import Colour, parse_colour
from backdrop.jobs import Status
from backdrop_cli.app import App, Target
from backdrop_cli.contexts import (
    NOTE_LIMIT,
    REVIEW_ACTIONS,
    BackfillContext,
    CommandContext,
    PlanContext,
    RenderContext,
    ReportContext,
    RetryContext,
    ReviewContext,
    StatusContext,
)
from backdrop_cli.errors import FAILED, Failure
from backdrop_cli.groups import RETRY_CHOICES
from backdrop_cli.times import Since
from backdrop_cli.ui import Ui

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class ColourType(click.ParamType):
    name = "COLOUR"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Colour:
        if isinstance(value, Colour):
            return value
        try:
            return parse_colour(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@dataclass(frozen=True)
class GlobalOption:
    """An option every subcommand takes, accepted before the subcommand too (``backdrop --local
    status KEY`` as well as ``backdrop status KEY --local``), as ``aws --profile p s3 ls`` does."""

    name: str  # the parameter's name in the subcommand
    flag: str  # as typed
    decorator: Callable[[Any], Any]


GLOBAL_OPTIONS = (
    GlobalOption(
        "stack_name",
        "--stack",
        click.option(
            "--stack",
            "stack_name",
            metavar="NAME",
            envvar="BACKDROP_STACK",
            help="Talk to the deployed CloudFormation stack NAME (or set BACKDROP_STACK).",
        ),
    ),
    GlobalOption(
        "profile",
        "--profile",
        click.option(
            "--profile", metavar="PROFILE", help="AWS profile for --stack (default: the usual chain)."
        ),
    ),
    GlobalOption(
        "region",
        "--region",
        click.option("--region", metavar="REGION", help="AWS region of --stack (default: the profile's)."),
    ),
    GlobalOption(
        "local",
        "--local",
        click.option("--local", is_flag=True, help="Talk to the local stack (`make local`)."),
    ),
    GlobalOption(
        "state_dir",
        "--state-dir",
        click.option(
            "--state-dir",
            type=click.Path(path_type=Path, file_okay=False),
            help="With --local: the folder of local-stack.json (default: .backdrop).",
        ),
    ),
    GlobalOption(
        "as_json",
        "--json",
        click.option(
            "--json", "as_json", is_flag=True, help="Print one JSON document on stdout and nothing else."
        ),
    ),
)


def global_options[F: Callable[..., Any]](function: F) -> F:
    for option in reversed(GLOBAL_OPTIONS):
        function = option.decorator(function)
    return function


def _given(ctx: click.Context, name: str) -> bool:
    """Typed on the command line (not a default, and not BACKDROP_STACK)."""
    return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE


def merge_global_options(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The subcommand's global options, with those typed before the subcommand. The same option
    on both sides must say the same thing; a typed --stack or --local wins over BACKDROP_STACK."""
    parent = ctx.parent
    merged = dict(values)
    for option in GLOBAL_OPTIONS:
        if parent is None or not _given(parent, option.name):
            continue
        early = parent.params[option.name]
        if not _given(ctx, option.name):
            merged[option.name] = early
        elif values[option.name] != early:
            raise click.UsageError(
                f"{option.flag} is given twice with different values: {early!s} before the"
                f" subcommand and {values[option.name]!s} after it; give it once.",
                ctx=ctx,
            )
    typed_stack = _given(ctx, "stack_name") or (parent is not None and _given(parent, "stack_name"))
    if merged["local"] and not typed_stack:
        merged["stack_name"] = None  # an explicit --local wins over BACKDROP_STACK
    return merged


def stack_command[C: CommandContext](
    context_type: type[C],
) -> Callable[[Callable[[C], int]], Callable[..., None]]:
    """The options every subcommand takes (which stack, --json; also accepted before the
    subcommand), its context (``context_type``: the stack and the subcommand's own options), and
    its error handling (``run_command``)."""

    def decorate(function: Callable[[C], int]) -> Callable[..., None]:
        @global_options
        @functools.wraps(function)
        def wrapper(
            stack_name: str | None,
            profile: str | None,
            region: str | None,
            local: bool,
            state_dir: Path | None,
            as_json: bool,
            **options: Any,
        ) -> None:
            given = {
                "stack_name": stack_name,
                "profile": profile,
                "region": region,
                "local": local,
                "state_dir": state_dir,
                "as_json": as_json,
            }

            def start(app: App) -> int:
                context = context_type(app, **options)
                context.check()
                return function(context)

            sys.exit(run_command(given, start))

        return wrapper

    return decorate


def run_command(given: dict[str, Any], start: Callable[[App], int]) -> int:
    """Runs a subcommand on the stack its global options name; returns its exit status. An error
    is a message on stderr and an exit status (with --json, also a JSON document on stdout)."""
    ctx = click.get_current_context()
    json_before = ctx.parent is not None and bool(ctx.parent.params.get("as_json"))
    ui = Ui(as_json=bool(given["as_json"]) or json_before)
    try:
        merged = merge_global_options(ctx, given)
    except click.UsageError as exc:
        if ui.as_json:
            ui.emit({"error": {"message": exc.format_message(), "exit_code": exc.exit_code}})
        raise
    target = Target(
        merged["stack_name"],
        merged["profile"],
        merged["region"],
        merged["local"],
        merged["state_dir"],
    )
    try:
        return start(App(target, ui))
    except click.ClickException as exc:
        if ui.as_json:
            ui.emit({"error": {"message": exc.format_message(), "exit_code": exc.exit_code}})
        raise
    except KeyboardInterrupt:
        message = "Interrupted (Ctrl-C)."
        if ui.as_json:
            ui.emit({"error": {"message": message, "exit_code": FAILED}})
        raise Failure(message) from None
    except (ClientError, BotoCoreError) as exc:
        if ui.as_json:
            ui.emit({"error": {"message": str(exc), "exit_code": FAILED}})
        raise Failure(f"AWS: {exc}") from exc


def _statuses(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> frozenset[Status]:
    return frozenset(Status(value) for value in values)


def workers_option[F: Callable[..., Any]](function: F) -> F:
    return click.option(
        "--workers",
        type=click.IntRange(1, 64),
        default=16,
        show_default=True,
        help="Concurrent S3 and DynamoDB requests.",
    )(function)


def digest_option[F: Callable[..., Any]](function: F) -> F:
    return click.option(
        "--digest",
        is_flag=True,
        help="Read each new object whose content digest is unknown (no job of its version, no SHA-256 "
        "checksum stored by S3) to find out whether it would reuse a result; without it such objects "
        "count as runs. Costs one GET of the whole object each.",
    )(function)


def wait_options[F: Callable[..., Any]](function: F) -> F:
    function = click.option(
        "--wait-timeout",
        type=click.FloatRange(min=0),
        metavar="SECONDS",
        help="Stop waiting after this long (exit status 1 if jobs are still open); default: no limit.",
    )(function)
    return click.option(
        "--wait/--no-wait",
        default=True,
        help="Wait until every job it started has ended (default), or return once the messages are sent.",
    )(function)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="backdrop", prog_name="backdrop")
@global_options
def cli(**_global: Any) -> None:
    """Operate a Backdrop stack: plan and run backfills, look jobs up, retry failures, report, review.

    Every subcommand talks to a deployed stack (--stack NAME, with --profile and --region; its
    resources and parameters come from CloudFormation) or to the local stack (--local). Add --json
    for one JSON document on stdout. These options go before or after the subcommand (backdrop
    --local status KEY, or backdrop status KEY --local). Exit status: 0 ok, 1 something failed (a
    job ended failed, a refusal, an interruption), 2 bad usage. Nothing costly happens without
    --yes (or a yes at a prompt that shows the cost).

    \b
    Examples:
      backdrop plan --stack backdrop uploads/spring/
      backdrop backfill --stack backdrop uploads/spring/ --max-runs 100 --yes
      backdrop status --local uploads/shoes/red.jpg
      backdrop retry --stack backdrop --status failed --error-code UNAUTHORIZED --yes
      backdrop report --stack backdrop --since 7d --csv jobs.csv
      backdrop render --stack backdrop uploads/spring/ --rendition amazon --yes
      backdrop review --stack backdrop --serve
    """


@cli.command(context_settings=CONTEXT)
@click.argument("prefix", required=False)
@click.option(
    "--color",
    "colour",
    type=ColourType(),
    help="Ask for this colour (#RRGGBB, RRGGBB or R,G,B) for every object: a new job per object "
    "(the colour is part of its identity); its result replaces the object's earlier one.",
)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path, dir_okay=False, writable=True),
    help="Write every object the backfill would send to FILE (JSON lines).",
)
@digest_option
@workers_option
@stack_command(PlanContext)
def plan(context: PlanContext) -> int:
    """Say what a backfill of PREFIX would do, before a cent is spent.

    Walks the uploads bucket under PREFIX (default: the upload prefix; current versions only),
    reads each object's metadata and first bytes with one ranged GET, and computes each object's
    job exactly as the pipeline will: its colour (metadata, colour rules, default, or --color),
    job id and rejection. Objects whose job already succeeded for this version and colour are
    skipped (never billed twice). With ReuseResults on, an object whose bytes and colour match a
    job that succeeded (and whose result still exists), or another object of the plan, reuses that
    result at $0; its content digest comes from a job of the same version or S3's stored SHA-256
    checksum (--digest reads the others; unknown ones count as runs). Prints the objects, what is
    already done, what would be rejected and why, what would be submitted, how many runs and how
    many reuses, the estimated cost of the runs at the stack's PricePerRunUsd, and the time at its
    SubmitMaxConcurrency and DailyRunBudget. Sends nothing.

    \b
    Examples:
      backdrop plan --stack backdrop uploads/spring/
      backdrop plan --stack backdrop uploads/amazon/ --color '#FFFFFF' --manifest amazon.jsonl
      backdrop plan --stack backdrop uploads/nightly/ --digest
      backdrop plan --local --json
    """
    from backdrop_cli.backfill import run_plan

    return run_plan(context)


@cli.command(context_settings=CONTEXT)
@click.argument("prefix", required=False)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Send the objects of a manifest `backdrop plan --manifest` wrote (instead of PREFIX).",
)
@click.option(
    "--color",
    "colour",
    type=ColourType(),
    help="Ask for this colour (#RRGGBB, RRGGBB or R,G,B) for every object: a new job per object "
    "(the colour is part of its identity); its result replaces the object's earlier one.",
)
@click.option(
    "--max-runs",
    type=click.IntRange(min=0),
    metavar="N",
    help="Send at most N objects that make a run this time (objects the pipeline will reject cost "
    "nothing and are sent too).",
)
@click.option("--yes", "-y", is_flag=True, help="Do it without asking (required when there is no terminal).")
@digest_option
@wait_options
@workers_option
@stack_command(BackfillContext)
def backfill(context: BackfillContext) -> int:
    """Feed objects that never produced a notification into the pipeline.

    Each object under PREFIX (or in --manifest) without a job for its version and colour goes on
    the uploads queue as an S3 object-created message, the path an upload takes: one job per object
    version and colour, no second run, the same rejections, and the daily run budget (jobs beyond
    it wait `held` and resume on their own). Resumable: which objects still need it is computed
    from the jobs table each time, so running it again after Ctrl-C or a crash sends only what is
    missing. With ReuseResults on, objects whose bytes and colour match an earlier result (or another
    object sent with them) reuse it at $0, as `backdrop plan` counts them; the cost to confirm and
    --max-runs count runs only. Ctrl-C stops sending after the batch in flight and prints what was
    sent. Then it shows progress until every job it started has ended (or --no-wait), and a
    summary. Exit status 1 if a job ended failed, canceled or timed out, or if not everything could
    be sent.

    \b
    Examples:
      backdrop backfill --stack backdrop uploads/spring/ --yes
      backdrop backfill --stack backdrop uploads/spring/ --max-runs 50 --yes --no-wait
      backdrop backfill --stack backdrop --manifest amazon.jsonl --yes
      backdrop backfill --local uploads/ --color 241,241,241 --yes --json
    """
    from backdrop_cli.backfill import run_backfill

    return run_backfill(context)


STATUS_CHOICE = click.Choice([s.value for s in Status])


@cli.command(context_settings=CONTEXT)
@click.argument("target", metavar="KEY|JOB_ID", required=False)
@click.option("--prefix", metavar="P", help="Every job under this key prefix instead (a table scan).")
@click.option(
    "--status",
    "statuses",
    type=STATUS_CHOICE,
    multiple=True,
    callback=_statuses,
    help="With --prefix: only jobs in this status (repeatable).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Rows shown (--json shows all).",
)
@stack_command(StatusContext)
def status(context: StatusContext) -> int:
    """Show every job of an object, one job, or the jobs under a prefix.

    KEY (or s3://bucket/KEY) lists every job of that object, newest first: all its versions and
    colours, with status, reason, run id, result location, timings and earlier attempts (the
    BySourceKey index). A 32-hex JOB_ID shows that job. Exit status 1 when there is no such job.

    \b
    Examples:
      backdrop status --stack backdrop uploads/shoes/red.jpg
      backdrop status --stack backdrop 3f1c0d0b8b7e4c55a2e0c3d1f6a9b2e4
      backdrop status --local --prefix uploads/spring/ --status failed --json
    """
    from backdrop_cli.status import run_status

    return run_status(context)


RETRY_CHOICE = click.Choice(RETRY_CHOICES)


@cli.command(context_settings=CONTEXT)
@click.argument("job_ids", metavar="[JOB_ID]...", nargs=-1)
@click.option(
    "--status",
    "statuses",
    type=RETRY_CHOICE,
    multiple=True,
    callback=_statuses,
    help="Retry every job in this status (repeatable).",
)
@click.option(
    "--error-code", metavar="CODE", help="With --status: only jobs that ended with this error code."
)
@click.option(
    "--since", type=Since(), help="With --status: only jobs that ended since (30m, 24h, 7d, or an ISO time)."
)
@click.option("--prefix", metavar="P", help="With --status: only jobs under this key prefix.")
@click.option(
    "--include-rejected",
    is_flag=True,
    help="Also retry rejected jobs (only those the stack's rules now accept).",
)
@click.option("--yes", "-y", is_flag=True, help="Do it without asking (required when there is no terminal).")
@wait_options
@workers_option
@stack_command(RetryContext)
def retry(context: RetryContext) -> int:
    """Run ended jobs again, on purpose: a new, recorded attempt of each.

    Each retry is the next attempt of the same job (attempt number and the previous outcome are
    kept in its history) and creates exactly one new run. Shows the cost (jobs x PricePerRunUsd)
    before it starts. Refuses, with the reason: jobs that succeeded or are still open, jobs whose
    source version no longer exists or is no longer the object's current version (billed for
    nothing), jobs whose previous completion event is still pending, and rejected jobs (bad input:
    the same bytes fail again) unless --include-rejected. Waits until the new attempts have ended
    (or --no-wait). Exit status 1 if any job was refused or ended failed.

    \b
    Examples:
      backdrop retry --stack backdrop --status failed --error-code UNAUTHORIZED --yes
      backdrop retry --stack backdrop --status timed_out --since 24h --prefix uploads/spring/
      backdrop retry --local 3f1c0d0b8b7e4c55a2e0c3d1f6a9b2e4 --yes --json
    """
    from backdrop_cli.retry import run_retry

    return run_retry(context)


@cli.command(context_settings=CONTEXT)
@click.option(
    "--since", type=Since(), help="Only jobs created since (30m, 24h, 7d, or an ISO time); default: all."
)
@click.option("--prefix", metavar="P", help="Only jobs under this key prefix.")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(path_type=Path, dir_okay=False, writable=True),
    help="Write one row per job to FILE.",
)
@click.option(
    "--top", type=click.IntRange(min=1), default=5, show_default=True, help="Prefixes shown in the backlog."
)
@stack_command(ReportContext)
def report(context: ReportContext) -> int:
    """Counts, failures, cost, latency, backlog and the run budget's spend.

    Counts jobs by status, ranks failure reasons, counts the runs billed and their cost (at the
    stack's PricePerRunUsd; every run created counts), gives the time to result (p50/p95 of
    succeeded jobs), the open jobs and the prefixes with the largest open backlog, the uploads
    queues' depth, and the spend: runs reserved per UTC day in the ledger against DailyRunBudget.

    \b
    Examples:
      backdrop report --stack backdrop --since 24h
      backdrop report --stack backdrop --since 2025-06-01 --prefix uploads/spring/ --csv spring.csv
      backdrop report --local --json
    """
    from backdrop_cli.report import run_report

    return run_report(context)


@cli.command(context_settings=CONTEXT)
@click.argument("prefix", required=False)
@click.option(
    "--rendition",
    metavar="NAME",
    help="Make only this rendition (one of the names in the stack's Renditions); default: all of them.",
)
@click.option("--yes", "-y", is_flag=True, help="Do it without asking (required when there is no terminal).")
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    default=900.0,
    show_default=True,
    help="Stop waiting after this long (exit status 1 if jobs are not rendered yet).",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    help="Wait until every job's renditions are written (default), or return once the requests are sent.",
)
@stack_command(RenderContext)
def render(context: RenderContext) -> int:
    """Make the renditions of existing results again, at $0: no run.

    For the newest succeeded job of each object under PREFIX (default: the upload prefix), asks
    the copy function to make the renditions the stack's Renditions parameter names (or only
    --rendition NAME) from the stored result and the original, as it does for a new result, with
    their verdicts: after the profiles changed, for example. Shows the plan (jobs, renditions,
    cost $0.00), asks, sends one request per job on the copy queue with progress, and waits until
    every job's renditions are written (or --wait-timeout). Resumable: run it again after Ctrl-C,
    a crash or a timeout, and the jobs rendered since the unfinished render began are skipped
    (a note under .backdrop/renders/ says when it began). A stack without Renditions: exit
    status 2, nothing sent. Exit status 1 if a job was not rendered or not everything was sent.
    (--profile is the AWS profile, as everywhere: the rendition is --rendition.)

    \b
    Examples:
      backdrop render --stack backdrop uploads/spring/ --yes
      backdrop render --stack backdrop --rendition amazon --yes --json
      backdrop render --local uploads/ --no-wait --yes
    """
    from backdrop_cli.render import run_render

    return run_render(context)


@cli.command(context_settings=CONTEXT)
@click.argument("action", type=click.Choice(REVIEW_ACTIONS), required=False)
@click.argument("job_ids", metavar="[JOB_ID]...", nargs=-1)
@click.option(
    "--note",
    metavar="TEXT",
    help=f"With reject: why (the job's error message; {NOTE_LIMIT} characters at most).",
)
@click.option(
    "--reviewer",
    metavar="NAME",
    help="Who decides, as recorded on the job (default: the AWS identity's ARN; $USER for --local).",
)
@click.option("--retry", is_flag=True, help="With reject: then retry the rejected jobs (new, billed runs).")
@click.option(
    "--yes", "-y", is_flag=True, help="With --retry: do it without asking (required without a terminal)."
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    default=300.0,
    show_default=True,
    help="Stop waiting for the decisions after this long (exit status 1 if a job is still held).",
)
@click.option("--serve", is_flag=True, help="Serve the review page on 127.0.0.1 (Ctrl-C stops it).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="With --serve: 0 picks a free port.",
)
@click.option(
    "--open/--no-open",
    "open_browser",
    default=True,
    help="With --serve: open the page in the default browser (default), or only print its URL.",
)
@stack_command(ReviewContext)
def review(context: ReviewContext) -> int:
    """Results held back as doubtful (needs_review): list them, approve or reject them.

    With the stack's QualityGate at hold, a result the quality checks doubt is not published: its
    job waits in needs_review, the result and its renditions under the review prefix. Without
    an action, lists those jobs (longest waiting first) with the checks' values and reasons.
    approve JOB... publishes exactly what was held (no run, $0); reject JOB... --note TEXT ends
    each job rejected (REJECTED_BY_REVIEW, the note as its message), and --retry then starts
    a new, billed attempt of each (cost shown and confirmed first). Both send one request per job
    on the copy queue and wait until the job has left needs_review. A job not waiting for review
    is refused, nothing sent for it (exit status 1).

    --serve serves the review page on 127.0.0.1 only: the original and the held result side by
    side (short-lived presigned URLs), the checks and reasons, approve and reject buttons and
    keyboard shortcuts. The first line on stdout is its URL, with the session's token.

    \b
    Examples:
      backdrop review --stack backdrop
      backdrop review --stack backdrop approve 3f1c0d0b8b7e4c55a2e0c3d1f6a9b2e4
      backdrop review --local reject 3f1c0d0b8b7e4c55a2e0c3d1f6a9b2e4 --note "label cut off" --retry --yes
      backdrop review --stack backdrop --serve
    """
    from backdrop_cli.review import run_review

    return run_review(context)


def main() -> None:
    """Console-script entry point (click exits 2 on usage errors, as ours do)."""
    cli.main(prog_name="backdrop")
