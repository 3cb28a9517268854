"""Debian's docker-registry on 127.0.0.1 for the push and pull benchmarks, emptied between runs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRegistry:
    def __init__(self, base: Path) -> None:
        self.base = base
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = base / "data"
        (base / "config.yml").write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.storage}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '{self.host}'}}\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.base / "config.yml")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def reset(self) -> None:
        """Restart on empty storage: pushed repositories and blobs are gone, the registry's caches too."""
        self.stop()
        shutil.rmtree(self.storage, ignore_errors=True)
        self.start()
