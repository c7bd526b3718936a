"""The host's address on Docker's default bridge: from a container 127.0.0.1 is the container
itself, so every service a function calls listens on this address, the only non-loopback one used."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess

from backdrop_local.samlocal.engine import docker
from backdrop_local.samlocal.shared import SamLocalError


def _checked_bridge_address(raw: str) -> str:
    address = ipaddress.ip_address(raw)
    if address.version != 4 or address.is_loopback or not address.is_private:
        raise SamLocalError(f"the Docker bridge's host address {raw} is not a private IPv4 address")
    return str(address)


def bridge_host_address(timeout: float = 20.0) -> str:
    """The host's address on Docker's default bridge (typically 172.17.0.1)."""
    network = json.loads(docker(["network", "inspect", "bridge"], timeout))[0]
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


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
