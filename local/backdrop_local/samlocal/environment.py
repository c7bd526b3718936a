"""What the SAM CLI and the functions are given: the SAM CLI's own environment (every AWS endpoint
at the local one, nothing of this machine's settings), the functions' ``--env-vars`` files, the
shell's ``local.env``, and the copy of the built template that declares what only local runs set."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Resources
from backdrop_local.samlocal.shared import BUILT_TEMPLATE, REGION, SamLocalError

# Variables the local stack gives the functions that template.yaml does not declare (so that
# --env-vars cannot set them). Declared empty in the local copy of the template; botocore ignores
# an empty AWS_ENDPOINT_URL and the core treats an empty insecure origin as none.
LOCAL_ONLY_VARIABLES = ("AWS_ENDPOINT_URL", "BACKDROP_INSECURE_OUTPUT_ORIGIN")
# Prefixes of this machine's variables that must not reach the SAM CLI: SAM hands a shell variable
# to a function whenever the template declares its name, and AWS_* would redirect SAM itself.
_SCRUBBED_PREFIXES = ("AWS_", "BACKDROP_", "POWERTOOLS_")
_SCRUBBED_NAMES = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"}


def local_template(
    built: Path = BUILT_TEMPLATE, declare: Iterable[str] = LOCAL_ONLY_VARIABLES, out: Path | None = None
) -> Path:
    """The built template, or a copy of it beside it that also declares ``declare`` (empty) in
    Globals, so that ``--env-vars`` can set them. Written as JSON, which SAM reads as YAML."""
    if not built.is_file():
        raise SamLocalError(f"{built} is missing: run `make build` first")
    doc: dict[str, Any] = cfn_yaml.load(str(built))
    variables = (
        doc.setdefault("Globals", {})
        .setdefault("Function", {})
        .setdefault("Environment", {})
        .setdefault("Variables", {})
    )
    missing = [name for name in declare if name not in variables]
    if not missing:
        return built
    for name in missing:
        variables[name] = ""
    # Beside the original: CodeUri and ContentUri are relative to the template's folder.
    target = out or built.with_name("template.samlocal.json")
    target.write_text(json.dumps(doc, indent=1) + "\n")
    return target


def function_environment(
    resources: Resources,
    *,
    endpoint_url: str,
    runflow_url: str,
    callback_url: str = "",
    insecure_output_origin: str = "",
) -> dict[str, str]:
    """What every function needs to run against local services (as ``--env-vars`` values).

    All URLs must be reachable from a container: on the bridge's host address, not loopback.
    """
    env = {
        "AWS_ENDPOINT_URL": endpoint_url,
        "BACKDROP_JOBS_TABLE": resources.jobs_table,
        "BACKDROP_IDEMPOTENCY_TABLE": resources.idempotency_table,
        "BACKDROP_LEDGER_TABLE": resources.ledger_table,
        "BACKDROP_UPLOADS_QUEUE_URL": resources.queue_url,
        "BACKDROP_COPY_QUEUE_URL": resources.copy_queue_url,
        "BACKDROP_UPLOADS_BUCKET": resources.uploads_bucket,
        "BACKDROP_UPLOAD_PREFIX": resources.upload_prefix,
        "BACKDROP_RESULTS_BUCKET": resources.results_bucket,
        "BACKDROP_RESULTS_PREFIX": resources.results_prefix,
        "BACKDROP_RUNFLOW_API_KEY_SECRET": resources.api_key_secret,
        "BACKDROP_CALLBACK_SECRET": resources.callback_secret_name,
        "BACKDROP_RUNFLOW_BASE_URL": runflow_url,
        "BACKDROP_INSECURE_OUTPUT_ORIGIN": insecure_output_origin,
    }
    if callback_url:
        env["BACKDROP_CALLBACK_URL"] = callback_url
    return env


# Variables SAM sets in a container itself (from its own environment), never from --env-vars.
_SAM_OWN = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


def write_stack_files(
    state_dir: Path,
    endpoint_url: str,
    function_envs: Mapping[str, Mapping[str, str]],
    shell: Mapping[str, str],
) -> dict[str, str]:
    """What `sam local` and a terminal need to work against a running local stack:
    ``sam/env-vars.json`` (each function's environment as the stack gives it, for ``--env-vars``),
    ``local.env`` (for ``set -a; . .backdrop/local.env``: every AWS endpoint, STS included, at the
    stack's, its credentials, SAM's own settings, and ``shell``'s names such as the buckets), and,
    once ``sam build`` ran, the copy of the built template that declares what only local runs set."""
    directory = state_dir / "sam"
    directory.mkdir(parents=True, exist_ok=True)
    env_vars = directory / "env-vars.json"
    doc = {name: {k: v for k, v in env.items() if k not in _SAM_OWN} for name, env in function_envs.items()}
    env_vars.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    app_dir = directory / "sam-cli"
    prepare_sam_app_dir(app_dir)
    local_env = state_dir / "local.env"
    values = {**sam_environment(endpoint_url, app_dir=app_dir, base={}), **shell}
    local_env.write_text("".join(f"{k}={_shell_quote(v)}\n" for k, v in sorted(values.items())))
    files = {"sam_env_vars": str(env_vars), "local_env": str(local_env)}
    if BUILT_TEMPLATE.is_file():
        files["sam_template"] = str(local_template())
    return files


def _shell_quote(value: str) -> str:
    return (
        value if re.fullmatch(r"[A-Za-z0-9_./:@%+=,-]*", value) else "'" + value.replace("'", "'\\''") + "'"
    )


def write_env_vars(
    path: Path,
    functions: Iterable[str],
    env: Mapping[str, str],
    per_function: Mapping[str, Mapping[str, str]] | None = None,
) -> Path:
    """An ``--env-vars`` file: ``env`` (plus that function's own entries) for each function."""
    per_function = per_function or {}
    doc = {name: {**env, **per_function.get(name, {})} for name in functions}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def sam_environment(
    endpoint_url: str,
    *,
    region: str = REGION,
    access_key_id: str = ACCESS_KEY_ID,
    secret_access_key: str = SECRET_ACCESS_KEY,
    app_dir: Path,
    proxy_url: str | None = None,
    local_hosts: Iterable[str] = (),
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The SAM CLI's environment: this one, less AWS and project settings, plus every AWS endpoint
    at ``endpoint_url``. ``proxy_url`` (an ``EgressTrap``) receives anything not for ``local_hosts``."""
    source = os.environ if base is None else base
    env = {
        k: v
        for k, v in source.items()
        if not k.startswith(_SCRUBBED_PREFIXES) and k.upper() not in _SCRUBBED_NAMES
    }
    env.update(
        {
            "AWS_ENDPOINT_URL": endpoint_url,
            # SAM CLI asks STS for the account id on every invoke; the general variable covers it,
            # the specific one makes sure a profile's sts endpoint cannot win.
            "AWS_ENDPOINT_URL_STS": endpoint_url,
            "AWS_ACCESS_KEY_ID": access_key_id,
            "AWS_SECRET_ACCESS_KEY": secret_access_key,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            # No profile files (an SSO or credential_process profile would reach out) and no
            # instance metadata lookups.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "SAM_CLI_TELEMETRY": "0",
            # SAM CLI's own state (telemetry id, last version check) in a folder of ours, so that
            # its weekly PyPI version check can be marked done (see prepare_sam_app_dir).
            "__SAM_CLI_APP_DIR": str(app_dir),
        }
    )
    if proxy_url:
        hosts = ["127.0.0.1", "localhost", *local_hosts]
        env.update(
            {
                "HTTP_PROXY": proxy_url,
                "HTTPS_PROXY": proxy_url,
                "http_proxy": proxy_url,
                "https_proxy": proxy_url,
                "NO_PROXY": ",".join(dict.fromkeys(hosts)),
                "no_proxy": ",".join(dict.fromkeys(hosts)),
            }
        )
    return env


def prepare_sam_app_dir(app_dir: Path) -> None:
    app_dir.mkdir(parents=True, exist_ok=True)
    path = app_dir / "metadata.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data.update({"telemetryEnabled": False, "lastVersionCheck": time.time()})
    path.write_text(json.dumps(data) + "\n")
