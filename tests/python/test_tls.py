"""TLS and mutual TLS on the HTTP and gRPC ports, with certificates the test makes with openssl:
tritonclient over HTTPS and gRPC with SSL, a plain-HTTP client on the TLS port closed (server
unharmed), client certificates required with --tls-client-ca-file, the certificate re-read on
SIGHUP, and a bad file refused at startup by name.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

OPENSSL = shutil.which("openssl")


def run(*args: str) -> None:
    subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=60)


def make_ca(d: Path) -> tuple[Path, Path]:
    key, crt = d / "ca.key", d / "ca.crt"
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
        "-days", "2", "-subj", "/CN=inferd test CA")
    return crt, key


def make_cert(d: Path, name: str, ca: tuple[Path, Path], cn: str, server: bool) -> tuple[Path, Path]:
    key, csr, crt, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" if server
        else "extendedKeyUsage=clientAuth\n"
    )
    run("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return crt, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if OPENSSL is None:
        pytest.fail("openssl is not installed (Debian package 'openssl')", pytrace=False)
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    return {
        "dir": d,
        "ca": ca,
        "server": make_cert(d, "server", ca, "inferd-one", server=True),
        "server2": make_cert(d, "server2", ca, "inferd-two", server=True),
        "client": make_cert(d, "client", ca, "a client", server=False),
    }


@pytest.fixture(scope="module")
def tls_server(inferd_server_factory, model_repo_factory, pki):
    d = pki["dir"] / "live"
    d.mkdir()
    shutil.copy(pki["server"][0], d / "tls.crt")
    shutil.copy(pki["server"][1], d / "tls.key")
    srv = inferd_server_factory(model_repo_factory(["add_sub"]), "--tls-cert-file", str(d / "tls.crt"),
                                "--tls-key-file", str(d / "tls.key"), wait_ready=False)
    srv.tls_dir = d
    wait_ready(srv, verify=str(pki["ca"][0]))
    return srv


def wait_ready(srv, verify, cert=None) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            r = requests.get(f"https://localhost:{srv.http_port}/v2/health/ready", verify=verify, cert=cert,
                             timeout=2)
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "TLS server not ready"
        time.sleep(0.1)


def add_sub_inputs(mod):
    a = np.arange(4, dtype=np.int64).reshape(1, 4)
    inputs = [mod.InferInput("INPUT0", [1, 4], "INT64"), mod.InferInput("INPUT1", [1, 4], "INT64")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return inputs, a


def peer_common_name(port: int, ca: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        subject = dict(x[0] for x in s.getpeercert()["subject"])
        return subject["commonName"]


def test_tritonclient_over_https_and_grpc_with_ssl(tls_server, pki):
    ca = str(pki["ca"][0])
    http = httpclient.InferenceServerClient(f"localhost:{tls_server.http_port}", ssl=True,
                                            ssl_options={"ca_certs": ca})
    inputs, a = add_sub_inputs(httpclient)
    out = http.infer("add_sub", inputs)
    assert (out.as_numpy("OUTPUT0") == 2 * a).all()
    g = grpcclient.InferenceServerClient(f"localhost:{tls_server.grpc_port}", ssl=True,
                                         root_certificates=ca)
    inputs, a = add_sub_inputs(grpcclient)
    out = g.infer("add_sub", inputs)
    assert (out.as_numpy("OUTPUT1") == 0).all()
    assert g.is_server_ready()


def test_plain_http_on_the_tls_port_is_closed_and_the_server_goes_on(tls_server, pki):
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls_server.http_port}/v2/health/ready", timeout=5)
    with socket.create_connection(("127.0.0.1", tls_server.http_port), timeout=5) as s:
        s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        data = s.recv(1024)
        assert not data.startswith(b"HTTP/1.1 200"), data
    assert tls_server.is_running()
    wait_ready(tls_server, verify=str(pki["ca"][0]))


def test_the_certificate_is_read_again_on_sighup(tls_server, pki):
    ca = pki["ca"][0]
    assert peer_common_name(tls_server.http_port, ca) == "inferd-one"
    shutil.copy(pki["server2"][0], tls_server.tls_dir / "tls.crt")
    shutil.copy(pki["server2"][1], tls_server.tls_dir / "tls.key")
    tls_server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while peer_common_name(tls_server.http_port, ca) != "inferd-two":
        assert time.monotonic() < deadline, "the new certificate was not served"
        time.sleep(0.1)
    assert peer_common_name(tls_server.grpc_port, ca) == "inferd-two"
    assert tls_server.is_running()


def test_mutual_tls_requires_a_client_certificate(inferd_server_factory, model_repo_factory, pki):
    crt, key = pki["server"]
    ca = str(pki["ca"][0])
    srv = inferd_server_factory(model_repo_factory(["add_sub"]), "--tls-cert-file", str(crt), "--tls-key-file",
                                str(key), "--tls-client-ca-file", ca, wait_ready=False)
    client = (str(pki["client"][0]), str(pki["client"][1]))
    wait_ready(srv, verify=ca, cert=client)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://localhost:{srv.http_port}/v2/health/ready", verify=ca, timeout=5)
    g = grpcclient.InferenceServerClient(f"localhost:{srv.grpc_port}", ssl=True, root_certificates=ca,
                                         private_key=client[1], certificate_chain=client[0])
    assert g.is_server_live()
    bare = grpcclient.InferenceServerClient(f"localhost:{srv.grpc_port}", ssl=True, root_certificates=ca)
    with pytest.raises(Exception):
        bare.is_server_live()


def test_a_bad_tls_file_stops_the_start_naming_it(inferd_bin, model_repo_factory, pki, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    out = subprocess.run([str(inferd_bin), "serve", "--model-repository", str(model_repo_factory(["add_sub"])),
                          "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                          "--tls-cert-file", str(pki["server"][0]), "--tls-key-file", str(junk)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert "junk.pem" in out.stderr and "TLS" in out.stderr, out.stderr
