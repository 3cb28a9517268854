"""Multi-stage specs and the step options the Containerfile and def-file front ends translate to: stages
built only when needed, copy from a stage, globs and ignore patterns, owners by name, directories, and
run steps with their own environment, working directory, user and step-local cache. As root (runc) and
as a plain user (bwrap) the image is the same."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPRO, repro
from tests.imagekit import E, make_image
from tests.test_build import build, digest_of, stage_hello

SPEC = """\
spec: 1
name: stages
source_date_epoch: 1700000000
stages:
  - name: builder
    base: {{image: "{base}"}}
    steps:
      - run: "mkdir -p /out && echo built-$X > /out/result && pwd > /out/pwd && id -u > /out/uid"
        env: {{X: "42", PATH: /bin}}
        workdir: /work/dir
        history: "RUN make"
  - name: unused
    base: {{image: "oci:/nonexistent/never-read:1"}}
base: {{image: "{base}"}}
steps:
  - run: "echo 'app:x:1000:1001::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1001:' >> /etc/group"
  - copy: {{src: ["*.txt", sub], dst: /data/, exclude: ["**/*.log", "b.txt"], owner: app}}
  - copy: {{from: builder, src: /out, dst: /result/}}
  - directory: {{dst: /home/app/work, owner: "app:app"}}
  - run: "touch made && id > id && echo $HOME > home"
    user: app
    workdir: /home/app/work
config:
  entrypoint: [/bin/sh]
"""


def _context(where: Path, base: str) -> Path:
    context = where / "ctx"
    (context / "sub").mkdir(parents=True)
    for name, text in (("a.txt", "a\n"), ("b.txt", "b\n"), ("sub/c.log", "c\n"), ("sub/d.txt", "d\n")):
        (context / name).write_text(text)
    (context / "spec.yaml").write_text(SPEC.format(base=base))
    return context / "spec.yaml"


def _files(image: str, where: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """name -> (uid, gid, content) of the flattened image."""
    repro("flatten", image, f"tar:{where / 'flat.tar'}")
    out = {}
    with tarfile.open(where / "flat.tar") as tar:
        for info in tar:
            data = tar.extractfile(info).read() if info.isreg() else None
            out[info.name] = (info.uid, info.gid, data)
    return out


@pytest.fixture
def hello_base(public_dir) -> str:
    spec = stage_hello(public_dir)
    build(spec, public_dir / "base")
    subprocess.run(["chmod", "-R", "a+rwX", str(public_dir)], check=True)
    return f"oci:{public_dir / 'base'}:hello:1.0"


def test_stages_and_step_options_as_root_and_as_a_user(public_dir, hello_base):
    spec = _context(public_dir, hello_base)
    subprocess.run(["chmod", "-R", "a+rwX", str(public_dir)], check=True)
    result = json.loads(build(spec, public_dir / "store-root", "--no-cache").stdout)
    image = f"oci:{public_dir / 'store-root'}:stages:latest"
    files = _files(image, public_dir)
    assert files["result/result"][2] == b"built-42\n"
    assert files["result/pwd"][2] == b"/work/dir\n"
    assert files["data/a.txt"][:2] == (1000, 1001) and "data/b.txt" not in files
    assert files["data/d.txt"][2] == b"d\n" and "data/c.log" not in files and "data/sub/d.txt" not in files
    assert files["home/app/work"][:2] == (1000, 1001)
    # the directories a copy or directory step makes on the way are its owner's, as buildah's COPY and WORKDIR
    assert files["data"][:2] == files["home"][:2] == files["home/app"][:2] == (1000, 1001)
    assert files["home/app/work/made"][:2] == (1000, 1001)
    assert files["home/app/work/id"][2].startswith(b"uid=1000(app) gid=1001(app)")
    assert files["home/app/work/home"][2] == b"/home/app\n"
    lock = json.loads((spec.parent / "spec.lock").read_text())
    assert lock["stages"] == {"builder": {"image": hello_base, "digest": lock["base"]["digest"]}}
    history = json.loads(repro("inspect", "--json", image).stdout)["history"]
    assert not any(h.get("created_by") == "RUN make" for h in history)  # the builder stage is not in the image

    user = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", REPRO, "build", str(spec),
                           "--store", str(public_dir / "store-user"), "--json", "--no-cache"],
                          capture_output=True, text=True, env={**os.environ, "HOME": str(public_dir)})
    assert user.returncode == 0, user.stderr
    assert digest_of(user) == result["digest"]


def test_step_local_cache_persists_and_stays_out_of_the_layer(tmp_path, hello_base):
    (tmp_path / "spec.yaml").write_text(f"""\
spec: 1
base: {{image: "{hello_base}"}}
steps:
  - run: "echo run >> /var/cache/c/log && wc -l < /var/cache/c/log > /count"
    cache: [/var/cache/c]
