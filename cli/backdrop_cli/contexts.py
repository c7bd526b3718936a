"""One context object per subcommand: the stack it talks to (``app``) and its options, as click
parses them (a field per option, named as the option's parameter). ``stack_command`` builds it, so
an option is declared twice only: its click decorator, and its field here.

A context's ``check`` refuses the combinations of options the command cannot run with; it runs
before anything is read from the stack, so a usage error never waits for AWS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backdrop.colours import Colour
from backdrop.jobs import Status
from backdrop_cli.app import App
from backdrop_cli.errors import BadUsage
from backdrop_cli.groups import RETRY_BY_DEFAULT

REVIEW_ACTIONS = ("approve", "reject")
NOTE_LIMIT = 1000  # a note is the job's error message: kept short enough to read in a table


@dataclass(frozen=True)
class CommandContext:
    app: App

    def check(self) -> None:
        """Refuse (``BadUsage``) a combination of options the command cannot run with."""


@dataclass(frozen=True)
class PlanContext(CommandContext):
    prefix: str | None
    colour: Colour | None
    manifest: Path | None
    digest: bool
    workers: int


@dataclass(frozen=True)
class WaitingContext(CommandContext):
    """The options of a command that starts jobs and waits for them to end."""

    yes: bool
    wait: bool
    wait_timeout: float | None
    workers: int


@dataclass(frozen=True)
class BackfillContext(WaitingContext):
    prefix: str | None
    manifest: Path | None
    colour: Colour | None
    max_runs: int | None
    digest: bool

    def check(self) -> None:
        if self.manifest is not None and (self.prefix is not None or self.colour is not None):
            raise BadUsage("--manifest fixes the objects and their colour: give no PREFIX or --color with it")


@dataclass(frozen=True)
class RetryContext(WaitingContext):
    job_ids: tuple[str, ...]
    statuses: frozenset[Status]
    error_code: str | None
    since: str | None
    prefix: str | None
    include_rejected: bool

    def check(self) -> None:
        if self.job_ids and (self.statuses or self.error_code or self.since or self.prefix):
            raise BadUsage(
                "give JOB_IDs, or select with --status (and --error-code, --since, --prefix): not both"
            )
        if not self.job_ids and not self.statuses:
            raise BadUsage(f"which jobs? give JOB_IDs or --status {RETRY_BY_DEFAULT}")
        if Status.REJECTED in self.statuses and not self.include_rejected:
            raise BadUsage("--status rejected needs --include-rejected (the same bytes fail again)")


@dataclass(frozen=True)
class StatusContext(CommandContext):
    target: str | None
    prefix: str | None
    statuses: frozenset[Status]
    limit: int

    def check(self) -> None:
        if (self.target is None) == (self.prefix is None):
            raise BadUsage("give a KEY or JOB_ID, or --prefix P")
        if self.statuses and self.prefix is None:
            raise BadUsage("--status filters --prefix listings")


@dataclass(frozen=True)
class ReportContext(CommandContext):
    since: str | None
    prefix: str | None
    csv_path: Path | None
    top: int


@dataclass(frozen=True)
class RenderContext(CommandContext):
    prefix: str | None
    rendition: str | None
    yes: bool
    wait: bool
    wait_timeout: float | None


@dataclass(frozen=True)
class ReviewContext(CommandContext):
    action: str | None  # None: list the held jobs
    job_ids: tuple[str, ...]
    note: str | None
    reviewer: str | None
    retry: bool
    yes: bool
    wait_timeout: float
    serve: bool
    port: int
    open_browser: bool

    def check(self) -> None:
        if self.serve and (self.action or self.job_ids):
            raise BadUsage("--serve shows the page, where decisions are made: give no approve/reject")
        if self.serve and self.app.ui.as_json:
            raise BadUsage("--serve prints the page's URL: --json is for the list and the decisions")
        if self.action is None and self.job_ids:
            raise BadUsage(f"approve or reject {self.job_ids[0]}? `backdrop review approve|reject JOB...`")
        if self.action is not None and not self.job_ids:
            raise BadUsage(
                f"which jobs? `backdrop review {self.action} JOB...` (`backdrop review` lists them)"
            )
        if self.action != "reject" and (self.note is not None or self.retry):
            raise BadUsage("--note and --retry go with `reject`")
        if self.action == "reject" and not (self.note or "").strip():
            raise BadUsage("a rejection needs --note TEXT: it is the job's error message")
        if self.note is not None and len(self.note) > NOTE_LIMIT:
            raise BadUsage(f"--note is at most {NOTE_LIMIT} characters")
