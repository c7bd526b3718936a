"""``sam local invoke`` and ``sam local start-api`` against local services, with nothing going out.

- The Docker engine and the python3.12 Lambda image come from ``local/sam/`` (``ensure_engine``,
  ``ensure_image``); both raise ``SamLocalUnavailable`` with a one-line reason where they cannot be
  had, so callers skip loudly.
- Containers sit on the Docker bridge, where 127.0.0.1 is the container itself: every service a
  function calls must listen on the bridge's host address (``bridge_host_address``), the only
  non-loopback address used here.
- ``SamLocal`` runs the SAM CLI with every AWS endpoint it uses (STS included: SAM asks it for the
  account id on every invoke) pointed at one local endpoint, dummy credentials, no profile files,
  telemetry and its weekly version check off, and an HTTP(S) proxy that forwards nothing
  (``EgressTrap``), so an attempt to reach anything else is refused and recorded.
- ``--env-vars`` only overrides variables the template declares: ``local_template`` writes a copy of
  the built template that also declares the variables only local runs set (``AWS_ENDPOINT_URL``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Resources

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "local" / "sam"
BUILT_TEMPLATE = ROOT / ".aws-sam" / "build" / "template.yaml"
UNAVAILABLE_EXIT = 3  # what local/sam/*.sh exit with when Docker or the image cannot be had here
REGION = "us-east-1"
# Variables the local stack gives the functions that template.yaml does not declare (so that
# --env-vars cannot set them). Declared empty in the local copy of the template; botocore ignores
# an empty AWS_ENDPOINT_URL and the core treats an empty insecure origin as none.
LOCAL_ONLY_VARIABLES = ("AWS_ENDPOINT_URL", "BACKDROP_INSECURE_OUTPUT_ORIGIN")
# Prefixes of this machine's variables that must not reach the SAM CLI: SAM hands a shell variable
# to a function whenever the template declares its name, and AWS_* would redirect SAM itself.
_SCRUBBED_PREFIXES = ("AWS_", "BACKDROP_", "POWERTOOLS_")
_SCRUBBED_NAMES = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"}
_CONTAINER_ID = re.compile(r"SAM_CONTAINER_ID: ([0-9a-f]{12,64})")


class SamLocalUnavailable(RuntimeError):
    """No Docker engine or Lambda image can be had on this machine; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SamLocalError(RuntimeError):
    """The SAM CLI or a local/sam script failed in a way that is not about this machine's limits."""


