"""docker/k8s: schema-valid (kubernetes-validate, strict) and consistent with the image."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

K8S = Path(__file__).resolve().parent.parent / "docker" / "k8s" / "axiom-cdc-relay.yaml"
K8S_VERSION = "1.30"


def test_manifests_pass_strict_schema_validation() -> None:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    proc = subprocess.run([str(tool), "--strict", "-k", K8S_VERSION, str(K8S)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed for resource") == 3, proc.stdout


def test_deployment_pair_probes_budget_and_secret_fit_together() -> None:
    docs: dict[str, Any] = {d["kind"]: d for d in yaml.safe_load_all(K8S.read_text())}
    deploy, pdb, secret = docs["Deployment"], docs["PodDisruptionBudget"], docs["Secret"]
    spec = deploy["spec"]
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1
    pod = spec["template"]["spec"]
    (relay,) = pod["containers"]
    assert relay["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert relay["readinessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in relay["env"]}
    assert env["CDC_METRICS_ADDR"] == "0.0.0.0" and env["CDC_METRICS_PORT"] == "9108"
    assert relay["envFrom"][0]["secretRef"]["name"] == secret["metadata"]["name"]
    assert {"CDC_DATABASE_URL", "CDC_REDIS_URL"} <= set(secret["stringData"])
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER 10001:10001
    assert relay["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["terminationGracePeriodSeconds"] >= 10  # SIGTERM exits within 5 s
