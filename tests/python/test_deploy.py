"""The Kubernetes manifests (deploy/kubernetes) and the Grafana dashboard (deploy/grafana):
every kustomization renders with `kubectl kustomize` and passes `kubernetes-validate --strict`;
the probes, grace period and ports agree with the server's flags; and every metric named by
the dashboard, the HPA rule and the KEDA trigger is one a running inferd really exports.

Kinds without a schema in kubernetes-validate (ServiceMonitor, ScaledObject, Knative Service,
ClusterServingRuntime) are checked here by structure instead.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
DASHBOARD = ROOT / "deploy" / "grafana" / "inferd-dashboard.json"
VARIANTS = ["base", "overlays/gpu", "overlays/mig", "overlays/hpa", "overlays/keda", "overlays/knative",
            "overlays/kserve", "overlays/pull", "overlays/pull-pvc", "overlays/forecast"]
PROMTOOL = shutil.which("promtool")


def render(variant: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed (it renders kustomizations offline)", pytrace=False)
    out = subprocess.run([kubectl, "kustomize", str(KUBE / variant)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, (kind, [d["kind"] for d in docs])
    return found[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_renders_and_validates_strictly(variant, tmp_path):
    # Installed with the test requirements, beside this interpreter.
    tool = Path(sys.executable).parent / "kubernetes-validate"
    if not tool.exists():
        pytest.fail("kubernetes-validate is not installed (tests/python/requirements.txt)", pytrace=False)
    docs = render(variant)
    f = tmp_path / "rendered.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    out = subprocess.run([str(tool), "--strict", str(f)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ERROR" not in out.stdout and "FAIL" not in out.stdout, out.stdout
    for d in docs:
        assert d["metadata"].get("name"), d


def flag(args: list[str], name: str, default: float) -> float:
    for a in args:
        if a.startswith(f"--{name}="):
            return float(a.split("=", 1)[1])
    return default


def test_the_deployment_probes_and_grace_period_match_the_server():
    dep = by_kind(render("base"), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"][0] == "serve"
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    budget = flag(c["args"], "drain-delay-secs", 5) + flag(c["args"], "exit-timeout-secs", 30)
    assert pod["terminationGracePeriodSeconds"] > budget
    assert {p["containerPort"] for p in c["ports"]} == {8000, 8001, 8002}
    assert pod["securityContext"]["runAsNonRoot"] is True
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = by_kind(render("base"), "Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert by_kind(render("base"), "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert by_kind(render("base"), "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics"


@pytest.mark.parametrize("variant", ["overlays/pull", "overlays/pull-pvc"])
def test_pull_overlays_fill_the_models_volume_before_the_server_starts(variant, inferd_bin, tmp_path):
    docs = render(variant)
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    [server] = pod["containers"]
    assert init["image"] == server["image"], "the pull runs the same binary as the server"
    assert init["args"][0] == "pull"
    to = next(a.split("=", 1)[1] for a in init["args"] if a.startswith("--to="))
    served = next(a.split("=", 1)[1] for a in server["args"] if a.startswith("--model-repository="))
    assert to == served
    [init_mount] = [m for m in init["volumeMounts"] if m["mountPath"] == to]
    [server_mount] = [m for m in server["volumeMounts"] if m["mountPath"] == served]
    assert init_mount["name"] == server_mount["name"]
    assert not init_mount.get("readOnly") and server_mount["readOnly"] is True
    [volume] = [v for v in pod["volumes"] if v["name"] == init_mount["name"]]
    assert set(volume) == {"name", "emptyDir" if variant == "overlays/pull" else "ephemeral"}, volume
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"], "nothing to fill ahead of time"

    # The real binary accepts the init container's command line: with the source expanded as
    # Kubernetes would and no store to reach, the pull itself fails (exit 2), not the parsing.
    env = {e["name"]: e["value"] for e in init.get("env", [])}
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in init["args"]]
    args = [f"--to={tmp_path / 'models'}" if a.startswith("--to=") else a for a in args]
    out = subprocess.run(
        [str(inferd_bin), *args],
        env={"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
             "AWS_REGION": "us-east-1", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and out.stderr.startswith("inferd pull: error:"), out.stderr
    assert env["INFERD_MODEL_SOURCE"] in out.stderr


def test_gpu_and_mig_overlays_ask_for_the_device():
    gpu = by_kind(render("overlays/gpu"), "Deployment")["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu"
    mig = by_kind(render("overlays/mig"), "Deployment")["spec"]["template"]["spec"]
    assert mig["containers"][0]["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"


def test_custom_resources_have_their_required_structure():
    so = by_kind(render("overlays/keda"), "ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"]["name"] == by_kind(render("overlays/keda"), "Deployment")["metadata"]["name"]
    assert so["spec"]["triggers"][0]["type"] == "prometheus"
    ksvc = by_kind(render("overlays/knative"), "Service")
    assert ksvc["apiVersion"] == "serving.knative.dev/v1"
    assert ksvc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    rt = by_kind(render("overlays/kserve"), "ClusterServingRuntime")
    assert rt["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert {"v2", "grpc-v2"} <= set(rt["spec"]["protocolVersions"])
    assert {"onnx", "xgboost", "lightgbm"} <= {f["name"] for f in rt["spec"]["supportedModelFormats"]}
    assert "--model-repository=/mnt/models" in rt["spec"]["containers"][0]["args"]


def queries() -> list[tuple[str, str]]:
    """Every PromQL expression shipped: (where, expression)."""
    out = []
    dash = json.loads(DASHBOARD.read_text())
    for p in dash["panels"]:
        for t in p["targets"]:
            out.append((f"dashboard panel '{p['title']}'", t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            out.append((f"dashboard variable '{v['name']}'", v["query"]))
    keda = by_kind(render("overlays/keda"), "ScaledObject")
    out.append(("KEDA trigger", keda["spec"]["triggers"][0]["metadata"]["query"]))
    rules = yaml.safe_load(by_kind(render("overlays/hpa"), "ConfigMap")["data"]["config.yaml"])["rules"]
    for r in rules:
        out.append(("prometheus-adapter rule", r["seriesQuery"]))
    hpa = by_kind(render("overlays/hpa"), "HorizontalPodAutoscaler")
    out.append(("HPA metric", hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]))
    for group in forecast_rules()["groups"]:
        for r in group["rules"]:
            # Only the rules that read the server's own series (the rest read recorded ones).
            if "inferd_" in r["expr"].replace("model:inferd_", ""):
                out.append((f"recording rule {r['record']}", r["expr"]))
    return out


def forecast_rules() -> dict:
    return {"groups": by_kind(render("overlays/forecast"), "PrometheusRule")["spec"]["groups"]}


def test_the_forecast_rules_compute_the_replicas_needed(tmp_path):
    """promtool checks the recording rules and runs their unit test: max(demand, forecast)
    summed over pods, over the pods' mean capacity."""
    if PROMTOOL is None:
        pytest.fail("promtool is not installed (.ci/run installs Prometheus)", pytrace=False)
    (tmp_path / "autoscaling_rules.yml").write_text(yaml.safe_dump(forecast_rules()))
    shutil.copy(Path(__file__).parent / "data" / "autoscaling_rules_test.yml", tmp_path / "test.yml")
    check = subprocess.run([PROMTOOL, "check", "rules", "autoscaling_rules.yml"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([PROMTOOL, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr
    # KEDA scales on what the rules record.
    so = by_kind(render("overlays/forecast"), "ScaledObject")
    query = so["spec"]["triggers"][0]["metadata"]["query"]
    recorded = {r["record"] for g in forecast_rules()["groups"] for r in g["rules"]}
    assert "model:inferd_replicas_needed:ratio" in query and "model:inferd_replicas_needed:ratio" in recorded


@pytest.fixture(scope="module")
def exported(inferd_server_factory, model_repo_factory) -> set[str]:
    srv = inferd_server_factory(model_repo_factory(["add_sub"]))
    body = {"inputs": [{"name": n, "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]} for n in ("INPUT0", "INPUT1")]}
    requests.post(f"{srv.http_base}/v2/models/add_sub/infer", json=body, timeout=10).raise_for_status()
    time.sleep(1.5)  # the autoscaling signals tick once a second
    page = requests.get(f"{srv.metrics_url}/metrics", timeout=10).text
    return {l.split("{")[0].split(" ")[0] for l in page.splitlines() if l and not l.startswith("#")}


# Exported only where NVML finds a GPU (none here): each must be declared by the GPU collector.
GPU_SOURCE = (ROOT / "crates" / "inferd-server" / "src" / "metrics" / "gpu.rs").read_text()


def declared_by_gpu_collector(name: str) -> bool:
    base = re.sub(r"_bytes$", "", name)
    return name.startswith("inferd_gpu_") and f'"{base}"' in GPU_SOURCE


def test_every_shipped_query_names_metrics_the_server_exports(exported):
    assert "inferd_queue_depth" in exported
    assert {"inferd_demand_requests_per_second", "inferd_demand_forecast_requests_per_second",
            "inferd_demand_forecast_ready"} <= exported
    for where, expr in queries():
        names = set(re.findall(r"(?<![:\w])((?:inferd|process)_[a-z_]+)\b", expr))
        assert names, (where, expr)
        missing = {n for n in names - exported if not declared_by_gpu_collector(n)}
        assert not missing, f"{where} names {missing}, which the server does not export: {expr}"


def test_the_dashboard_is_well_formed():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource", "model", "job"}
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
