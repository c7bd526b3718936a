"""Is every AWS call the functions made allowed by their policies in the template, and is every
permission the template grants used? ``python -m backdrop_local.iamcheck DIR... [--unused]``

Reads, under each DIR (recursively), the ``<instance>.calls.jsonl`` a local stack's moto server
recorded (``iamrecord``) and the ``<instance>.policies.json`` it wrote (``iampolicies``), and judges
each call made with a function's access key against that function's role, as IAM would:

- statements are matched with moto's IAM policy evaluator (``moto.iam.access_control``); actions
  compare case-insensitively, resources exactly, ``*`` and ``?`` as IAM's wildcards;
- conditions are evaluated here, for the operators the templates use (string, ARN, Bool, Null,
  ``...IfExists``); an operator this module does not know fails the check rather than passing;
- an explicit Deny (in the role or in a bucket or queue policy) wins; otherwise an Allow in the
  role is needed. The request context is AWS's: the functions reach AWS over HTTPS there
  (``aws:SecureTransport`` true), whatever the local endpoint's scheme.

Prints ``IAM calls=<n> denied=<n>`` (with ``--unused``, `` unused=<n>`` and each statement action
no call used, apart from ``RARE_PATHS``) and exits 1 on any denial (with ``--fail-unused``, also on
an unused permission).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moto.iam.access_control import IAMPolicyStatement, PermissionResult

from backdrop_local.iamrecord import CALLS_SUFFIX, POLICIES_SUFFIX

# Actions AWS authorizes without any policy.
NEEDS_NO_PERMISSION = {"sts:getcalleridentity"}

# Permissions kept although the test runs may never use them: each is on a path that only a
# failure or a rare situation takes. (function, statement Sid, action) -> why it is needed.
_DELETED_UPLOAD = (
    "an upload deleted before it is read answers 404 only to a caller that may list the bucket (403 "
    "otherwise), and that 404 is how a deleted upload is told (SOURCE_DELETED, superseded jobs)"
)
RARE_PATHS: dict[tuple[str, str, str], str] = {
    ("CopyFunction", "WriteResults", "s3:AbortMultipartUpload"): (
        "a streamed copy that fails after its multipart upload started (an output that ends short or "
        "grows past MaxOutputBytes, a lost connection) aborts the upload, so no parts are kept and billed"
    ),
    ("CopyFunction", "WriteResults", "s3:DeleteObject"): (
        "a newer version of an upload with fewer outputs removes the extra result objects the older "
        "version wrote (copying._delete_stale)"
    ),
    ("SubmitFunction", "ListUploads", "s3:ListBucket"): _DELETED_UPLOAD,
    ("CopyFunction", "ListUploads", "s3:ListBucket"): _DELETED_UPLOAD,
    ("ReconcileFunction", "ListUploads", "s3:ListBucket"): _DELETED_UPLOAD,
    ("SubmitFunction", "Idempotency", "dynamodb:GetItem"): (
        "Powertools idempotency reads the record with GetItem when a conditional write that failed "
        "does not return it (DynamoDB returns it today); part of Powertools' documented permissions"
    ),
    ("CallbackFunction", "FindJobByRunId", "dynamodb:Query"): (
        "a signed callback whose metadata names no job that exists (a run adopted after a lost create "
        "answer, metadata Runflow dropped) is matched to its job by run id (index ByRunId)"
    ),
    ("ReconcileFunction", "ReadRunBudget", "dynamodb:UpdateItem"): (
        "the reconciler creating the run of a job whose reservation was given back (Runflow refused "
        "the earlier create) reserves it again against the day's budget (ledger table)"
    ),
}

# The request context AWS gives every call the functions make (their SDK uses HTTPS endpoints).
BASE_CONTEXT = {"aws:securetransport": "true"}


class UnsupportedCondition(ValueError):
    """A condition operator this evaluator does not implement: the check must not guess."""


@dataclass(frozen=True)
class Denial:
    instance: str
    function: str
    action: str
    resource: str
    request: str = ""
    explicit: bool = False


@dataclass
class Report:
    calls: int = 0
    other_calls: int = 0  # made with keys that are not a function's (the tests, the CLI)
    denied: Counter[Denial] = field(default_factory=Counter)
    # (function, statement, action) of each permission no call (of any instance checked) used
    unused: list[tuple[str, str, str]] = field(default_factory=list)
    # (function, statement, action, reason) of each unused permission RARE_PATHS keeps
    rare_unused: list[tuple[str, str, str, str]] = field(default_factory=list)
    used: set[tuple[str, str, str, str]] = field(default_factory=set)

    @property
    def denied_calls(self) -> int:
        return sum(self.denied.values())

    def lines(self, show_unused: bool) -> list[str]:
        head = f"IAM calls={self.calls} denied={self.denied_calls}"
        if show_unused:
            head += f" unused={len(self.unused)}"
        out = [head]
        for denial, count in sorted(self.denied.items(), key=lambda item: (item[0].function, item[0].action)):
            kind = "explicitly " if denial.explicit else ""
            extra = f" [{denial.request}]" if denial.request else ""
            out.append(
                f"  DENIED ({kind}{count}x) {denial.instance} {denial.function} {denial.action} "
                f"on {denial.resource}{extra}"
            )
        if show_unused:
            for function, statement, action in self.unused:
                out.append(f"  UNUSED {function} {statement}: {action}")
            for function, statement, action, reason in self.rare_unused:
                out.append(f"  RARE   {function} {statement}: {action} (kept: {reason})")
        return out


# ---------------------------------------------------------------------------------------------- matching
def _pattern(value: str) -> str:
    """An IAM wildcard pattern as moto's matcher reads it: everything literal but ``*`` and ``?``
    (moto turns ``*`` into ``.*`` and reads the rest as a regular expression)."""
    return "*".join(".".join(re.escape(part) for part in piece.split("?")) for piece in value.split("*"))


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _matches(statement: Mapping[str, Any], action: str, resource: str) -> bool:
    """Whether the statement's Action (NotAction) and Resource (NotResource) cover the call."""
    normalized: dict[str, Any] = {"Effect": "Allow"}
    for key in ("Action", "NotAction"):
        if key in statement:
            normalized[key] = [_pattern(a.lower()) for a in _as_list(statement[key])]
    if "Resource" in statement:
        normalized["Resource"] = [_pattern(r) for r in _as_list(statement["Resource"])]
    elif "NotResource" in statement:
        normalized["Resource"] = ["*"]
    else:
        return False  # an identity statement without a resource grants nothing
    if "Action" not in normalized and "NotAction" not in normalized:
        return False
    result = IAMPolicyStatement(normalized).is_action_permitted(action.lower(), resource)
    if result != PermissionResult.PERMITTED:
        return False
    if "NotResource" in statement:
        patterns = [_pattern(r) for r in _as_list(statement["NotResource"])]
        excluded = IAMPolicyStatement(
            {"Effect": "Allow", "Action": ["*"], "Resource": patterns}
        ).is_action_permitted("x", resource)
        return excluded != PermissionResult.PERMITTED
    return True


