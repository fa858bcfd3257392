"""Clients that send requests non-stop while a test changes the server under them.

``ClientLoop`` sends the same batch-1 request on its own thread (HTTP or gRPC) and records every
response, so a test can assert that a version swap, a reload or a store outage failed none of
them. ``wait_for_only_version`` waits until a model serves exactly one given version.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from inferd_testlib import TritonClient, ready_versions, wait_until

# A bound on memory, not on the test: a loop that reaches it stops sending. 20,000 was reached on
# a faster machine during test_object_store's minute-long store outage, and the loop then never saw
# the version that came after it.
MAX_REQUESTS_PER_CLIENT = 200_000
PAUSE_BETWEEN_REQUESTS_S = 0.002  # leave some CPU to the server on small machines


@dataclass
class Observation:
    version: str = ""
    output: np.ndarray | None = None
    error: str | None = None


@dataclass
class ClientLoop:
    """Sends the same batch-1 request to ``model`` in a loop on its own thread."""

    protocol: str
    server: object
    model: str
    x: np.ndarray
    stop: threading.Event
    deadline: float
    observations: list[Observation] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"{self.protocol}-client", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            client = TritonClient(self.protocol, self.server)  # tritonclient objects stay on one thread
        except Exception as exc:  # noqa: BLE001
            self.observations.append(Observation(error=f"client setup failed: {exc!r}"))
            return
        try:
            while (
                not self.stop.is_set()
                and time.monotonic() < self.deadline
                and len(self.observations) < MAX_REQUESTS_PER_CLIENT
            ):
                try:
                    version, out = client.infer(self.model, {"input": self.x}, ["output"], timeout=10.0)
                    self.observations.append(Observation(version=version, output=out["output"]))
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    self.observations.append(Observation(error=f"{type(exc).__name__}: {exc}"))
                time.sleep(PAUSE_BETWEEN_REQUESTS_S)
        finally:
            client.close()

    def last_version(self) -> str:
        return self.observations[-1].version if self.observations else ""

    def errors(self) -> list[str]:
        return [o.error for o in self.observations if o.error]

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), f"{self.protocol} client thread did not stop"


def wait_for_only_version(client: TritonClient, model: str, version: int, timeout: float) -> None:
    """Until ``version`` is READY and is the only version the server reports for ``model``."""
    want = str(version)

    def swapped() -> bool:
        metadata_versions = client.model_metadata(model)["versions"]
        index_ready = ready_versions(client.repository_index(), model)
        return metadata_versions == [want] and index_ready == {want} and client.is_model_ready(model, want)

    wait_until(swapped, timeout=timeout, interval=0.1, what=f"{model} to serve only version {want}")


@contextmanager
def clients_running(server, model: str, x: np.ndarray, cap_s: float) -> Iterator[list[ClientLoop]]:
    """An HTTP and a gRPC ``ClientLoop`` sending ``x`` to ``model`` until the block ends (or
    ``cap_s`` passes); entered once both have had a first response."""
    stop = threading.Event()
    deadline = time.monotonic() + cap_s
    loops = [ClientLoop(protocol, server, model, x, stop, deadline) for protocol in ("http", "grpc")]
    try:
        for loop in loops:
            loop.start()
        wait_until(lambda: all(loop.observations for loop in loops), timeout=10, what="first responses")
        yield loops
    finally:
        stop.set()
        for loop in loops:
            if loop.thread is not None:
                loop.join()


def assert_served_cleanly(
    loops: list[ClientLoop], versions: set[int], expected: Callable[[int], np.ndarray]
) -> None:
    """No request failed; versions only went forward and covered ``versions``; each answer
    matches ``expected(version)`` of the version it names."""
    for loop in loops:
        errors = loop.errors()
        assert not errors, f"{loop.protocol}: {len(errors)} failed requests, first: {errors[:3]}"
        bad = [o.version for o in loop.observations if not o.version.isdigit()]
        assert not bad, f"{loop.protocol}: responses without a numeric model_version: {bad[:3]}"
        seen = [int(o.version) for o in loop.observations]
        assert seen == sorted(seen), f"{loop.protocol}: served versions went backwards: {seen}"
        assert set(seen) == versions, f"{loop.protocol}: saw versions {sorted(set(seen))}"
        for i, obs in enumerate(loop.observations):
            want = expected(int(obs.version))
            assert np.allclose(obs.output, want, atol=1e-5, rtol=1e-5), (
                f"{loop.protocol} response #{i} says version {obs.version} but its output "
                f"{obs.output} does not match that version's reference {want}"
            )
