"""Fixtures for the WebSocket client tests: a real sigma process on 127.0.0.1:0.

The server is the release binary named by $TEST_SIGMA_BIN (scripts/test.sh sets it),
started with a small-limits config; the test reads its stdout until the
`listening on ADDR` line, which is the only synchronisation needed.
"""
import os
import pathlib
import signal
import subprocess
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

DEFAULT_CONFIG = """
[http]
head_timeout = "5s"

[websocket]
max_frame = 65536
max_message = 262144
ping_interval = "10s"
idle_timeout = "20s"
close_timeout = "2s"
max_outbound = 65536
"""


class Sigma:
    def __init__(self, config: str):
        binary = os.environ.get("TEST_SIGMA_BIN") or str(ROOT / "target" / "release" / "sigma")
        self.dir = tempfile.TemporaryDirectory()
        cfg = pathlib.Path(self.dir.name) / "sigma.toml"
        cfg.write_text(config)
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", str(cfg), "--pipeline", "T127.0.0.1:0[HA]",
             "--data", str(pathlib.Path(self.dir.name) / "data")],
            stdout=subprocess.PIPE, stderr=open(pathlib.Path(self.dir.name) / "stderr", "w"), text=True,
        )
        self.addr = None
        for line in self.proc.stdout:
            if line.startswith("listening on "):
                self.addr = line.split()[2]
                break
        assert self.addr, "sigma did not start: " + (pathlib.Path(self.dir.name) / "stderr").read_text()
        self.host, port = self.addr.rsplit(":", 1)
        self.port = int(port)

    def url(self, path="/echo"):
        return f"ws://{self.addr}{path}"

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait(self, timeout=15):
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.dir.cleanup()


@pytest.fixture
def make_sigma():
    started = []

    def start(config: str = DEFAULT_CONFIG) -> Sigma:
        s = Sigma(config)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def sigma(make_sigma):
    return make_sigma()
