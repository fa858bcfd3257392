"""The response cache (Triton's `response_cache { enable: true }` with `--cache-config
local,size=BYTES`), driven by the real tritonclient over HTTP and gRPC: a repeated request is a
hit that returns the same bytes without running the model, the statistics count hits and misses,
the byte budget evicts the least recently used, a model that does not enable it is never cached,
and a cache configuration inferd cannot honour stops the server with a message naming the flag.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from inferd_testlib import EXAMPLE_MODELS

# One response of simple_mlp (10 floats) costs about 200 bytes in the cache's accounting:
# this budget holds a handful, so ten distinct requests evict the first.
BUDGET = 1000


def repo_with(tmp_path, cached: bool):
    repo = tmp_path / "models"
    for name in ("cached_mlp", "plain_mlp"):
        shutil.copytree(EXAMPLE_MODELS / "simple_mlp", repo / name)
        shutil.rmtree(repo / name / "2")
        cfg = (repo / name / "config.pbtxt").read_text().replace('name: "simple_mlp"', f'name: "{name}"')
        if name == "cached_mlp" and cached:
            cfg += "\nresponse_cache { enable: true }\n"
        (repo / name / "config.pbtxt").write_text(cfg)
    return repo


def infer(client, mod, model: str, x: np.ndarray) -> np.ndarray:
    inp = mod.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("output")


def stats(client, model: str, grpc: bool = False) -> tuple[int, int, int]:
    """(cache hits, cache misses, inference count) of version 1."""
    s = client.get_inference_statistics(model, "1", as_json=True) if grpc else client.get_inference_statistics(model, "1")
    m = s["model_stats"][0]
    i = m["inference_stats"]
    return int(i["cache_hit"].get("count", 0)), int(i["cache_miss"].get("count", 0)), int(m.get("inference_count", 0))


def test_a_repeated_request_is_a_hit_with_the_same_bytes_over_http_and_grpc(inferd_server_factory, tmp_path):
    server = inferd_server_factory(repo_with(tmp_path, cached=True), "--cache-config", f"local,size={BUDGET}")
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    first = infer(http, httpclient, "cached_mlp", x)
    assert stats(http, "cached_mlp") == (0, 1, 1)
    again = infer(http, httpclient, "cached_mlp", x)
    assert again.tobytes() == first.tobytes()
    # Answered from the cache: a hit, and the model did not run again.
    assert stats(http, "cached_mlp") == (1, 1, 1)
    # The same request over gRPC hits the same entry.
    assert infer(grpc, grpcclient, "cached_mlp", x).tobytes() == first.tobytes()
    assert stats(grpc, "cached_mlp", grpc=True) == (2, 1, 1)
    # Any other byte is another request.
    y = x.copy()
    y[0, 63] += 1e-3
    other = infer(http, httpclient, "cached_mlp", y)
    assert other.tobytes() != first.tobytes()
    assert stats(http, "cached_mlp") == (2, 2, 2)
    # A model without response_cache never uses it.
    for _ in range(2):
        infer(http, httpclient, "plain_mlp", x)
    assert stats(http, "plain_mlp") == (0, 0, 2)


def test_the_byte_budget_evicts_the_least_recently_used(inferd_server_factory, tmp_path):
    server = inferd_server_factory(repo_with(tmp_path, cached=True), "--cache-config", f"local,size={BUDGET}")
    http = httpclient.InferenceServerClient(server.http_url)
    xs = [np.full((1, 64), i, dtype=np.float32) for i in range(10)]
    for x in xs:
        infer(http, httpclient, "cached_mlp", x)
    assert stats(http, "cached_mlp") == (0, 10, 10)
    infer(http, httpclient, "cached_mlp", xs[-1])  # the newest is still there
    assert stats(http, "cached_mlp")[0] == 1
    infer(http, httpclient, "cached_mlp", xs[0])  # the oldest was evicted: computed again
    assert stats(http, "cached_mlp") == (1, 11, 11)


def test_without_a_server_cache_an_enabled_model_loads_and_computes_every_request(inferd_server_factory, tmp_path):
    server = inferd_server_factory(repo_with(tmp_path, cached=True))
    http = httpclient.InferenceServerClient(server.http_url)
    x = np.ones((1, 64), dtype=np.float32)
    for _ in range(2):
        infer(http, httpclient, "cached_mlp", x)
    assert stats(http, "cached_mlp") == (0, 0, 2)
    logs = server.stdout_path.read_text() + server.stderr_path.read_text()
    assert "--cache-config" in logs, "the log says the cache is enabled but the server has none"


@pytest.mark.parametrize("config, says", [
    ("redis,host=x", "'redis' is not a cache"),
    ("local", "needs size=BYTES"),
    ("local,size=big", "'big' is not a number"),
])
def test_a_cache_config_inferd_cannot_honour_stops_the_server_naming_the_flag(inferd_bin, tmp_path, config, says):
    r = subprocess.run([str(inferd_bin), "serve", "--model-repository", str(repo_with(tmp_path, cached=True)),
                        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--cache-config", config],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "--cache-config" in r.stderr and says in r.stderr, r.stderr
