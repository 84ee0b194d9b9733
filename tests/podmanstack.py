"""Start services of docker/docker-compose.yml with podman, as compose would.

No compose engine is needed: each service's keys are turned into `podman build` and
`podman run` arguments; a key this module does not know fails the run (so the compose
file is what starts, not an approximation). Host ports are replaced by free ones, bound
to the address the compose file gives (which must be 127.0.0.1). Without systemd podman
runs no healthcheck timers, so `service_healthy` is awaited with `podman healthcheck run`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from devkit.localservers import free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "docker-compose.yml"
CONTAINERS_CONF = ROOT / "docker" / "podman" / "containers.conf"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
KNOWN = {
    "build", "image", "command", "entrypoint", "environment", "volumes", "ports",
    "healthcheck", "depends_on", "read_only", "user", "cap_drop", "security_opt",
    "stop_grace_period", "restart",
}
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def podman_env() -> dict[str, str]:
    """Return the environment podman runs with (our containers.conf)."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, timeout: float = 600,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run podman; raise with its stderr when `check` and it fails."""
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout,
        env=env or podman_env(),
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}: {proc.stderr.strip()[-2000:]}")
    return proc


def interpolate(value: str) -> str:
    """Expand ${VAR} and ${VAR:-default} from the environment, as compose does."""
    return _VAR.sub(lambda m: os.environ.get(m[1]) or (m[2] or ""), value.replace("$$", "$"))


def seconds(text: str | int | float) -> float:
    """Return a compose duration ('10s', '1m30s', 2) in seconds."""
    if isinstance(text, int | float):
        return float(text)
    total = 0.0
    for num, unit in re.findall(r"([\d.]+)(ms|s|m|h)", text):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


