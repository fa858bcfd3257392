"""Repositories on object storage, against a real S3 server (SeaweedFS) started by the test.

- ``inferd serve --model-repository s3://...`` serves the store's models, swaps in a version
  added to the bucket under HTTP and gRPC traffic with zero failed requests, keeps serving while
  the store is down, and picks up new versions once it is back;
- ``inferd pull`` copies a whole repository or chosen models byte for byte, draws a progress bar
  on a terminal, and re-pulls only what changed;
- a pull killed halfway leaves no version that would load, and the next pull completes it;
- a file whose sha256 differs from the config's pin never becomes a version;
- bad credentials, a missing bucket or an unreachable store stop ``serve`` and ``pull`` within
  seconds with a message that names the store and the cause (pull exits 2).
"""

from __future__ import annotations

import hashlib
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from client_loops import assert_served_cleanly, clients_running, wait_for_only_version
from inferd_testlib import (
    EXAMPLE_MODELS,
    TritonClient,
    example_model_path,
    mlp_input,
    ready_versions,
    wait_until,
)
from s3_testlib import SeaweedS3, free_weed_ports

BUCKET = "inferd-models"
POLL_SECS = 0.5
SWAP_TIMEOUT_S = 30.0
CLIENT_CAP_S = 150.0
PULL_TIMEOUT_S = 60.0
FAIL_FAST_S = 30.0  # a store that cannot be used stops serve and pull within this
MANIFEST = ".inferd-store.json"


def mlp_config(name: str, *, latest: int | None = 1, pins: dict[str, str] | None = None) -> str:
    policy = f"version_policy: {{ latest {{ num_versions: {latest} }} }}\n" if latest else ""
    params = "".join(
        f'parameters {{ key: "sha256:{path}" value: {{ string_value: "{digest}" }} }}\n'
        for path, digest in (pins or {}).items()
    )
    return f"""\
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
{policy}input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 64 ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ 10 ] }} ]
{params}"""


