"""Fixtures for the inferd interop suite.

The suite runs the real ``inferd`` binary named by ``$INFERD_BIN`` against copies of
``examples/models`` and talks to it with the real ``tritonclient``.

Fixtures:
    inferd_bin              (session) Path of the binary; fails the test if $INFERD_BIN is unset/missing.
    onnx_reference          (session) OnnxReference: onnxruntime outputs for a model file + feeds.
    model_repo_factory      (module)  make_repo(names=None) -> Path: fresh copy of (some) example models.
    inferd_server_factory   (module)  start(repo, *args, ...) -> InferdServer; every server it started
                                      is stopped (SIGTERM, then SIGKILL) at module teardown.
Server logs (stdout/stderr files) of every running server are attached to failing test reports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import pytest

from inferd_testlib import ACTIVE_SERVERS, InferdServer, OnnxReference, copy_models


@pytest.fixture(scope="session")
def inferd_bin() -> Path:
    value = os.environ.get("INFERD_BIN")
    if not value:
        pytest.fail(
            "INFERD_BIN is not set: point it at the inferd binary, e.g. "
            "INFERD_BIN=target/debug/inferd .venv/bin/pytest tests/python",
            pytrace=False,
        )
    path = Path(value).resolve()
    if not path.is_file():
        pytest.fail(f"INFERD_BIN={value!r}: no such file ({path})", pytrace=False)
    if not os.access(path, os.X_OK):
        pytest.fail(f"INFERD_BIN={value!r}: not executable", pytrace=False)
    return path


@pytest.fixture(scope="session")
def onnx_reference() -> OnnxReference:
    return OnnxReference()


@pytest.fixture(scope="module")
def model_repo_factory(tmp_path_factory) -> Callable[..., Path]:
    """``make_repo(names=None)``: copy the example models (or just ``names``) to a fresh dir."""

    def make_repo(names: Iterable[str] | None = None) -> Path:
        return copy_models(tmp_path_factory.mktemp("model_repo") / "models", names)

    return make_repo


@pytest.fixture(scope="module")
def inferd_server_factory(inferd_bin, tmp_path_factory, request) -> Callable[..., InferdServer]:
    """``start(repo, *extra_args, control_mode=None, poll_secs=None, load_models=(),
    strict_readiness=None, wait_ready=True, name=None, env=None)`` -> a started InferdServer.

    Always binds 127.0.0.1 with ``--http-port 0 --grpc-port 0`` and learns the ports from the
    ``HTTP listening on ...`` / ``gRPC listening on ...`` stdout lines, then waits (60 s max) for
    ``GET /v2/health/ready`` == 200 (or ``/live`` when ``wait_ready=False``).
    """
    started: list[InferdServer] = []
    log_dir = tmp_path_factory.mktemp("inferd_logs")
    module_name = request.module.__name__.rsplit(".", 1)[-1]

    def start(
        repo: Path,
        *extra_args: str,
        control_mode: str | None = None,
        poll_secs: float | None = None,
        load_models: Iterable[str] = (),
        strict_readiness: bool | None = None,
        wait_ready: bool = True,
        name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> InferdServer:
        args: list[str] = []
        if control_mode is not None:
            args += ["--model-control-mode", control_mode]
        if poll_secs is not None:
            args += ["--repository-poll-secs", f"{poll_secs:g}"]
        for model in load_models:
            args += ["--load-model", model]
        if strict_readiness is not None:
            args += ["--strict-readiness", "true" if strict_readiness else "false"]
        args += list(extra_args)
        server = InferdServer(
            inferd_bin, repo, args, log_dir, name or f"{module_name}-{len(started)}", env=env
        )
        started.append(server)
        return server.start(wait_ready=wait_ready)

    yield start
    for server in started:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server in list(ACTIVE_SERVERS):
            report.sections.append((f"inferd log: {server.name}", server.describe()))
