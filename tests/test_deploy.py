"""Deploy files, checked without a cluster or a Docker daemon: hadolint on the Dockerfile, the
real Kubernetes schemas (kubernetes-validate, offline), and both against the server's own flags,
ports, health service names and paths."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from imgsim_server.config import build_parser
from imgsim_server.export import build_parser as export_parser
from imgsim_server.transport.grpc_server import SERVICE_NAME

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed (it comes with the [dev] extra)")
    return found


def _server_options() -> set[str]:
    return {s for a in build_parser()._actions for s in a.option_strings}


def _docs() -> dict[str, dict]:
    return {
        doc["kind"]: doc
        for f in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(f.read_text())
    }


def test_dockerfile_passes_hadolint():
    run = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_names_what_exists():
    text = (DEPLOY / "Dockerfile").read_text()
    version = PYPROJECT["project"]["version"]
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} does not exist"
    for wheel in re.findall(r"imgsim-([\d.]+)-py3-none-any\.whl", text):
        assert wheel == version, f"the Dockerfile names imgsim {wheel}, the project is {version}"
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    assert set(re.findall(r"\.whl\[(\w+)\]", text)) == {"torch", "server"} <= extras
    # The build stage's export call uses real flags, and the runtime the real entry point.
    export = re.search(r"imgsim-server export (.+)", text).group(1)
    export_flags = {s for a in export_parser()._actions for s in a.option_strings}
    assert set(re.findall(r"--[\w-]+", export)) <= export_flags
    assert '"imgsim-server"' in text and "imgsim-server" in PYPROJECT["project"]["scripts"]
    # Every ENV setting is one the server reads.
    config = (ROOT / "imgsim_server" / "config.py").read_text()
    for name in re.findall(r"(IMGSIM_\w+)=", text):
        assert f'"{name}"' in config, f"{name} is not read by imgsim_server/config.py"
    ports = set(map(int, re.search(r"EXPOSE (.+)", text).group(1).split()))
    assert ports == {50051, 9090}


def test_k8s_files_match_the_schemas():
    run = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", *map(str, (DEPLOY / "k8s").glob("*.yaml"))],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert set(_docs()) == {"Deployment", "Service", "HorizontalPodAutoscaler"}


def test_k8s_files_match_the_server():
    docs = _docs()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == build_parser().get_default("port") == 50051
    # Probes: native gRPC on the health service, on the container's gRPC port.
    assert container["readinessProbe"]["grpc"] == {"port": ports["grpc"], "service": SERVICE_NAME}
    assert container["livenessProbe"]["grpc"]["port"] == ports["grpc"]
    # Every flag exists in imgsim-server --help.
    flags = {arg.split("=")[0] for arg in container["args"]}
    assert flags <= _server_options(), flags - _server_options()
    args = dict(arg.split("=", 1) for arg in container["args"])
    assert float(args["--max-connection-age"]) > 0
    assert pod["terminationGracePeriodSeconds"] > float(args["--grace"])
    # Memory: the request covers the RSS measured at the stream limit (make bench-scale).
    request_mib = int(container["resources"]["requests"]["memory"].removesuffix("Mi"))
    scale = ROOT / "results" / "scale.json"
    if scale.is_file():
        measured = json.loads(scale.read_text())["memory"]["peak_rss_mib"]
        assert request_mib >= measured, (request_mib, measured)
    # The headless Service selects the pods, for dns:/// round robin on the client.
    service = docs["Service"]["spec"]
    assert service["clusterIP"] == "None"
    assert service["selector"].items() <= _pod_labels(docs).items()
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "imgsim"


def _pod_labels(docs: dict) -> dict:
    return docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
