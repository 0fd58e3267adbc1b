"""An S3-compatible server on 127.0.0.1 for the tests: moto's server (``moto[server]``
from PyPI, a ``[test]`` extra), which speaks S3's HTTP protocol (SigV4-signed requests,
multipart uploads, ``ChecksumSHA256``, user metadata) and keeps objects in memory.

A real S3 implementation would be preferable, but none installs from the package
registries alone on this kind of machine: ``@zenko/cloudserver`` on npm pulls its core
libraries (Arsenal, werelogs, …) from GitHub, Debian's ``radosgw`` needs a Ceph cluster,
MinIO and Garage are not packaged.  moto validates less than a real store (it accepts a
part whose ``ChecksumSHA256`` is wrong), so the tests that need a store to disagree make
it disagree themselves.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class S3Server:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_s3_server(workdir: Path, timeout: float = 30.0) -> S3Server:
    workdir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = workdir / "moto.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto's S3 server exited with {process.returncode}: "
                               f"{log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto's S3 server did not listen on port {port} "
                                   f"within {timeout} s; see {log}") from None
            time.sleep(0.05)
    return S3Server(endpoint_url=f"http://127.0.0.1:{port}", access_key_id="labfleet-test",
                    secret_access_key="labfleet-test-secret", region="us-east-1",
                    process=process, log=log)
