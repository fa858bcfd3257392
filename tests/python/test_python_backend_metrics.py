"""A python model's own metrics (Triton's custom metrics: pb_utils.MetricFamily and Metric)
on the server's metrics page, as the python_backend custom_metrics example uses them: a
counter, a gauge and a histogram labelled by the model, updated in execute and read back with
value(); the page passes promtool's check and parses with Prometheus's own client; misuse
(a negative counter increment, a name that is not a Prometheus name) fails with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from test_python_backend import write

MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self.requests = pb_utils.MetricFamily(
            name="requests_processed_total", description="Requests this model processed",
            kind=pb_utils.MetricFamily.COUNTER).Metric(labels=labels)
        self.last = pb_utils.MetricFamily(
            name="last_input_sum", description="Sum of the last input",
            kind=pb_utils.MetricFamily.GAUGE).Metric(labels=labels)
        self.sizes = pb_utils.MetricFamily(
            name="input_sum", description="Sums of inputs",
            kind=pb_utils.MetricFamily.HISTOGRAM).Metric(labels=labels, buckets=[1.0, 10.0, 100.0])

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            if x[0] < 0:
                self.requests.increment(-1)  # refused: counters only go up
            self.requests.increment(1)
            self.last.set(float(x.sum()))
            self.sizes.observe(float(x.sum()))
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("COUNT", np.array([self.requests.value()]))]))
        return out
'''

BAD_NAME = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        pb_utils.MetricFamily(name="9 lives", description="", kind=pb_utils.MetricFamily.GAUGE)

    def execute(self, requests):
        return []
'''

CONFIG = '''name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "COUNT" data_type: TYPE_FP64 dims: [ 1 ] }} ]
'''


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("pymetrics") / "models"
    write(repo, "counted", MODEL, CONFIG.format(name="counted"))
    write(repo, "bad_metric", BAD_NAME, CONFIG.format(name="bad_metric"))
    return inferd_server_factory(repo, "--python-executable", sys.executable, strict_readiness=False)


def infer(server, x: float) -> float:
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("X", [1], "FP32")
    inp.set_data_from_numpy(np.array([x], dtype=np.float32))
    return float(client.infer("counted", [inp]).as_numpy("COUNT")[0])


def test_counter_gauge_and_histogram_reach_the_metrics_page(server):
    assert [infer(server, x) for x in (0.5, 5.0, 50.0, 500.0)] == [1.0, 2.0, 3.0, 4.0]
    page = requests.get(f"{server.http_base}/metrics", timeout=10).text
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed (.ci/run installs Prometheus)", pytrace=False)
    check = subprocess.run(["promtool", "check", "metrics"], input=page, capture_output=True, text=True)
    assert "error" not in (check.stdout + check.stderr).lower(), check.stdout + check.stderr
    fams = {f.name: f for f in text_string_to_metric_families(page)}
    labels = {"model": "counted", "version": "1"}
    counter = fams["requests_processed"]
    assert counter.type == "counter" and counter.documentation == "Requests this model processed"
    assert [(s.name, s.labels, s.value) for s in counter.samples if s.name.endswith("_total")] == [
        ("requests_processed_total", labels, 4.0)]
    gauge = fams["last_input_sum"]
    assert [(s.labels, s.value) for s in gauge.samples] == [(labels, 500.0)]
    hist = {(s.name, float(s.labels["le"]) if "le" in s.labels else None): s.value
            for s in fams["input_sum"].samples}
    assert hist[("input_sum_bucket", 1.0)] == 1 and hist[("input_sum_bucket", 10.0)] == 2, hist
    assert hist[("input_sum_bucket", 100.0)] == 3 and hist[("input_sum_bucket", float("inf"))] == 4, hist
    assert hist[("input_sum_count", None)] == 4 and hist[("input_sum_sum", None)] == 555.5, hist


def test_a_negative_counter_increment_fails_that_request_with_the_reason(server):
    before = infer(server, 1.0)
    with pytest.raises(InferenceServerException) as e:
        infer(server, -1.0)
    assert "only goes up" in e.value.message(), e.value.message()
    assert infer(server, 1.0) == before + 1


def test_a_family_name_prometheus_refuses_leaves_the_model_unavailable_naming_it(server):
    index = requests.post(f"{server.http_base}/v2/repository/index", json={}, timeout=10).json()
    row = next(r for r in index if r["name"] == "bad_metric")
    assert row["state"] == "UNAVAILABLE" and "9 lives" in row["reason"] and "Prometheus name" in row["reason"], row
