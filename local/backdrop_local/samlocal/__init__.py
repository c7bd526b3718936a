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

One module per concern: ``shared`` (paths, region, errors), ``engine`` (Docker engine, Lambda image,
containers), ``bridge`` (the bridge's host address), ``egress`` (nothing goes out),
``environment`` (the SAM CLI's environment and the files for ``--env-vars`` and a terminal),
``sam`` (the SAM CLI wrapper) and ``cli`` (``python -m backdrop_local.samlocal``). The names below
are the package's surface; import them from here.
"""

from backdrop_local.samlocal.bridge import bridge_host_address, free_port
from backdrop_local.samlocal.cli import main
from backdrop_local.samlocal.egress import EgressTrap, egress_dropped_packets
from backdrop_local.samlocal.engine import ensure_engine, ensure_image, remove_containers, sam_containers
from backdrop_local.samlocal.environment import (
    LOCAL_ONLY_VARIABLES,
    function_environment,
    local_template,
    prepare_sam_app_dir,
    sam_environment,
    write_env_vars,
    write_stack_files,
)
from backdrop_local.samlocal.sam import InvokeResult, LocalApi, SamLocal, api_functions, sam_executable
from backdrop_local.samlocal.shared import (
    BUILT_TEMPLATE,
    REGION,
    ROOT,
    SCRIPTS,
    UNAVAILABLE_EXIT,
    SamLocalError,
    SamLocalUnavailable,
)

__all__ = [
    "BUILT_TEMPLATE",
    "LOCAL_ONLY_VARIABLES",
    "REGION",
    "ROOT",
    "SCRIPTS",
    "UNAVAILABLE_EXIT",
    "EgressTrap",
    "InvokeResult",
    "LocalApi",
    "SamLocal",
    "SamLocalError",
    "SamLocalUnavailable",
    "api_functions",
    "bridge_host_address",
    "egress_dropped_packets",
    "ensure_engine",
    "ensure_image",
    "free_port",
    "function_environment",
    "local_template",
    "main",
    "prepare_sam_app_dir",
    "remove_containers",
    "sam_containers",
    "sam_environment",
    "sam_executable",
    "write_env_vars",
    "write_stack_files",
]
