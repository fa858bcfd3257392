"""`inferd top` in a real terminal (tmux): it shows the server's models and refreshes (the
screen read back with `capture-pane`), and `q` quits; an unreachable server is an error before
the screen is taken over.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
import uuid

import requests

from inferd_testlib import copy_models

ADD_SUB = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]},
                      {"name": "INPUT1", "shape": [1, 4], "datatype": "INT64", "data": [1, 1, 1, 1]}]}


def capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                          check=True).stdout


def wait_screen(session: str, pred, timeout: float = 20.0) -> str:
    deadline = time.time() + timeout
    screen = ""
    while time.time() < deadline:
        screen = capture(session)
        if pred(screen):
            return screen
        time.sleep(0.3)
    raise AssertionError(f"the screen never matched; last:\n{screen}")


def model_rps(screen: str, model: str) -> float:
    for line in screen.splitlines():
        cols = line.strip("│ ").split()
        if cols and cols[0] == model:
            # model, versions..., req/s, p50, p99, err/s, queue ("-" before the first point)
            return 0.0 if cols[-5] == "-" else float(cols[-5])
    raise AssertionError(f"no row for {model}:\n{screen}")


def test_inferd_top_shows_the_models_and_refreshes(inferd_bin, inferd_server_factory, tmp_path):
    assert shutil.which("tmux"), "install tmux (scripts/test.sh does)"
    repo = copy_models(tmp_path / "models", ["add_sub", "simple_mlp"])
    server = inferd_server_factory(repo)
    session = f"inferd-top-{uuid.uuid4().hex[:8]}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "140", "-y", "30",
                    f"{inferd_bin} top --url {server.http_base} --interval-secs 1"], check=True)
    stop = threading.Event()
    try:
        first = wait_screen(session, lambda s: "add_sub" in s and "simple_mlp" in s)
        assert "v1 READY" in first and "v2 READY" in first and "ready" in first, first
        stamp = re.search(r"updated (\d\d:\d\d:\d\d)", first).group(1)
        assert model_rps(first, "add_sub") == 0.0

        def load() -> None:
            s = requests.Session()
            while not stop.is_set():
                assert s.post(f"{server.http_base}/v2/models/add_sub/infer", json=ADD_SUB, timeout=10).status_code == 200

        t = threading.Thread(target=load)
        t.start()
        later = wait_screen(session, lambda s: "add_sub" in s and model_rps(s, "add_sub") > 1.0)
        stop.set()
        t.join(timeout=30)
        assert re.search(r"updated (\d\d:\d\d:\d\d)", later).group(1) != stamp, later
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            if subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("q did not quit inferd top")
    finally:
        stop.set()
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_inferd_top_refuses_an_unreachable_server_before_taking_the_screen(inferd_bin):
    r = subprocess.run([str(inferd_bin), "top", "--url", "http://127.0.0.1:9"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2, r
    assert "inferd top:" in r.stderr and "127.0.0.1:9" in r.stderr, r.stderr
    assert "\x1b[" not in r.stdout, "the terminal was taken over"
