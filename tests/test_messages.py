"""What repro prints is what the user and the image wrote: no emoji codes (`oci:x:1` is not `oci❌1`) and no
console markup (`[bold]` in a label stays text), in results, tables, reports and error lines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_CONFIG, busybox_layers, repro
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