""")
    counts = []
    for _ in range(2):
        build(tmp_path / "spec.yaml", tmp_path / "store", "--no-cache")
        files = _files(f"oci:{tmp_path / 'store'}:{tmp_path.name}:latest", tmp_path)
        counts.append(files["count"][2].strip())
        assert "var/cache/c/log" not in files and "var/cache/c" in files
    assert counts == [b"1", b"2"]


@pytest.mark.parametrize("steps, expected", [
    ('base: {stage: nope}\n', "no stage named 'nope'"),
    ('base: {scratch: true}\nsteps:\n  - copy: {from: nope, src: /x, dst: /y}\n', "no stage named 'nope'"),
    ('base: {scratch: true}\nsteps:\n  - copy: {src: ["a", "b"], dst: /y}\n', "several sources need a directory"),
    ('base: {scratch: true}\nsteps:\n  - copy: {src: "*.none", dst: /y/}\n', "matches no file"),
    ('base: {scratch: true}\nsteps:\n  - file: {dst: /x, content: ""}\n    user: root\n', "for run steps only"),
    ('stages:\n  - {name: a, base: {stage: b}}\n  - {name: b, base: {stage: a}}\nbase: {stage: a}\n',
     "depends on itself"),
    ('base: {image: "BASE"}\nsteps:\n  - run: "true"\n    user: ghost\n', "'ghost' is not in the image's /etc/passwd"),
])
def test_bad_stage_specs(tmp_path, hello_base, steps, expected):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    (tmp_path / "spec.yaml").write_text("spec: 1\n" + steps.replace("BASE", hello_base))
    proc = repro("build", str(tmp_path / "spec.yaml"), "--store", str(tmp_path / "store"), check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("repro:")]
    assert len(errors) == 1 and expected in errors[0] and "spec.yaml:" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_shared_cached_layer_keeps_each_build_s_history(tmp_path):
    """Two specs that make the same layers with other history texts (as a Containerfile and a spec do):
    a store that built one gives the other its own digest still."""
    spec = stage_hello(tmp_path)
    text = spec.read_text()
    assert "    history: repro copy busybox -> /bin/busybox\n" in text
    other = spec.with_name("other.yaml")
    other.write_text(text.replace("history: repro copy busybox", "history: COPY busybox"))
    alone = digest_of(build(spec, tmp_path / "fresh"))
    assert digest_of(build(other, tmp_path / "shared")) != alone
    shared = json.loads(build(spec, tmp_path / "shared").stdout)
    assert all(step["cached"] for step in shared["steps"])
    assert shared["digest"] == alone


def test_copies_land_through_the_base_s_links_as_docker_s(tmp_path):
    """On a merged-/usr base (bin -> usr/bin) a file copied or written to /bin/ goes to usr/bin, and the
    link stays a link; an entry under a link that points out of the tree stays inside it."""

    busybox = Path("/bin/busybox").read_bytes()
    make_image(tmp_path / "base", "1", [[E("usr", kind="dir"), E("usr/bin", kind="dir"),
                                         E("usr/bin/busybox", busybox, mode=0o755),
                                         E("usr/bin/sh", kind="symlink", target="busybox"),
                                         E("bin", kind="symlink", target="usr/bin"),
                                         E("escape", kind="symlink", target="/../../outside")]],
               config={"Env": ["PATH=/bin"]})
    (tmp_path / "tool").write_text("a tool\n")
    (tmp_path / "tree" / "bin").mkdir(parents=True)
    (tmp_path / "tree" / "bin" / "inner").write_text("inner\n")
    (tmp_path / "spec.yaml").write_text(f"""\
spec: 1
name: links
base: {{image: "oci:{tmp_path / 'base'}:1"}}
steps:
  - copy: {{src: tool, dst: /bin/}}
  - copy: {{src: tree/, dst: /}}
  - file: {{dst: /bin/motd, content: "hi\\n"}}
  - file: {{dst: /escape/x, content: "stays inside\\n"}}
  - run: /bin/sh -c "/bin/busybox cat /bin/tool /bin/inner /bin/motd > /usr/bin/seen"
""")
    build(tmp_path / "spec.yaml", tmp_path / "store")
    repro("flatten", f"oci:{tmp_path / 'store'}:links:latest", f"rootfs:{tmp_path / 'root'}")
    root = tmp_path / "root"
    assert (root / "bin").is_symlink() and os.readlink(root / "bin") == "usr/bin"
    assert (root / "usr/bin/seen").read_text() == "a tool\ninner\nhi\n"
    assert (root / "outside/x").read_text() == "stays inside\n" and not (tmp_path.parent / "outside").exists()


def test_a_planted_link_in_the_store_s_step_caches_is_refused(tmp_path, hello_base):
    (tmp_path / "spec.yaml").write_text(f'spec: 1\nbase: {{image: "{hello_base}"}}\nsteps:\n'
                                        '  - run: "echo x > /var/cache/c/log"\n    cache: [/var/cache/c]\n')
    build(tmp_path / "spec.yaml", tmp_path / "store")
    [made] = (tmp_path / "store" / "cache-mounts").iterdir()
    shutil.rmtree(made)
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    made.symlink_to(sentinel)
    proc = repro("build", str(tmp_path / "spec.yaml"), "--store", str(tmp_path / "store"), "--no-cache", check=False)
    assert proc.returncode != 0 and "is not a directory" in proc.stderr
    assert sentinel.stat().st_uid == 0 and not list(sentinel.iterdir())
