"""Checks the deployment files without a container engine or a cluster.

- docker-compose.yml against the Compose specification (check-jsonschema's bundled schema);
- deploy/kubernetes/*.yaml against the Kubernetes schemas (kubernetes-validate, strict), and
  the kustomization listing exactly those files;
- in both, every environment variable given to keyrelay is one `keyrelay serve --help` names,
  every `keyrelay` command of a health check exists with the flags it is given, probes ask
  the HTTP listener's /healthz and /readyz on its port, and the pods' termination grace
  outlasts keyrelay's shutdown grace;
- the Prometheus alert rules (promtool check rules, promtool test rules);
- the Grafana dashboard parses and every panel has a query.

Usage: python scripts/check_deploy.py path/to/keyrelay
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
PROBE_PATHS = {"/healthz", "/readyz"}


class DeployError(Exception):
    """A deployment file is wrong."""


def run(*command: str | Path) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if done.returncode != 0:
        raise DeployError(f"{' '.join(map(str, command))} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


class Keyrelay:
    """What the keyrelay binary says about itself."""

    def __init__(self, binary: Path):
        self.binary = binary
        serve = run(binary, "serve", "--help")
        self.flag_env = set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", serve))
        extra = serve.split("Environment read besides the flags' variables:", 1)
        if len(extra) != 2:
            raise DeployError("keyrelay serve --help lists no other environment variables")
        self.other_env = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+)\s", extra[1], re.M))
        self.shutdown_grace = seconds(default_of(serve, "--shutdown-grace"))

    def check_env(self, where: str, names: set[str]) -> None:
        unknown = names - self.flag_env - self.other_env
        if unknown:
            raise DeployError(f"{where}: keyrelay reads no variable {sorted(unknown)}")

    def check_command(self, where: str, argv: list[str]) -> None:
        """`argv` (keyrelay, subcommand, flags...) names a subcommand and flags that exist."""
        subcommand = argv[1]
        help_text = run(self.binary, subcommand, "--help")
        for flag in (arg.split("=")[0] for arg in argv[2:] if arg.startswith("--")):
            if not re.search(rf"(^|\s){re.escape(flag)}[\s=<,]", help_text, re.M):
                raise DeployError(f"{where}: keyrelay {subcommand} has no flag {flag}")


def default_of(help_text: str, flag: str) -> str:
    section = help_text.split(f"      {flag} ", 1)[1]
    return re.search(r"\[default: ([^\]]+)\]", section).group(1)


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration.strip())
    if not match:
        raise DeployError(f"cannot read the duration {duration!r}")
    return int(match.group(1)) * units[match.group(2)]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def check_compose(keyrelay: Keyrelay, venv_bin: Path) -> None:
    compose_file = ROOT / "docker-compose.yml"
    run(venv_bin / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", compose_file)
    compose = yaml.safe_load(compose_file.read_text())
    for name, service in compose["services"].items():
        if service.get("build") != ".":
            continue
        where = f"docker-compose.yml service {name}"
        env = service.get("environment", {})
        keyrelay.check_env(where, set(env))
        test = service["healthcheck"]["test"]
        if test[0] != "CMD" or test[1] != "keyrelay":
            raise DeployError(f"{where}: the health check must run keyrelay: {test}")
        keyrelay.check_command(where, test[1:])
        server = test[test.index("--server") + 1]
        if port_of(server) != port_of(env["KEYRELAY_LISTEN"]):
            raise DeployError(f"{where}: the health check asks {server}, not KEYRELAY_LISTEN")
        grace = seconds(service["stop_grace_period"])
        if grace <= keyrelay.shutdown_grace:
            raise DeployError(f"{where}: stop_grace_period {grace}s is not above shutdown grace")


def manifests() -> list[Path]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = sorted(kustomization["resources"])
    present = sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    if listed != present:
        raise DeployError(f"kustomization lists {listed}, the folder holds {present}")
    return [KUBERNETES / name for name in listed]


def containers(document: dict) -> list[dict]:
    spec = document.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", [])


def check_kubernetes(keyrelay: Keyrelay, venv_bin: Path) -> None:
    files = manifests()
    run(venv_bin / "kubernetes-validate", "--strict", "--quiet", *files)
    for path in files:
        for document in yaml.safe_load_all(path.read_text()):
            pod = document.get("spec", {}).get("template", {}).get("spec", {})
            for container in containers(document):
                check_container(keyrelay, f"{path.name} {container['name']}", pod, container)


def check_container(keyrelay: Keyrelay, where: str, pod: dict, container: dict) -> None:
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    keyrelay.check_env(where, set(env) - {"POD_IP"})
    if container.get("args", [None])[0] != "serve":
        return
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    if ports["http"] != port_of(env["KEYRELAY_HTTP_LISTEN"]):
        raise DeployError(f"{where}: port http is not KEYRELAY_HTTP_LISTEN's")
    if ports["grpc"] != port_of(env["KEYRELAY_LISTEN"]):
        raise DeployError(f"{where}: port grpc is not KEYRELAY_LISTEN's")
    for probe in ("readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        if http["path"] not in PROBE_PATHS or http["port"] != "http":
            raise DeployError(f"{where}: {probe} must ask /healthz or /readyz on port http")
    grace = seconds(env.get("KEYRELAY_SHUTDOWN_GRACE") or f"{keyrelay.shutdown_grace}s")
    if pod["terminationGracePeriodSeconds"] <= grace:
        raise DeployError(f"{where}: terminationGracePeriodSeconds is not above shutdown grace")


def check_alerts(promtool: str) -> None:
    prometheus = ROOT / "deploy" / "prometheus"
    run(promtool, "check", "rules", prometheus / "alerts.yml")
    run(promtool, "test", "rules", prometheus / "alerts_test.yml")


def check_dashboard() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "keyrelay.json").read_text())
    for panel in dashboard["panels"]:
        if not all(target.get("expr") for target in panel.get("targets", [])) or not panel.get(
            "targets"
        ):
            raise DeployError(f"dashboard panel {panel.get('title')!r} has no query")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    keyrelay = Keyrelay(Path(sys.argv[1]))
    venv_bin = Path(sys.executable).parent
    try:
        check_compose(keyrelay, venv_bin)
        check_kubernetes(keyrelay, venv_bin)
        check_alerts("promtool")
        check_dashboard()
    except DeployError as err:
        print(f"check_deploy: {err}", file=sys.stderr)
        return 1
    print("check_deploy: compose, Kubernetes, alerts and dashboard are consistent", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