def weights_of(version: int) -> int:
    """Which simple_mlp version's file a test model's version holds (alternating)."""
    return 1 if version % 2 else 2


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` but the mirror's manifest."""
    return {
        p.relative_to(folder).as_posix(): sha256_of(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def models_tree(folder: Path) -> dict[str, str]:
    """``tree`` of the model folders only: files at the repository root are not models and are
    not pulled."""
    return {k: v for k, v in tree(folder).items() if "/" in k}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".inferd-tmp-*"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s3 = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    s3.client().create_bucket(Bucket=BUCKET)
    yield s3
    s3.stop()


def put(store: SeaweedS3, key: str, body: bytes | Path) -> None:
    data = body.read_bytes() if isinstance(body, Path) else body
    store.client().put_object(Bucket=BUCKET, Key=key, Body=data)


def put_mlp_version(store: SeaweedS3, prefix: str, model: str, version: int, extra: bytes = b"") -> None:
    """Uploads ``prefix/model/version/`` (any ``extra`` first, as ``blob.bin``, model.onnx last)."""
    if extra:
        put(store, f"{prefix}/{model}/{version}/blob.bin", extra)
    put(store, f"{prefix}/{model}/{version}/model.onnx", example_model_path("simple_mlp", weights_of(version)))


def run_pull(inferd_bin, store: SeaweedS3, *args: str, env: dict[str, str] | None = None, timeout=PULL_TIMEOUT_S):
    return subprocess.run(
        [str(inferd_bin), "pull", *args],
        env={**os.environ, **(env if env is not None else store.env())},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------------------------
# serve from s3://
# --------------------------------------------------------------------------------------------


def test_serving_from_s3_swaps_versions_under_load_and_rides_out_a_store_outage(
    inferd_server_factory, store, tmp_path, onnx_reference
):
    prefix, model = "serve", "s3_mlp"
    put(store, f"{prefix}/{model}/config.pbtxt", mlp_config(model).encode())
    put_mlp_version(store, prefix, model, 1)
    cache = tmp_path / "cache"
    server = inferd_server_factory(
        f"s3://{BUCKET}/{prefix}",
        "--model-cache-dir",
        str(cache),
        control_mode="poll",
        poll_secs=POLL_SECS,
        env=store.env(),
    )
    x = mlp_input(1, seed=77)
    expected = {w: onnx_reference.run(example_model_path("simple_mlp", w), {"input": x})["output"] for w in (1, 2)}

    control = TritonClient("http", server)
    try:
        wait_for_only_version(control, model, 1, timeout=SWAP_TIMEOUT_S)
        with clients_running(server, model, x, CLIENT_CAP_S) as loops:
            # A new version in the bucket is swapped in under traffic.
            put_mlp_version(store, prefix, model, 2)
            wait_for_only_version(control, model, 2, timeout=SWAP_TIMEOUT_S)
            assert (cache / model / "2" / "model.onnx").read_bytes() == example_model_path("simple_mlp", 2).read_bytes()

            # The store goes away: serving goes on, the outage is logged once.
            store.stop()
            assert store.is_down()
            served_before = sum(len(loop.observations) for loop in loops)
            time.sleep(6 * POLL_SECS)
            wait_until(
                lambda: "object store unavailable" in server.stderr_path.read_text()
                + server.stdout_path.read_text(),
                timeout=30,
                what="the server to log that the store is unavailable",
            )
            assert server.is_running()
            assert control.is_model_ready(model, "2")
            assert sum(len(loop.observations) for loop in loops) > served_before + 10, "requests stopped during the outage"

            # It comes back (same data): the next version added arrives.
            store.start()
            put_mlp_version(store, prefix, model, 3)
            wait_for_only_version(control, model, 3, timeout=90)  # backoff is at most a minute
            wait_until(
                lambda: all(loop.last_version() == "3" or loop.observations[-1].error for loop in loops),
                timeout=10,
                what="both clients to be served by version 3",
            )
    finally:
        control.close()

    logs = server.stderr_path.read_text() + server.stdout_path.read_text()
    assert logs.count("object store unavailable") == 1, "the outage must be logged once, not per poll"
    assert "object store reachable again" in logs
    assert_served_cleanly(loops, {1, 2, 3}, lambda v: expected[weights_of(v)])
    assert not leftovers(cache), f"temporary files left in the cache: {leftovers(cache)}"


def test_a_start_from_object_storage_reports_its_fetch_phase(inferd_server_factory, store, tmp_path):
    prefix, model = "fetchphase", "s3_fetch"
    put(store, f"{prefix}/{model}/config.pbtxt", mlp_config(model).encode())
    put_mlp_version(store, prefix, model, 1)
    server = inferd_server_factory(
        f"s3://{BUCKET}/{prefix}", "--model-cache-dir", str(tmp_path / "cache"), env=store.env()
    )
    page = requests.get(f"{server.http_base}/metrics", timeout=10).text
    phases = {
        m.group(2): float(m.group(3))
        for m in re.finditer(r'^inferd_model_start_seconds\{([^}]*phase="(\w+)"[^}]*)\} (\S+)', page, re.M)
        if f'model="{model}"' in m.group(1)
    }
    assert set(phases) == {"fetch", "checks", "load", "warmup"}, page
    assert phases["fetch"] > 0, phases
    logs = server.stdout_path.read_text() + server.stderr_path.read_text()
    line = re.search(rf"start phases model={model} version=1 fetch_ms=(\S+)", logs)
    assert line and float(line.group(1)) > 0, logs[-2000:]


# --------------------------------------------------------------------------------------------
# inferd pull
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_prefix(store):
    """The example repository uploaded under ``examples/``."""
    store.upload_tree(BUCKET, "examples", EXAMPLE_MODELS)
    return "examples"


def test_pull_copies_the_whole_repository_byte_for_byte_and_then_only_changes(
    inferd_bin, store, example_prefix, tmp_path
):
    dest = tmp_path / "models"
    first = run_pull(inferd_bin, store, f"s3://{BUCKET}/{example_prefix}", "--to", str(dest))
    assert first.returncode == 0, first.stderr
    assert tree(dest) == models_tree(EXAMPLE_MODELS)
    total = sum((EXAMPLE_MODELS / rel).stat().st_size for rel in models_tree(EXAMPLE_MODELS))
    assert f"{total} bytes pulled" in first.stdout, first.stdout

    again = run_pull(inferd_bin, store, f"s3://{BUCKET}/{example_prefix}", "--to", str(dest))
    assert again.returncode == 0, again.stderr
    assert " 0 bytes pulled" in again.stdout, "a second pull with nothing changed must download nothing"
    assert not leftovers(dest)


def test_pull_of_chosen_models_copies_only_them(inferd_bin, store, example_prefix, tmp_path):
    dest = tmp_path / "models"
    out = run_pull(
        inferd_bin, store, f"s3://{BUCKET}/{example_prefix}", "--to", str(dest), "--model", "add_sub", "--quiet"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "", "--quiet prints nothing on success"
    want = {k: v for k, v in tree(EXAMPLE_MODELS).items() if k.startswith("add_sub/")}
    assert tree(dest) == want

    missing = run_pull(
        inferd_bin, store, f"s3://{BUCKET}/{example_prefix}", "--to", str(tmp_path / "x"), "--model", "nope"
    )
    assert missing.returncode == 2
    assert "nope" in missing.stderr


def test_pull_draws_a_progress_bar_on_a_terminal(inferd_bin, store, example_prefix, tmp_path):
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [str(inferd_bin), "pull", f"s3://{BUCKET}/{example_prefix}", "--to", str(tmp_path / "m")],
        env={**os.environ, **store.env(), "TERM": "xterm"},
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    shown = b""
    deadline = time.monotonic() + PULL_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the pull exited
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.wait(timeout=10) == 0
    text = shown.decode(errors="replace")
    assert re.search(r"\d+ files \[[=> ]+\] [\d.]+ \w*B/[\d.]+ \w*B", text), f"no progress bar drawn: {text!r}"


def test_an_interrupted_pull_leaves_no_loadable_version_and_the_next_pull_completes_it(
    inferd_bin, inferd_server_factory, store, tmp_path
):
    prefix, model = "partial", "big_mlp"
    put(store, f"{prefix}/{model}/config.pbtxt", mlp_config(model).encode())
    put_mlp_version(store, prefix, model, 1)
    source = f"s3://{BUCKET}/{prefix}"
    dest = tmp_path / "models"
    assert run_pull(inferd_bin, store, source, "--to", str(dest), "--quiet").returncode == 0

    # A new version with a large file: the pull is stopped (SIGSTOP) once the file is partly
    # written, checked, then killed (SIGKILL), as an init container killed mid-pull would be.
    blob = os.urandom(48 << 20)
    caught = None
    for version in (2, 3, 4):
        put_mlp_version(store, prefix, model, version, extra=blob)
        partial = dest / model / f".inferd-tmp-{version}" / "blob.bin"
        proc = subprocess.Popen(
            [str(inferd_bin), "pull", source, "--to", str(dest), "--quiet"],
            env={**os.environ, **store.env()},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + PULL_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if partial.stat().st_size > 0:
                    proc.send_signal(signal.SIGSTOP)
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.0005)
        size = partial.stat().st_size if partial.exists() else 0
        stopped_mid_file = proc.poll() is None and 0 < size < len(blob)
        proc.kill()
        proc.wait(timeout=10)
        if stopped_mid_file:
            caught = (version, size)
            break
    assert caught, "every pull finished before the test could stop it halfway"
    version, size = caught

    assert not (dest / model / str(version)).exists(), "a half-pulled version has its final name"
    assert leftovers(dest), "the interrupted pull's temporary folder should be there"
    # Served as it is, the folder loads the last complete version and nothing half-written.
    server = inferd_server_factory(dest, name="after-killed-pull")
    client = TritonClient("http", server)
    try:
        assert ready_versions(client.repository_index(), model) == {str(version - 1)}
        assert client.model_metadata(model)["versions"] == [str(version - 1)]
    finally:
        client.close()
        server.stop()
    assert ".inferd-tmp" not in server.stderr_path.read_text() + server.stdout_path.read_text()

    # The next pull completes it and clears the leftovers.
    done = run_pull(inferd_bin, store, source, "--to", str(dest))
    assert done.returncode == 0, done.stderr
    assert sha256_of(dest / model / str(version) / "blob.bin") == hashlib.sha256(blob).hexdigest()
    assert (dest / model / str(version) / "model.onnx").read_bytes() == example_model_path(
        "simple_mlp", weights_of(version)
    ).read_bytes()
    assert not leftovers(dest), leftovers(dest)


def test_a_file_that_fails_its_sha256_pin_never_becomes_a_version(inferd_bin, inferd_server_factory, store, tmp_path):
    prefix = "pinned"
    good_digest = sha256_of(example_model_path("simple_mlp", 1))
    wrong_digest = sha256_of(example_model_path("simple_mlp", 2))
    put(store, f"{prefix}/pin_ok/config.pbtxt", mlp_config("pin_ok", pins={"1/model.onnx": good_digest}).encode())
    put_mlp_version(store, prefix, "pin_ok", 1)
    put(store, f"{prefix}/pin_bad/config.pbtxt", mlp_config("pin_bad", pins={"1/model.onnx": wrong_digest}).encode())
    put_mlp_version(store, prefix, "pin_bad", 1)

    dest = tmp_path / "models"
    out = run_pull(inferd_bin, store, f"s3://{BUCKET}/{prefix}", "--to", str(dest))
    assert out.returncode == 1, f"a failed check exits 1: {out.returncode} {out.stderr}"
    assert "pin_bad" in out.stderr and wrong_digest in out.stderr and good_digest in out.stderr, out.stderr
    assert (dest / "pin_ok" / "1" / "model.onnx").exists()
    assert not (dest / "pin_bad" / "1").exists(), "the file that failed its pin was put in place"
    assert not leftovers(dest)

    # Served from the store, the good model is ready and the bad one never gets a version.
    server = inferd_server_factory(
        f"s3://{BUCKET}/{prefix}", "--model-cache-dir", str(tmp_path / "cache"), strict_readiness=False, env=store.env()
    )
    client = TritonClient("http", server)
    try:
        assert client.is_model_ready("pin_ok")
        assert ready_versions(client.repository_index(), "pin_bad") == set()
    finally:
        client.close()
    logs = server.stderr_path.read_text() + server.stdout_path.read_text()
    assert "pin_bad" in logs and "sha256" in logs, "the refusal must be logged with its reason"


# --------------------------------------------------------------------------------------------
# stores that cannot be used
# --------------------------------------------------------------------------------------------


def unusable(case: str, store: SeaweedS3) -> tuple[str, dict[str, str], str]:
    """(URL, environment, a word the error must contain) for each way a store can be unusable."""
    if case == "bad credentials":
        return f"s3://{BUCKET}/examples", store.env(secret_key="wrong-secret"), "SignatureDoesNotMatch|[Aa]ccess|403|credential"
    if case == "no such bucket":
        return "s3://no-such-bucket-here/models", store.env(), "NoSuchBucket|bucket|404"
    dead = free_weed_ports(1)[0]
    return f"s3://{BUCKET}/examples", {**store.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{dead}"}, "connect|refused|Connection"


CASES = ["bad credentials", "no such bucket", "unreachable"]


@pytest.mark.parametrize("case", CASES)
def test_pull_from_an_unusable_store_exits_2_quickly_naming_the_cause(inferd_bin, store, example_prefix, tmp_path, case):
    url, env, cause = unusable(case, store)
    t = time.monotonic()
    out = run_pull(inferd_bin, store, url, "--to", str(tmp_path / "m"), env=env)
    took = time.monotonic() - t
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert took < FAIL_FAST_S, f"took {took:.1f}s"
    assert url in out.stderr and re.search(cause, out.stderr), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, f"one line, not a trace: {out.stderr!r}"
    assert not any((tmp_path / "m").rglob("*"))
    assert "wrong-secret" not in out.stderr


@pytest.mark.parametrize("case", CASES)
def test_serve_from_an_unusable_store_fails_at_startup_naming_the_cause(inferd_bin, store, example_prefix, tmp_path, case):
    url, env, cause = unusable(case, store)
    t = time.monotonic()
    out = subprocess.run(
        [str(inferd_bin), "serve", "--model-repository", url, "--model-cache-dir", str(tmp_path / "c"),
         "--http-port", "0", "--grpc-port", "0", "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1"],
        env={**os.environ, "INFERD_METRICS_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=FAIL_FAST_S * 2,
        stdin=subprocess.DEVNULL,
    )
    took = time.monotonic() - t
    assert out.returncode != 0
    assert took < FAIL_FAST_S, f"took {took:.1f}s"
    logs = out.stderr + out.stdout
    assert url in logs and re.search(cause, logs), logs
    assert "panicked" not in logs
