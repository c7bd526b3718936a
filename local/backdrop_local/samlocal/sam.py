"""The SAM wrapper: ``sam local invoke`` and ``sam local start-api`` for one template against one
local AWS endpoint, with the environment of ``environment`` and, as proxy, an ``EgressTrap``."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY
from backdrop_local.samlocal.bridge import free_port
from backdrop_local.samlocal.egress import EgressTrap
from backdrop_local.samlocal.engine import remove_containers, sam_containers, stop_group
from backdrop_local.samlocal.environment import prepare_sam_app_dir, sam_environment
from backdrop_local.samlocal.shared import REGION, ROOT, SamLocalError

_CONTAINER_ID = re.compile(r"SAM_CONTAINER_ID: ([0-9a-f]{12,64})")


@dataclass(frozen=True)
class InvokeResult:
    response: Any
    logs: str
    stdout: str
    seconds: float
    container_ids: tuple[str, ...]


@dataclass
class LocalApi:
    url: str
    log_path: Path
    process: subprocess.Popen[bytes]
    startup_seconds: float = 0.0
    container_ids: set[str] = field(default_factory=set)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _parse_response(stdout: str) -> Any:
    text = stdout.strip()
    if not text:
        return None
    for candidate in (text, text.splitlines()[-1]):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return text


class SamLocal:
    """Runs ``sam local`` for one template against one local AWS endpoint."""

    def __init__(
        self,
        *,
        endpoint_url: str,
        image: str,
        template: Path,
        env_vars: Path | None = None,
        state_dir: Path,
        region: str = REGION,
        access_key_id: str = ACCESS_KEY_ID,
        secret_access_key: str = SECRET_ACCESS_KEY,
        sam: Path | None = None,
        trap: EgressTrap | None = None,
        parameter_overrides: Mapping[str, str] | None = None,
        function_keys: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        # Access key id per function: SAM hands a container its own credentials, so each function
        # signs as itself (its role, for the IAM check) only if SAM runs with that function's key.
        self.function_keys = dict(function_keys or {})
        self.image = image
        self.template = template
        self.env_vars = env_vars
        self.state_dir = state_dir
        self.region = region
        self.sam = sam or sam_executable()
        self.trap = trap
        self.parameter_overrides = dict(parameter_overrides or {})
        app_dir = state_dir / "sam-cli"
        prepare_sam_app_dir(app_dir)
        endpoint_host = endpoint_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        self.env = sam_environment(
            endpoint_url,
            region=region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            app_dir=app_dir,
            proxy_url=trap.url if trap else None,
            local_hosts=[endpoint_host],
        )

    def env_for(self, functions: Iterable[str]) -> dict[str, str]:
        """The SAM CLI's environment to run ``functions``: with their access key when they share one."""
        keys = {self.function_keys[f] for f in functions if f in self.function_keys}
        if len(keys) != 1:
            return self.env
        return {**self.env, "AWS_ACCESS_KEY_ID": keys.pop()}

    def _common_args(self) -> list[str]:
        args = [
            "--template",
            str(self.template),
            "--invoke-image",
            self.image,
            # Without it SAM asks the image's registry whether the image is current.
            "--skip-pull-image",
            "--region",
            self.region,
            # SAM publishes each container's runtime API port on this interface and calls it there.
            "--container-host",
            "127.0.0.1",
            "--container-host-interface",
            "127.0.0.1",
        ]
        if self.env_vars:
            args += ["--env-vars", str(self.env_vars)]
        if self.parameter_overrides:
            args += [
                "--parameter-overrides",
                " ".join(f"ParameterKey={k},ParameterValue={v}" for k, v in self.parameter_overrides.items()),
            ]
        return args

    def invoke(self, function: str, event: Path | None = None, *, timeout: float = 300.0) -> InvokeResult:
        """``sam local invoke``: the function's parsed response and everything SAM and the function logged."""
        args = [str(self.sam), "local", "invoke", function, *self._common_args()]
        args += ["--event", str(event)] if event else ["--no-event"]
        before = sam_containers(self.image)
        started = time.monotonic()
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env_for([function]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(process, grace=5.0)
            out, err = process.communicate()
            raise SamLocalError(
                f"sam local invoke {function} did not finish within {timeout:.0f}s:\n"
                f"{err.decode(errors='replace')[-3000:]}"
            ) from None
        finally:
            # SAM removes the container after an invoke; one left behind (killed SAM) goes here.
            remove_containers(sam_containers(self.image) - before)
        logs = err.decode(errors="replace")
        stdout = out.decode(errors="replace")
        if process.returncode != 0:
            raise SamLocalError(f"sam local invoke {function} exited {process.returncode}:\n{logs[-3000:]}")
        return InvokeResult(
            response=_parse_response(stdout),
            logs=logs,
            stdout=stdout,
            seconds=time.monotonic() - started,
            container_ids=tuple(_CONTAINER_ID.findall(logs)),
        )

    @contextlib.contextmanager
    def start_api(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        timeout: float = 180.0,
        warm_containers: str | None = None,
    ) -> Iterator[LocalApi]:
        """``sam local start-api`` on ``host`` (loopback unless a container must call it), until it
        answers. On exit SAM is stopped and every container it made is removed, warm ones included."""
        port = port or free_port(host)
        args = [
            str(self.sam),
            "local",
            "start-api",
            *self._common_args(),
            "--host",
            host,
            "--port",
            str(port),
        ]
        if warm_containers:
            args += ["--warm-containers", warm_containers]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / f"start-api-{port}.log"
        before = sam_containers(self.image)
        started = time.monotonic()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                args,
                cwd=ROOT,
                env=self.env_for(api_functions(self.template)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        api = LocalApi(url=f"http://{host}:{port}", log_path=log_path, process=process)
        try:
            _wait_until_answers(api, timeout)
            api.startup_seconds = time.monotonic() - started
            yield api
        finally:
            stop_group(process)
            api.container_ids = set(_CONTAINER_ID.findall(api.logs()))
            # SAM leaves warm containers running after it stops: remove them by the ids it printed
            # and by what appeared from our image since it started.
            remove_containers(api.container_ids | (sam_containers(self.image) - before))


def api_functions(template: Path) -> list[str]:
    """The functions ``sam local start-api`` serves: those with an Api or HttpApi event."""
    doc: dict[str, Any] = cfn_yaml.load(str(template))
    return [
        logical
        for logical, resource in doc.get("Resources", {}).items()
        if resource.get("Type") == "AWS::Serverless::Function"
        and any(
            event.get("Type") in ("Api", "HttpApi")
            for event in (resource.get("Properties", {}).get("Events") or {}).values()
        )
    ]


def _wait_until_answers(api: LocalApi, timeout: float) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    deadline = time.monotonic() + timeout
    while True:
        if api.process.poll() is not None:
            raise SamLocalError(f"sam local start-api exited {api.process.returncode}:\n{api.logs()[-3000:]}")
        try:
            opener.open(api.url + "/", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer (404, 403) means the server is up
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SamLocalError(
                f"sam local start-api did not answer on {api.url} within {timeout:.0f}s:\n"
                f"{api.logs()[-3000:]}"
            )
        time.sleep(0.5)


def sam_executable() -> Path:
    venv_sam = Path(sys.executable).with_name("sam")
    if venv_sam.exists():
        return venv_sam
    return ROOT / ".venv" / "bin" / "sam"
