"""What repro prints is what the user and the image wrote: no emoji codes (`oci:x:1` is not `oci❌1`) and no
console markup (`[bold]` in a label stays text), in results, tables, reports and error lines."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_CONFIG, busybox_layers, free_port, repro
from tests.imagekit import make_image

LABELS = {"note": "[bold]loud[/bold] :thumbs_up:", "[red]key": ":smile: v"}


@pytest.fixture
def here(busybox_layout: Path, tmp_path: Path) -> Path:
    """A working directory holding the busybox layout as `x` (so `oci:x:1` names it)."""
    shutil.copytree(busybox_layout, tmp_path / "x")
    return tmp_path


@pytest.mark.parametrize("destination", ["oci:x:2", "oci:cd:smile", "docker-archive:cd:smile:1"])
def test_convert_prints_the_reference_as_given(here, destination):
    proc = repro("convert", "oci:x:1", destination, cwd=here)
    assert proc.stdout.startswith(f"{destination}  sha256:"), proc.stdout
    assert proc.stdout.isascii()


def test_inspect_prints_labels_and_references_as_they_are(tmp_path):
    make_image(tmp_path / "x", "1", busybox_layers(), config={**BUSYBOX_CONFIG, "Labels": LABELS})
    out = repro("inspect", "oci:x:1", cwd=tmp_path).stdout
    assert out.isascii(), out
    assert "oci:x:1" in out
    for key, value in LABELS.items():
        assert f"{key}={value}" in out, out


def test_errors_keep_the_users_text(here):
    missing_tag = repro("inspect", "oci:x:3", check=False, cwd=here)
    assert missing_tag.returncode == 2 and "oci:x:3" in missing_tag.stderr, missing_tag.stderr
    missing_dir = repro("inspect", "oci:cd:smile", check=False, cwd=here)
    assert missing_dir.returncode == 2 and "oci:cd: cd does not exist" in missing_dir.stderr, missing_dir.stderr
    marked_up = repro("inspect", "oci:[bold]cd[/bold]:1", check=False, cwd=here)
    assert marked_up.returncode == 2 and "oci:[bold]cd[/bold]:" in marked_up.stderr, marked_up.stderr
    for proc in (missing_tag, missing_dir, marked_up):
        assert proc.stderr.isascii() and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_replay_report_prints_the_command_as_recorded(here):
    package = here / "package"
    command = "echo ':smile: [bold]hi[/bold] :x:'"
    repro("archive", "oci:x:1", "-o", str(package), "--record", command, "--executor", "runc", cwd=here)
    out = repro("replay", "--executor", "runc", str(package)).stdout
    assert f"[runc] {command}" in out and out.isascii(), out


def test_a_replay_that_differs_shows_the_last_lines_of_its_stderr(here):
    """A record keeps only hashes of the streams; what the replayed run said is what explains a mismatch."""
    package = here / "package"
    noisy = "i=0; while [ $i -lt 50 ]; do echo \"line $i\" >&2; i=$((i+1)); done; printf '\\033[2Jcleared\\n' >&2"
    repro("archive", "oci:x:1", "-o", str(package), "--executor", "runc",
          "--record", "cat /etc/motd /no/such/file", "--record", noisy, cwd=here)
    runs = json.loads((package / "data/runs.json").read_text())
    assert runs["runs"][0]["exit_code"] == 1
    runs["runs"][0]["exit_code"] = 0
    runs["runs"][1]["stderr_sha256"] = "0" * 64
    (package / "data/runs.json").write_text(json.dumps(runs))
    proc = repro("replay", "--executor", "runc", str(package), check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    first, second = proc.stdout.split("MISMATCH")[1:]
    assert "cat: can't open '/no/such/file': No such file or directory" in first, proc.stdout
    lines = second.splitlines()
    assert "      line 49" in lines and "      line 41" in lines and "      line 40" not in lines, proc.stdout
    assert "      ?[2Jcleared" in lines and "\x1b" not in proc.stdout, proc.stdout
    report = json.loads(repro("replay", "--json", "--executor", "runc", str(package), check=False).stdout)
    assert "No such file or directory" in report["runs"][0]["stderr_tail"]


class _Flaky(http.server.BaseHTTPRequestHandler):
    """A registry's front that answers 503 to its first requests, then passes them on (GET and HEAD)."""

    upstream = ""
    failures = 0

    def log_message(self, *args) -> None:
        pass

    def _forward(self, method: str) -> None:
        if type(self).failures > 0:
            type(self).failures -= 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        request = urllib.request.Request(self.upstream + self.path, method=method,
                                         headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        try:
            response = urllib.request.urlopen(request)
            status, headers, body = response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            status, headers, body = exc.code, exc.headers, exc.read()
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._forward("GET")

    def do_HEAD(self) -> None:
        self._forward("HEAD")


def test_a_registry_nobody_runs_is_one_line_at_once_and_a_5xx_is_still_retried(busybox_layout, registry, tmp_path):
    nobody = f"127.0.0.1:{free_port()}"
    for args in (("convert", f"oci:{busybox_layout}:1", f"docker://{nobody}/team/img:1"),
                 ("convert", f"docker://{nobody}/team/img:1", f"oci:{tmp_path}/pulled:1")):
        started = time.monotonic()
        proc = repro(*args, check=False)
        took = time.monotonic() - started
        assert proc.returncode == 2 and took < 10, (took, proc.stderr)
        assert proc.stderr.startswith(f"repro: {nobody}: cannot connect (connection refused)"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    repro("convert", f"oci:{busybox_layout}:1", f"docker://{registry.host}/flaky/img:1")
    handler = type("Flaky", (_Flaky,), {"upstream": f"http://{registry.host}", "failures": 3})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        front = f"127.0.0.1:{server.server_address[1]}"
        repro("convert", f"docker://{front}/flaky/img:1", f"oci:{tmp_path}/through-503:1")
        assert handler.failures == 0
    finally:
        server.shutdown()
    assert repro("hash", f"oci:{tmp_path}/through-503:1").stdout == repro("hash", f"oci:{busybox_layout}:1").stdout