class Stack:
    """One compose project's containers, network and volumes under a unique prefix."""

    def __init__(self, project: str, compose: Path = COMPOSE) -> None:
        self.project = project
        self.compose = compose
        spec: dict[str, Any] = yaml.safe_load(compose.read_text())
        self.services: dict[str, dict[str, Any]] = spec["services"]
        self.volumes: set[str] = set(spec.get("volumes") or {})
        self.ports: dict[str, dict[int, int]] = {}
        self.started: list[str] = []
        self.extra: list[str] = []  # containers started outside the compose file

    def name(self, service: str) -> str:
        """Return the container name of `service`."""
        return f"{self.project}-{service}"

    def spec(self, service: str) -> dict[str, Any]:
        """Return a service's keys, refusing any this module cannot honour."""
        svc = self.services[service]
        unknown = set(svc) - KNOWN
        if unknown:
            raise ValueError(f"service {service}: compose keys not handled: {sorted(unknown)}")
        return svc

    def build(self, service: str) -> float:
        """Build the service's image (docker format, so HEALTHCHECK is kept); return seconds."""
        svc = self.spec(service)
        build = svc["build"]
        context = (self.compose.parent / build["context"]).resolve()
        # Host network for the build only: apt and pip reach their registries as the host does
        # (the private network's DNS forwarder does not resolve them on these machines).
        args = ["build", "--format", "docker", "--pull=never", "--network", "host", "-q",
                "-f", str(context / build["dockerfile"]), "-t", svc["image"]]
        if HOST_CA.exists():  # pip behind a TLS-inspecting proxy; harmless otherwise
            args += ["-v", f"{HOST_CA.parent}:/run/host-certs:ro",
                     "--build-arg", f"PIP_CERT=/run/host-certs/{HOST_CA.name}"]
        started = time.monotonic()
        podman(*args, str(context), timeout=900)
        return time.monotonic() - started

    def network(self) -> None:
        """Create the project's private network."""
        podman("network", "create", self.project)

    @staticmethod
    def remove_stale(prefix: str, alive: set[str]) -> list[str]:
        """Remove containers, networks and volumes of earlier runs named `prefix`*."""
        out = podman("ps", "-a", "--format", "{{.Labels.project}}").stdout.split()
        stale = sorted({p for p in out if p.startswith(prefix) and p not in alive})
        for project in stale:
            ids = podman("ps", "-a", "-q", "--filter", f"label=project={project}").stdout
            for name in ids.split():
                podman("rm", "-f", "-t", "0", name, check=False)
            podman("network", "rm", "-f", project, check=False)
            for vol in podman("volume", "ls", "-q").stdout.split():
                if vol.startswith(project + "-"):
                    podman("volume", "rm", "-f", vol, check=False)
        return stale

    def run_args(self, service: str) -> tuple[list[str], dict[str, str]]:
        """Return `podman run` arguments for `service` and the environment they read."""
        svc = self.spec(service)
        args = ["run", "-d", "--name", self.name(service), "--network", self.project,
                "--network-alias", service, "--label", f"project={self.project}"]
        env = podman_env()
        for key, value in (svc.get("environment") or {}).items():
            env[key] = interpolate(str(value))
            args += ["-e", key]  # value taken from podman's environment, never on argv
        for volume in svc.get("volumes") or []:
            source, _, rest = volume.partition(":")
            if source.startswith("."):
                source = str((self.compose.parent / source).resolve())
            elif source in self.volumes:  # `podman run` creates a named volume if missing
                source = f"{self.project}-{source}"
            else:
                raise ValueError(f"service {service}: volume {volume} is not declared")
            args += ["-v", f"{source}:{rest}"]
        self.ports[service] = {}
        for port in svc.get("ports") or []:
            host_ip, _, mapping = port.partition(":")
            _, _, container = mapping.partition(":")
            if host_ip != "127.0.0.1" or not container:
                raise ValueError(f"service {service}: port {port} is not bound to 127.0.0.1")
            host = free_port()
            self.ports[service][int(container)] = host
            args += ["-p", f"127.0.0.1:{host}:{container}"]
        args += self._health(svc.get("healthcheck"))
        if svc.get("read_only"):
            args.append("--read-only")
        if "user" in svc:
            args += ["--user", str(svc["user"])]
        args += [f"--cap-drop={c}" for c in svc.get("cap_drop") or []]
        args += [f"--security-opt={o}" for o in svc.get("security_opt") or []]
        if "stop_grace_period" in svc:
            args += ["--stop-timeout", str(int(seconds(svc["stop_grace_period"])))]
        if "restart" in svc:
            args += ["--restart", svc["restart"]]
        if "entrypoint" in svc:
            args += ["--entrypoint", json.dumps(svc["entrypoint"])]
        args.append(svc["image"])
        args += [str(a) for a in svc.get("command") or []]
        return args, env

    @staticmethod
    def _health(check: dict[str, Any] | None) -> list[str]:
        if not check:
            return []
        test = check["test"]
        if test[0] != "CMD":
            raise ValueError(f"healthcheck test must be a CMD list: {test}")
        args = ["--health-cmd", json.dumps(test[1:])]
        for key, flag in (("interval", "--health-interval"), ("timeout", "--health-timeout"),
                          ("start_period", "--health-start-period")):
            if key in check:
                args += [flag, f"{seconds(check[key])}s"]
        if "retries" in check:
            args += ["--health-retries", str(check["retries"])]
        return args

    def up(self, service: str, *, wait: float = 120) -> float:
        """Wait for the service's dependencies, then start it; return seconds taken."""
        started = time.monotonic()
        deps = self.spec(service).get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, cond in deps.items():
            if dep not in self.started:
                raise RuntimeError(f"{service} depends on {dep}, which is not started")
            condition = cond.get("condition", "service_started")
            if condition == "service_healthy":
                self.wait_healthy(dep, wait)
            elif condition == "service_completed_successfully":
                self.wait_exit(dep, wait, expect=0)
            elif condition != "service_started":
                raise ValueError(f"{service}: depends_on condition {condition} not handled")
        args, env = self.run_args(service)
        podman(*args, env=env)
        self.started.append(service)
        return time.monotonic() - started

    def wait_healthy(self, service: str, timeout: float) -> None:
        """Run the service's healthcheck until it passes (no systemd timers here)."""
        deadline = time.monotonic() + timeout
        while True:
            proc = podman("healthcheck", "run", self.name(service), check=False, timeout=30)
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline or not self.running(service):
                raise RuntimeError(f"{service} not healthy: {proc.stdout}{proc.stderr}\n"
                                   f"{self.logs(service)[-3000:]}")
            time.sleep(0.5)

    def wait_exit(self, service: str, timeout: float, *, expect: int | None = None) -> int:
        """Wait for the container to exit; return (or check) its exit code."""
        proc = podman("wait", self.name(service), timeout=timeout)
        code = int(proc.stdout.strip().splitlines()[-1])
        if expect is not None and code != expect:
            raise RuntimeError(f"{service} exited {code}:\n{self.logs(service)[-3000:]}")
        return code

    def inspect(self, service: str) -> dict[str, Any]:
        """Return `podman inspect` of the service's container."""
        data: list[dict[str, Any]] = json.loads(podman("inspect", self.name(service)).stdout)
        return data[0]

    def running(self, service: str) -> bool:
        """Return whether the service's container is running."""
        return bool(self.inspect(service)["State"]["Running"])

    def logs(self, service: str) -> str:
        """Return the container's output."""
        proc = podman("logs", self.name(service), check=False)
        return proc.stdout + proc.stderr

    def exec(self, service: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        """Run a command in the service's container (never raises on its exit code)."""
        return podman("exec", self.name(service), *cmd, check=False)

    def stop(self, service: str) -> tuple[int, float]:
        """Stop as compose does (STOPSIGNAL, then the grace period); return code and seconds."""
        started = time.monotonic()
        podman("stop", self.name(service), timeout=120)
        took = time.monotonic() - started
        return int(self.inspect(service)["State"]["ExitCode"]), took

    def down(self) -> None:
        """Remove the project's containers, network and volumes (images stay cached)."""
        for name in [*self.extra, *(self.name(s) for s in reversed(self.started))]:
            podman("rm", "-f", "-t", "2", name, check=False)
        podman("network", "rm", "-f", self.project, check=False)
        for volume in self.volumes:
            podman("volume", "rm", "-f", f"{self.project}-{volume}", check=False)
