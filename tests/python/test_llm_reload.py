"""Live reload of an LLM under streaming traffic (the repository in poll mode): while streams
run on version 1, version 2 appears; new requests go to version 2, the streams that started
finish on version 1 with every token, and nothing fails."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import requests

from inferd_testlib import wait_until

MODEL = os.environ.get("INFERD_SMOLLM2_GGUF", "")


def test_streams_finish_on_the_old_version_while_new_requests_get_the_new(inferd_server_factory, tmp_path):
    assert MODEL and Path(MODEL).is_file(), "set INFERD_SMOLLM2_GGUF (scripts/test.sh fetches it)"
    repo = tmp_path / "models"
    (repo / "smollm2" / "1").mkdir(parents=True)
    shutil.copy(MODEL, repo / "smollm2" / "1" / "model.gguf")
    server = inferd_server_factory(repo, control_mode="poll", poll_secs=0.2)
    results: list[tuple[str, int, str | None]] = []
    lock = threading.Lock()
    first_token = threading.Barrier(5)

    def stream():
        with requests.post(f"{server.http_base}/v1/completions", stream=True, timeout=300, json={
                "model": "smollm2", "prompt": "Tell me a story.", "max_tokens": 120, "ignore_eos": True,
                "stream": True}) as r:
            target = r.headers["x-inferd-target"]
            pieces, finish, first = 0, None, True
            for line in r.iter_lines():
                if not line.startswith(b"data: {"):
                    continue
                c = json.loads(line[len(b"data: "):])
                if first:
                    first_token.wait(timeout=120)
                    first = False
                pieces += 1
                finish = c["choices"][0]["finish_reason"] or finish
            with lock:
                results.append((target, pieces, finish))

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    first_token.wait(timeout=120)  # all four are streaming from version 1
    (repo / "smollm2" / "2").mkdir()
    shutil.copy(MODEL, repo / "smollm2" / "2" / "model.gguf.part")
    os.replace(repo / "smollm2" / "2" / "model.gguf.part", repo / "smollm2" / "2" / "model.gguf")
    wait_until(lambda: requests.get(f"{server.http_base}/v2/models/smollm2/versions/2/ready", timeout=5).status_code == 200,
               timeout=60, interval=0.1, what="version 2 to be ready")
    r = requests.post(f"{server.http_base}/v1/completions", timeout=120,
                      json={"model": "smollm2", "prompt": "Hello", "max_tokens": 4})
    assert r.status_code == 200 and r.headers["x-inferd-target"] == "smollm2/2", (r.status_code, r.text)
    for t in threads:
        t.join(timeout=300)
    assert len(results) == 4
    for target, pieces, finish in results:
        assert target == "smollm2/1"
        assert finish == "length" and pieces >= 100, (target, pieces, finish)
    # Version 1 goes once its streams are done.
    wait_until(lambda: requests.get(f"{server.http_base}/v2/models/smollm2/versions/1/ready", timeout=5).status_code != 200,
               timeout=30, interval=0.2, what="version 1 to unload")
    time.sleep(0.1)