def _principal_covers(statement: Mapping[str, Any]) -> bool:
    """Whether a resource policy statement's principal includes a role of this account."""
    principal = statement.get("Principal")
    if principal == "*":
        return True
    if isinstance(principal, dict):
        aws = _as_list(principal.get("AWS"))
        return "*" in aws
    return False


_OPERATORS = {
    "Null",
    "StringEquals",
    "ArnEquals",
    "StringNotEquals",
    "ArnNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "ArnLike",
    "StringNotLike",
    "ArnNotLike",
    "Bool",
}


def _condition_holds(operator: str, expected: list[str], actual: str | None) -> bool:
    base = operator
    if_exists = base.endswith("IfExists")
    if if_exists:
        base = base[: -len("IfExists")]
    if base not in _OPERATORS:
        raise UnsupportedCondition(operator)
    if base == "Null":
        return (actual is None) == (expected[0].lower() == "true")
    if actual is None:
        return if_exists
    if base in ("StringEquals", "ArnEquals"):
        return actual in expected
    if base in ("StringNotEquals", "ArnNotEquals"):
        return actual not in expected
    if base == "StringEqualsIgnoreCase":
        return actual.lower() in [e.lower() for e in expected]
    if base == "StringNotEqualsIgnoreCase":
        return actual.lower() not in [e.lower() for e in expected]
    if base in ("StringLike", "ArnLike"):
        return any(fnmatch.fnmatchcase(actual, e) for e in expected)
    if base in ("StringNotLike", "ArnNotLike"):
        return not any(fnmatch.fnmatchcase(actual, e) for e in expected)
    if base == "Bool":
        return actual.lower() in [e.lower() for e in expected]
    raise UnsupportedCondition(operator)