# ---------------------------------------------------------------------------------------------- engine
def _run_script(name: str, timeout: float) -> str:
    # Its own process group, so that a timeout also ends what it runs (apt-get, debootstrap, pip);
    # a dockerd it starts has a session of its own and stays.
    process = subprocess.Popen(
        ["bash", str(SCRIPTS / name)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(process, grace=5.0)
        process.communicate()
        raise SamLocalError(f"{name} did not finish within {timeout:.0f}s") from None
    if process.returncode == UNAVAILABLE_EXIT:
        lines = [line for line in stderr.splitlines() if "UNAVAILABLE:" in line]
        reason = lines[-1].split("UNAVAILABLE:", 1)[1].strip() if lines else stderr.strip()[-300:]
        raise SamLocalUnavailable(f"{name}: {reason}")
    if process.returncode != 0:
        raise SamLocalError(f"{name} failed ({process.returncode}):\n{stderr[-3000:]}")
    return stdout


def ensure_engine(timeout: float = 900.0) -> None:
    """A Docker engine answers (installed and started here if need be, see docker-engine.sh)."""
    _run_script("docker-engine.sh", timeout)


def ensure_image(timeout: float = 1800.0) -> str:
    """The python3.12 Lambda image to pass to ``--invoke-image`` (official if present, else the stand-in)."""
    out = _run_script("build-lambda-image.sh", timeout).strip().splitlines()
    if not out:
        raise SamLocalError("build-lambda-image.sh printed no image name")
    return out[-1].strip()


def _docker(args: list[str], timeout: float = 30.0) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise SamLocalError(f"docker {' '.join(args)} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def _checked_bridge_address(raw: str) -> str:
    address = ipaddress.ip_address(raw)
    if address.version != 4 or address.is_loopback or not address.is_private:
        raise SamLocalError(f"the Docker bridge's host address {raw} is not a private IPv4 address")
    return str(address)


def bridge_host_address(timeout: float = 20.0) -> str:
    """The host's address on Docker's default bridge (typically 172.17.0.1)."""
    network = json.loads(_docker(["network", "inspect", "bridge"], timeout))[0]
    configs = (network.get("IPAM") or {}).get("Config") or []
    for config in configs:
        if config.get("Gateway"):
            return _checked_bridge_address(config["Gateway"].split("/")[0])
    # Docker 20.10 (Debian's docker.io) reports only the subnet for the default bridge: the host's
    # address is the bridge interface's own.
    name = (network.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    result = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "dev", name],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode == 0 and result.stdout.strip():
        for link in json.loads(result.stdout):
            for info in link.get("addr_info", []):
                if info.get("family") == "inet" and info.get("local"):
                    return _checked_bridge_address(info["local"])
    for config in configs:
        if config.get("Subnet"):
            subnet = ipaddress.ip_network(config["Subnet"], strict=False)
            return _checked_bridge_address(str(next(subnet.hosts())))
    raise SamLocalError("cannot tell the Docker bridge's host address (docker network inspect bridge)")


def egress_dropped_packets() -> int | None:
    """Packets from the bridge that docker-engine.sh's egress guard refused to forward off this
    machine; None when the guard is not there (not root, no iptables, or another engine)."""
    try:
        result = subprocess.run(
            ["iptables", "-L", "DOCKER-USER", "-v", "-x", "-n"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    for line in result.stdout.splitlines():
        fields = line.split()
        # pkts bytes target prot opt in out source destination
        if len(fields) >= 7 and fields[2] == "DROP" and fields[5] == "docker0" and fields[6] == "!docker0":
            return int(fields[0])
    return None


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def sam_containers(image: str) -> set[str]:
    """Ids of the containers SAM CLI made from ``image`` (its per-function images descend from it)."""
    out = _docker(
        [
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            "label=sam.cli.container.type=lambda",
            "--filter",
            f"ancestor={image}",
        ]
    )
    return {line.strip() for line in out.splitlines() if line.strip()}


def remove_containers(ids: Iterable[str]) -> None:
    ids = sorted(set(ids))
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=60, check=False)


# ---------------------------------------------------------------------------------------------- inputs
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


# ---------------------------------------------------------------------------------------------- egress
class EgressTrap:
    """An HTTP(S) proxy on loopback that forwards nothing. Handed to the SAM CLI as its proxy, it
    turns any request for a non-local host into an immediate refusal, and records it."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._attempts: list[str] = []
        self._thread = threading.Thread(target=self._serve, name="egress-trap", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    @property
    def attempts(self) -> list[str]:
        """Request lines that asked to go out (e.g. ``CONNECT sts.amazonaws.com:443 HTTP/1.1``)."""
        with self._lock:
            return list(self._attempts)

    def start(self) -> EgressTrap:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()

    def __enter__(self) -> EgressTrap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n" not in data and len(data) < 8192:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                line = data.split(b"\r\n", 1)[0].decode("latin-1", "replace") or "(no request line)"
                with self._lock:
                    self._attempts.append(line)
                with contextlib.suppress(OSError):
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


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


# ---------------------------------------------------------------------------------------------- SAM
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


def _stop_group(process: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGINT (what Ctrl-C sends, SAM's clean stop), then SIGTERM, then SIGKILL, each bounded."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)


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
            _stop_group(process, grace=5.0)
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
            _stop_group(process)
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


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backdrop_local.samlocal", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ensure", help="make the Docker engine and the Lambda image available; print the image")
    sub.add_parser("bridge-address", help="print the Docker bridge's host address")
    app_dir = sub.add_parser(
        "sam-cli-dir",
        help="prepare a SAM CLI state folder whose version check is done (use it as __SAM_CLI_APP_DIR)",
    )
    app_dir.add_argument("path", type=Path)
    invoke = sub.add_parser("invoke", help="sam local invoke one function against a local endpoint")
    invoke.add_argument("function")
    invoke.add_argument("--event", type=Path)
    invoke.add_argument("--endpoint-url", required=True, help="local AWS endpoint, reachable from containers")
    invoke.add_argument("--env-vars", type=Path)
    invoke.add_argument("--template", type=Path, default=None)
    invoke.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    try:
        if args.command == "sam-cli-dir":
            prepare_sam_app_dir(args.path)
            print(args.path)
            return 0
        if args.command == "bridge-address":
            ensure_engine()
            print(bridge_host_address())
            return 0
        image = ensure_image()
        if args.command == "ensure":
            print(image)
            return 0
        with EgressTrap() as trap:
            sam = SamLocal(
                endpoint_url=args.endpoint_url,
                image=image,
                template=args.template or local_template(),
                env_vars=args.env_vars,
                state_dir=ROOT / ".backdrop" / "samlocal",
                trap=trap,
            )
            result = sam.invoke(args.function, args.event, timeout=args.timeout)
            sys.stderr.write(result.logs)
            print(json.dumps(result.response))
            if trap.attempts:
                print(f"samlocal: refused outbound requests: {trap.attempts}", file=sys.stderr)
                return 1
        return 0
    except SamLocalUnavailable as exc:
        print(f"samlocal: UNAVAILABLE: {exc.reason}", file=sys.stderr)
        return UNAVAILABLE_EXIT
    except SamLocalError as exc:
        print(f"samlocal: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