def _conditions_hold(statement: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, tests in (statement.get("Condition") or {}).items():
        for key, expected in tests.items():
            if not _condition_holds(operator, _as_list(expected), context.get(key.lower())):
                return False
    return True


def statement_applies(
    statement: Mapping[str, Any], action: str, resource: str, context: Mapping[str, str]
) -> bool:
    return _matches(statement, action, resource) and _conditions_hold(statement, context)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    explicit_deny: bool = False
    # (policy name, statement label) of the identity statements that allowed it
    by: tuple[tuple[str, str], ...] = ()


def _label(statement: Mapping[str, Any], index: int) -> str:
    return str(statement.get("Sid") or f"#{index}")


def decide(
    function: Mapping[str, Any],
    resource_policies: Sequence[Mapping[str, Any]],
    action: str,
    resource: str,
    context: Mapping[str, str] | None = None,
) -> Decision:
    """IAM's decision for one call by one function's role (same account: the role's Allow suffices)."""
    if action.lower() in NEEDS_NO_PERMISSION:
        return Decision(True)
    ctx = {**BASE_CONTEXT, **{k.lower(): str(v) for k, v in (context or {}).items()}}
    for policy in resource_policies:
        for statement in policy["statements"]:
            if (
                statement.get("Effect") == "Deny"
                and _principal_covers(statement)
                and statement_applies(statement, action, resource, ctx)
            ):
                return Decision(False, explicit_deny=True)
    allowed_by: list[tuple[str, str]] = []
    for policy in [*function.get("inline", []), *function.get("managed", [])]:
        for index, statement in enumerate(policy["statements"]):
            if not statement_applies(statement, action, resource, ctx):
                continue
            if statement.get("Effect") == "Deny":
                return Decision(False, explicit_deny=True)
            allowed_by.append((str(policy["name"]), _label(statement, index)))
    return Decision(bool(allowed_by), by=tuple(allowed_by))


# ---------------------------------------------------------------------------------------------- files
def _load_calls(path: Path) -> Iterable[dict[str, Any]]:
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line:
                yield json.loads(line)


def _generation_at(generations: Sequence[Mapping[str, Any]], t: float) -> int:
    index = 0
    for i, generation in enumerate(generations):
        if float(generation["since"]) <= t:
            index = i
    return index


def check_dir(directory: Path, report: Report) -> list[Path]:
    """Judges every call recorded in ``directory`` (any ``*.calls.jsonl``: one moto server may serve
    several stacks) by the role of the function whose key made it (any ``*.policies.json``)."""
    policies_paths = sorted(directory.glob(f"*{POLICIES_SUFFIX}"))
    roles: dict[str, tuple[str, str, list[dict[str, Any]]]] = {}  # key -> instance, function, generations
    for path in policies_paths:
        doc = json.loads(path.read_text())
        generations: list[dict[str, Any]] = doc["generations"]
        for generation in generations:
            for logical, fn in generation["functions"].items():
                roles[fn["access_key"]] = (str(doc["instance"]), logical, generations)
    for calls_path in sorted(directory.glob(f"*{CALLS_SUFFIX}")):
        for call in _load_calls(calls_path):
            role = roles.get(call.get("key", ""))
            if role is None:
                report.other_calls += 1
                continue
            for needed in implied_calls(call):
                _judge(needed, *role, report)
    return policies_paths


def implied_calls(call: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The call, and what it needs besides its own action. S3 answers a read of a missing key with
    404 only to a caller that may list the bucket (403 otherwise), and the functions tell a deleted
    upload or an absent result by that 404: such a read needs s3:ListBucket on the bucket."""
    calls = [dict(call)]
    if (
        call.get("status") == 404
        and call.get("action") in ("s3:GetObject", "s3:GetObjectVersion")
        and str(call.get("resource", "")).startswith("arn:aws:s3:::")
    ):
        bucket = str(call["resource"]).split("/", 1)[0]
        calls.append({**call, "action": "s3:ListBucket", "resource": bucket, "context": {}})
    return calls


def _judge(
    call: Mapping[str, Any], instance: str, logical: str, generations: list[dict[str, Any]], report: Report
) -> None:
    report.calls += 1
    at = _generation_at(generations, float(call.get("t", 0)))
    # An invocation that started before a stack update finishes under the older configuration.
    candidates = [generations[at], *([generations[at - 1]] if at > 0 else [])]
    decision = Decision(False)
    for generation in candidates:
        if logical not in generation["functions"]:
            continue
        decision = decide(
            generation["functions"][logical],
            generation["resource_policies"],
            call["action"],
            call["resource"],
            call.get("context"),
        )
        if decision.allowed:
            break
    if not decision.allowed:
        denial = Denial(
            instance,
            logical,
            call["action"],
            call["resource"],
            call.get("request", ""),
            decision.explicit_deny,
        )
        report.denied[denial] += 1
        return
    for policy_name, label in decision.by:
        report.used.add((logical, policy_name, label, str(call["action"]).lower()))


def _unused(policies_paths: Sequence[Path], report: Report) -> None:
    """Each action of each inline statement of the newest configuration that no allowed call used.
    A statement's action is used when a call it allowed has an action the entry matches."""
    seen: set[tuple[str, str, str]] = set()
    rare_seen: set[tuple[str, str, str]] = set()
    for path in policies_paths:
        doc = json.loads(path.read_text())
        newest = doc["generations"][-1]
        for logical, function in newest["functions"].items():
            for policy in function["inline"]:
                for index, statement in enumerate(policy["statements"]):
                    if statement.get("Effect") != "Allow":
                        continue
                    label = _label(statement, index)
                    used_actions = [
                        action
                        for (fn, name, lab, action) in report.used
                        if fn == logical and name == policy["name"] and lab == label
                    ]
                    for entry in _as_list(statement.get("Action")):
                        if any(fnmatch.fnmatchcase(action, entry.lower()) for action in used_actions):
                            continue
                        key = (logical, label, entry)
                        reason = RARE_PATHS.get(key)
                        if reason is not None:
                            if key not in rare_seen:
                                rare_seen.add(key)
                                report.rare_unused.append((*key, reason))
                            continue
                        if key not in seen:
                            seen.add(key)
                            report.unused.append(key)


def find_dirs(paths: Iterable[Path]) -> list[Path]:
    """Folders holding a ``*.policies.json``: each given folder and those below it."""
    found: set[Path] = set()
    for path in paths:
        if path.is_file() and path.name.endswith(POLICIES_SUFFIX):
            found.add(path.parent)
        elif path.is_dir():
            found.update(p.parent for p in path.rglob(f"*{POLICIES_SUFFIX}"))
    return sorted(found)


def check(paths: Iterable[Path], *, unused: bool = False) -> Report:
    """Every recorded call under ``paths`` judged; with ``unused``, also what no call used. The
    unused list is over all of ``paths`` together: a permission one run needs is used."""
    report = Report()
    policies: list[Path] = []
    for directory in find_dirs(paths):
        policies += check_dir(directory, report)
    if unused:
        _unused(policies, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backdrop_local.iamcheck", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, help="folders (searched recursively) or policies files"
    )
    parser.add_argument("--unused", action="store_true", help="also list the permissions no call used")
    parser.add_argument("--fail-unused", action="store_true", help="exit 1 on an unused permission too")
    args = parser.parse_args(argv)
    if not find_dirs(args.paths):
        print(f"IAM no {POLICIES_SUFFIX} under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 2
    report = check(args.paths, unused=args.unused or args.fail_unused)
    for line in report.lines(args.unused or args.fail_unused):
        print(line)
    if report.denied:
        return 1
    return 1 if args.fail_unused and report.unused else 0


if __name__ == "__main__":
    raise SystemExit(main())
