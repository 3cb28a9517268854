"""Apptainer definition files: parsing and translation into a spec (fast, no builds), the bad-file table
through the CLI, then end-to-end builds (the catalog's images from def files, SIFs as Apptainer lists them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from builders import deffile
from repro.errors import ReproError
from tests.conftest import REPRO, public_directory, repro, run, subordinate_ids_for_nobody

CATALOG = Path(__file__).resolve().parents[1] / "catalog"
SD = "/.singularity.d"
HUB = "docker://registry-1.docker.io"


def write(tmp_path: Path, text: str, name: str = "app.def") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def translate(tmp_path: Path, text: str, build_args: dict | None = None, registry: str | None = None,
              epoch: int = 1700000000) -> dict:
    return deffile.to_dict(write(tmp_path, text), build_args, registry, epoch)[0]


def files_of(raw: dict) -> dict[str, dict]:
    return {s["file"]["dst"]: s["file"] for s in raw["steps"] if "file" in s}


def copies_of(raw: dict) -> list[dict]:
    return [s["copy"] for s in raw["steps"] if "copy" in s]


# --- parsing and translation ---------------------------------------------------------------------------

FULL = """\
# a comment before the header is not part of the stored definition
Bootstrap: docker
From: debian:bookworm   # a comment

%arguments
    greeting=hello

%files
    data.txt /opt/data.txt

%post
    echo "{{ greeting }}" > /etc/greeting

%environment
    export GREETING={{ greeting }}
    export PATH=/opt/bin:$PATH

%runscript
    echo "$GREETING" "$@"

%startscript
    exec sleep 1000

%test
    test -f /etc/greeting

%labels
    org.example.team science
    Author someone@example.org

%help
    Says hello.
"""


def test_a_full_def_file(tmp_path):
    (tmp_path / "data.txt").write_text("1 2 3\n")
    raw, lines = deffile.to_dict(write(tmp_path, FULL), None, None, 1700000000)
    assert raw["base"] == {"image": f"{HUB}/library/debian:bookworm"}
    kinds = [next(k for k in s if k in ("copy", "run", "file")) for s in raw["steps"]]
    assert kinds == ["copy", "run", "file", "file", "file", "file", "file", "file", "file"]
    assert raw["steps"][0]["copy"] == {"src": "data.txt", "dst": "/opt/data.txt"}
    post = raw["steps"][1]
    assert post["network"] is True and post["history"] == "apptainer %post"
    assert post["run"][-1] == '    echo "hello" > /etc/greeting\n\n'  # templated, as written
    assert 'exec /bin/sh -ex -c "$1" /.post.script' in post["run"][2]
    files = files_of(raw)
    assert list(files) == [f"{SD}/runscript.help", f"{SD}/labels.json", f"{SD}/Singularity",
                           f"{SD}/env/90-environment.sh", f"{SD}/startscript", f"{SD}/runscript", f"{SD}/test"]
    assert files[f"{SD}/runscript"] == {"dst": f"{SD}/runscript", "mode": "0755",
                                        "content": '#!/bin/sh\n\n    echo "$GREETING" "$@"\n\n\n'}
    assert files[f"{SD}/runscript.help"]["content"] == "    Says hello.\n\n"
    assert files[f"{SD}/runscript.help"]["mode"] == "0644"
    singularity = files[f"{SD}/Singularity"]["content"]
    assert singularity.startswith("Bootstrap: docker\nFrom: debian:bookworm") and "echo \"hello\"" in singularity
    env_script = files[f"{SD}/env/90-environment.sh"]["content"]
    assert env_script.startswith("#!/bin/sh\n")
    assert "\n    export GREETING=hello\n    export PATH=/opt/bin:$PATH\n" in env_script
    labels = json.loads(files[f"{SD}/labels.json"]["content"])
    assert labels["org.example.team"] == "science" and labels["Author"] == "someone@example.org"
    assert labels["org.label-schema.build-date"] == "Tuesday_14_November_2023_22:13:20_UTC"
    assert labels["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "docker"
    assert labels["org.label-schema.usage.singularity.deffile.from"] == "debian:bookworm"
    assert labels["org.label-schema.usage"] == f"{SD}/runscript.help"
    assert not any(key.endswith("apptainer.version") for key in labels), "no tool version in the image"
    config = raw["config"]
    assert config["labels"] == labels
    assert config["env"] == {"GREETING": "hello"}  # PATH uses $PATH: left to the script
    assert config["entrypoint"][:2] == ["/bin/sh", "-c"] and config["entrypoint"][3] == f"{SD}/runscript"
    assert config["entrypoint"][2].endswith(f'exec {SD}/runscript "$@"')
    assert raw["tests"] == [{"run": deffile.TEST}]
    assert lines["base"] == 2 and lines["steps[0]"] == 9 and lines["steps[1]"] == 11 and lines["tests"] == 24


def test_the_spec_builder_accepts_the_translation(tmp_path):
    (tmp_path / "data.txt").write_text("1 2 3\n")
    spec = deffile.load(write(tmp_path, FULL))
    assert spec.text == (tmp_path / "app.def").read_bytes()
    assert spec.base == ("image", f"{HUB}/library/debian:bookworm")
    assert [s.line for s in spec.steps][:2] == [9, 11]


@pytest.mark.parametrize(("header", "registry", "expected"), [
    ("From: debian:bookworm", None, f"{HUB}/library/debian:bookworm"),
    ("From: debian:bookworm", "127.0.0.1:5000", "docker://127.0.0.1:5000/debian:bookworm"),
    ("From: team/tool:1", None, f"{HUB}/team/tool:1"),
    ("From: quay.io/team/tool:1", "127.0.0.1:5000", "docker://quay.io/team/tool:1"),
    ("From: localhost:5000/tool@sha256:" + "a" * 64, None, "docker://localhost:5000/tool@sha256:" + "a" * 64),
    ("From: tool:1\nRegistry: reg.example.org\nNamespace: team", None, "docker://reg.example.org/team/tool:1"),
])
def test_docker_references(tmp_path, header, registry, expected):
    raw = translate(tmp_path, f"Bootstrap: docker\n{header}\n", registry=registry)
    assert raw["base"] == {"image": expected}


def test_local_bootstraps(tmp_path):
    (tmp_path / "sandbox").mkdir()
    (tmp_path / "image.sif").write_bytes(b"#!/usr/bin/env run-singularity\n".ljust(32, b"\0") + b"SIF_MAGIC\0")
    (tmp_path / "image.sqfs").write_bytes(b"hsqs" + bytes(60))
    cases = {
        "oci\nFrom: layout:1": f"oci:{tmp_path}/layout:1",
        f"oci\nFrom: {tmp_path}/elsewhere": f"oci:{tmp_path}/elsewhere",
        "oci-archive\nFrom: base.tar": f"oci-archive:{tmp_path}/base.tar",
        "docker-archive\nFrom: base.tar:team/base:1": f"docker-archive:{tmp_path}/base.tar:team/base:1",
        "docker-daemon\nFrom: team/base:1": "docker-daemon:team/base:1",
        "localimage\nFrom: image.sif": f"sif:{tmp_path}/image.sif",
        "localimage\nFrom: image.sqfs": f"squashfs:{tmp_path}/image.sqfs",
        "localimage\nFrom: sandbox": f"rootfs:{tmp_path}/sandbox",
    }
    for header, expected in cases.items():
        assert translate(tmp_path, f"Bootstrap: {header}\n")["base"] == {"image": expected}, header
    assert translate(tmp_path, "bootstrap: scratch\n")["base"] == {"scratch": True}


def test_header_rules(tmp_path):
    raw = translate(tmp_path, "BOOTSTRAP: docker\n# a comment\nfrom: debian:\\\nbookworm\nIncludeCmd: yes\n"
                              "OtherURL1: ignored\n")
    assert raw["base"] == {"image": f"{HUB}/library/debian:bookworm"}
    labels = raw["config"]["labels"]
    assert labels["org.label-schema.usage.singularity.deffile.includecmd"] == "yes"


def test_templating(tmp_path):
    text = ("Bootstrap: docker\nFrom: {{ image }}:{{version}}\n%arguments\n  image=debian\n  version=bookworm\n"
            "  full={{ image }}-{{ version }}\n%post\n  echo {{ full }}\n  # {{ not_defined }} in a comment\n"
            "  echo '#!{{ image }}'\n")
    raw = translate(tmp_path, text, {"version": "trixie"})
    assert raw["base"] == {"image": f"{HUB}/library/debian:trixie"}
    body = raw["steps"][0]["run"][-1]
    assert "echo debian-trixie\n" in body and "# {{ not_defined }} in a comment" in body
    assert "echo '#!debian'" in body
    singularity = files_of(raw)[f"{SD}/Singularity"]["content"]
    assert "From: debian:trixie" in singularity and "full={{ image }}-{{ version }}" not in singularity


def test_arguments_are_per_stage(tmp_path):
    text = ("Bootstrap: scratch\nStage: one\n%arguments\n  x=1\n%post\n  echo {{ x }}\n"
            "Bootstrap: scratch\n%post\n  echo {{ x }}\n")
    with pytest.raises(ReproError, match=r"app.def:9: \{\{ x \}\} is not defined"):
        translate(tmp_path, text)
    raw = translate(tmp_path, text, {"x": "2"})
    assert raw["stages"][0]["steps"][0]["run"][-1] == "  echo 2\n"
    assert raw["steps"][0]["run"][-1] == "  echo 2\n"


def test_files_placement(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print(1)\n")
    (tmp_path / "app" / "util.py").write_text("x = 1\n")
    (tmp_path / "app" / ".hidden.py").write_text("")
    (tmp_path / "my file.txt").write_text("spaces\n")
    text = ('Bootstrap: scratch\n%files\n  app/main.py\n  app /opt/\n  app /srv/app\n  app/*.py /code/\n'
            '  app/*.py\n  "my file.txt" /etc/\n  app/main.py /main.py  # the entry point\n  ./app/util.py lib/\n')
    copies = copies_of(translate(tmp_path, text))
    assert copies == [
        {"src": "app/main.py", "dst": "/app/main.py"},  # no destination: the same path under /
        {"src": "app", "dst": "/opt/app/"},  # into /opt/, as a directory (cp -r)
        {"src": "app", "dst": "/srv/app"},  # as /srv/app
        {"src": ["app/main.py", "app/util.py"], "dst": "/code/"},  # a glob: one step, no dot files
        {"src": ["app/main.py", "app/util.py"], "dst": "/app/"},
        {"src": "my file.txt", "dst": "/etc/"},
        {"src": "app/main.py", "dst": "/main.py"},
        {"src": "app/util.py", "dst": "/lib/"},
    ]


def test_multi_stage(tmp_path):
    text = ("Bootstrap: scratch\nStage: build\n%files\n  app.def /src/app.def\n%post\n  make\n\n"
            "Bootstrap: scratch\nStage: final\n%files from build\n  /src/app.def\n  /src/app.def /opt/\n"
            "  /src/* /everything/\n  /src/*.def\n%runscript\n  echo done\n")
    raw = translate(tmp_path, text)
    (stage,) = raw["stages"]
    assert stage["name"] == "build" and stage["base"] == {"scratch": True}
    assert [next(iter(s)) for s in stage["steps"]] == ["copy", "run"]
    assert copies_of(raw) == [
        {"src": "/src/app.def", "dst": "/src/app.def", "from": "build"},
        {"src": "/src/app.def", "dst": "/opt/app.def", "from": "build"},
        {"src": "/src/*", "dst": "/everything/", "from": "build"},
        {"src": "/src/*.def", "dst": "/src/", "from": "build"},
    ]
    assert not any(s["file"]["dst"].startswith(SD) for s in stage["steps"] if "file" in s)
    singularity = files_of(raw)[f"{SD}/Singularity"]["content"]
    assert singularity.count("Bootstrap: scratch") == 2  # the whole file, as Apptainer stores it
    spec = deffile.load(tmp_path / "app.def")
    assert list(spec.stages) == ["build"] and spec.line("stages[0].steps[1]") == 5


def test_unnamed_earlier_stages_get_a_name(tmp_path):
    raw = translate(tmp_path, "Bootstrap: scratch\n%post\n  true\nBootstrap: scratch\n%post\n  true\n")
    assert raw["stages"][0]["name"] == "stage0"


def test_post_arguments(tmp_path):
    run_ = translate(tmp_path, "Bootstrap: scratch\n%post -c /bin/bash -l\n  echo $BASH\n")["steps"][0]["run"]
    assert run_[-4:] == ["/bin/sh", "-ex", "-c", "/bin/bash -l /.post.script"]  # Apptainer's command
    assert run_[4] == "  echo $BASH\n" and "rm -f /.post.script" in run_[2]
    run_ = translate(tmp_path, "Bootstrap: scratch\n%post -u\n  true\n")["steps"][0]["run"]
    assert run_[-4:] == ["/bin/sh", "-ex", "-u", "/.post.script"]
    assert not any("run" in s for s in translate(tmp_path, "Bootstrap: scratch\n%post\n\n")["steps"])


def test_runscript_shebang_and_arguments(tmp_path):
    files = files_of(translate(tmp_path, "Bootstrap: scratch\n%runscript\n    #!/usr/bin/env python3\n"
                                         "    print('hi')\n%startscript -x\n  sleep 1\n"))
    assert files[f"{SD}/runscript"]["content"] == "#!/usr/bin/env python3\n\n    print('hi')\n\n"
    assert files[f"{SD}/startscript"]["content"] == "#!/bin/sh -x\n\n  sleep 1\n\n"


def test_repeated_sections_are_joined(tmp_path):
    raw = translate(tmp_path, "Bootstrap: scratch\n%post\n  echo 1\n%labels\n  a 1\n%post\n  echo 2\n"
                              "%labels\n  a 2\n  b two words\n")
    assert raw["steps"][0]["run"][-1] == "  echo 1\n  echo 2\n"
    assert {k: v for k, v in raw["config"]["labels"].items() if len(k) == 1} == {"a": "2", "b": "two words"}


def test_labels_cannot_change_build_labels(tmp_path, caplog):
    raw = translate(tmp_path, "Bootstrap: scratch\n%labels\n  org.label-schema.schema-version 9\n")
    assert raw["config"]["labels"]["org.label-schema.schema-version"] == "1.0"
    assert "app.def:3: label org.label-schema.schema-version is set by the build" in caplog.text


@pytest.mark.parametrize(("body", "expected"), [
    ("export A=1\nexport B='two words'\nexport C=\"three\"\nexport D=", {"A": "1", "B": "two words", "C": "three",
                                                                          "D": ""}),
    ("export A=1\nexport A=$A:2", {}),  # changed again by the script
    ("A=1\nexport A", {}),
    ("export P=/x:$PATH\nexport Q=\"$HOME\"\nexport R=`pwd`\nexport S=a\\ b", {}),
    ("# comment\n\n  export LANG=C.UTF-8  \nif true; then export X=1; fi", {"LANG": "C.UTF-8"}),
])
def test_simple_environment(body, expected):
    assert deffile.simple_environment(body) == expected


def test_build_args_that_are_not_used_are_reported(tmp_path, caplog):
    translate(tmp_path, "Bootstrap: scratch\n", {"unused": "1"})
    assert "--build-arg unused not used" in caplog.text


# --- the bad-file table, through the CLI ------------------------------------------------------------------

BAD = [
    ("unknown bootstrap", "Bootstrap: dockr\nFrom: debian\n", 1, "unknown Bootstrap: 'dockr'"),
    ("fetching bootstrap", "Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: http://x/\n", 1,
     "Bootstrap: debootstrap runs debootstrap on the host, which repro does not do"),
    ("library", "Bootstrap: library\nFrom: alpine\n", 1, "pulls from a Sylabs library"),
    ("yum", "# yum\nBootstrap: yum\n", 2, "Bootstrap: yum runs yum on the host"),
    ("buildkit", "Bootstrap: dockerfile\nFrom: .\n", 1, "builds a Dockerfile with BuildKit"),
    ("setup", "Bootstrap: scratch\n\n%setup\n  touch $APPTAINER_ROOTFS/x\n", 3,
     "%setup runs on the build host in Apptainer; repro never runs anything on the host"),
    ("pre", "Bootstrap: scratch\n%pre\n  true\n", 2, "%pre runs on the build host"),
    ("app", "Bootstrap: scratch\n%post\n  true\n%appinstall foo\n  true\n", 4, "%appinstall: SCIF apps"),
    ("unknown section", "Bootstrap: scratch\n%post\n  true\n%poste\n  true\n", 4, "unknown section %poste"),
    ("empty section name", "Bootstrap: scratch\n%\n", 2, "a % line with no section name"),
    ("unterminated quote", 'Bootstrap: scratch\n%files\n  "my file /x\n', 3, "%files: unterminated quote"),
    ("unterminated continuation", "Bootstrap: docker\nFrom: debian:\\\n%post\n  true\n", 2,
     "header 'from': unterminated continuation"),
    ("missing From", "Bootstrap: docker\n%post\n  true\n", 1, "Bootstrap: docker needs a From: header"),
    ("no Bootstrap", "From: debian\n%post\n  true\n", 1, "no Bootstrap: header"),
    ("before Bootstrap", "# comment\n\n%post\n  true\nBootstrap: scratch\n", 3, "no Bootstrap: header"),
    ("empty", "# nothing\n\n", 1, "the definition file is empty"),
    ("header without colon", "Bootstrap: scratch\nFrom debian\n", 2, "header line 'From debian' has no ':'"),
    ("unknown header", "Bootstrap: scratch\nColour: blue\n", 2, "unknown header keyword 'colour'"),
    ("undefined argument", "Bootstrap: scratch\n%post\n  echo {{ version }}\n", 3, "{{ version }} is not defined"),
    ("bad argument line", "Bootstrap: scratch\n%arguments\n  version\n", 3, "%arguments: 'version' is not name=value"),
    ("files from nowhere", "Bootstrap: scratch\n%files from build\n  /a /b\n", 2,
     "%files from build: no earlier stage has that name"),
    ("files bad args", "Bootstrap: scratch\n%files to build\n  /a /b\n", 2, "expected nothing or 'from STAGE'"),
    ("files missing", "Bootstrap: scratch\n%files\n  nothere.txt /x\n", 3, "%files: nothere.txt does not exist"),
    ("files glob", "Bootstrap: scratch\n%files\n  *.nothing /x/\n", 3, "matches no file"),
    ("files absolute", "Bootstrap: scratch\n%files\n  /etc/passwd /x\n", 3, "absolute path on the build host"),
    ("files outside", "Bootstrap: scratch\n%files\n  ../x /x\n", 3, "outside the build context"),
    ("files three words", "Bootstrap: scratch\n%files\n  a b c\n", 3, "more than a source and a destination"),
    ("labels from post", "Bootstrap: scratch\n%post\n  echo a b >> $APPTAINER_LABELS\n", 3,
     "%post writes labels to $APPTAINER_LABELS"),
    ("duplicate stage", "Bootstrap: scratch\nStage: a\nBootstrap: scratch\nStage: a\n", 4, "Stage: a is named twice"),
    ("localimage missing", "Bootstrap: localimage\nFrom: nothere.sif\n", 2, "From: nothere.sif: cannot be read"),
    ("fingerprints", "Bootstrap: localimage\nFrom: x.sif\nFingerprints: 12AB\n", 3,
     "Fingerprints: repro does not verify SIF signatures"),
]


@pytest.mark.parametrize(("case", "text", "line", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_def_files(tmp_path, case, text, line, message):
    path = write(tmp_path, text)
    proc = repro("build", str(path), "--store", str(tmp_path / "store"), check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"repro: {path}:{line}: "), lines[0]
    assert message in lines[0], lines[0]
    assert not (tmp_path / "store").exists(), "nothing is built from a bad file"


def test_cli_refuses_target_for_a_def_file(tmp_path):
    path = write(tmp_path, "Bootstrap: scratch\n")
    proc = repro("build", str(path), "--target", "x", check=False)
    assert proc.returncode == 2 and "--target is for Containerfiles" in proc.stderr


def test_a_missing_def_file(tmp_path):
    proc = repro("build", str(tmp_path / "nothere.def"), check=False)
    assert proc.returncode == 2 and "definition file not found" in proc.stderr


# --- end to end -----------------------------------------------------------------------------------------

EPOCH = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
SIF_TYPES = ["Def.FILE", "JSON.Generic", "JSON.Generic", "FS (Squashfs/*System/amd64)"]


def staged(name: str, where: Path) -> Path:
    """A copy of catalog/NAME (busybox beside hello's def, as `make catalog` puts it); its app.def."""
    target = where / name
    shutil.copytree(CATALOG / name, target, ignore=shutil.ignore_patterns("*.lock", "busybox"))
    if name == "hello":
        shutil.copy2("/bin/busybox", target / "busybox")
    return target / "app.def"


def build(definition: Path, store: Path, *extra: str) -> dict:
    proc = repro("build", str(definition), "--store", str(store), "--json", *extra, env=EPOCH)
    return json.loads(proc.stdout)


def write_sif(ref: str, sif: Path) -> bytes:
    repro("convert", ref, f"sif:{sif}", env=EPOCH)
    return sif.read_bytes()


def sif_listing(sif: Path) -> list[str]:
    listing = run("siftool", "list", str(sif)).stdout
    return [line.split("|")[-1].strip() for line in listing.splitlines() if line[:1].isdigit()]


def unsquash(sif: Path, root: Path) -> Path:
    partition = root.with_suffix(".sqfs")
    with open(partition, "wb") as out:
        subprocess.run(["siftool", "dump", "4", str(sif)], stdout=out, check=True)
    run("unsquashfs", "-q", "-d", str(root), str(partition))
    return root


def in_tree(root: Path, *argv: str) -> subprocess.CompletedProcess:
    """A command in the unpacked SIF tree with a clean environment, as Apptainer starts its actions."""
    return subprocess.run(["/usr/sbin/chroot", str(root), *argv], capture_output=True, text=True,
                          env={"PATH": "/bin:/usr/bin", "HOME": "/root"}, check=True, timeout=600)


@pytest.fixture(scope="module")
def hello(tmp_path_factory) -> dict:
    """catalog/hello/app.def built twice, each in an empty store without the cache, each to a SIF."""
    base = tmp_path_factory.mktemp("hello-def")
    definition = staged("hello", base)
    out: dict = {"def": definition, "builds": [], "sifs": []}
    for n in (1, 2):
        result = build(definition, base / f"store{n}", "--no-cache", "--test", "-o", f"sif:{base}/hello{n}.sif")
        out["builds"].append(result)
        out["sifs"].append(base / f"hello{n}.sif")
    out["ref"] = f"oci:{base}/store1:hello:latest"
    return out


def test_hello_def_is_reproducible(hello):
    first, second = hello["builds"]
    assert first["digest"] == second["digest"]
    assert first["tests"] == [{"run": deffile.TEST, "exit": 0, "passed": True}]
    assert hello["sifs"][0].read_bytes() == hello["sifs"][1].read_bytes()


def test_hello_sif_lists_like_apptainers(hello, tmp_path):
    sif = hello["sifs"][0]
    assert sif_listing(sif) == SIF_TYPES
    text = hello["def"].read_text()
    assert run("siftool", "dump", "1", str(sif)).stdout == text[text.index("Bootstrap:"):]
    metadata = json.loads(run("siftool", "dump", "2", str(sif)).stdout)["data"]["attributes"]
    assert metadata["runscript"] == "#!/bin/sh\n\n    cat /etc/motd"
    assert metadata["labels"]["org.opencontainers.image.title"] == "hello"
    assert metadata["labels"]["org.label-schema.build-date"] == "Tuesday_14_November_2023_22:13:20_UTC"
    assert metadata["deffile"] == text[text.index("Bootstrap:"):].rstrip("\n")
    assert "/.singularity.d/env/90-environment.sh" in metadata["environment"] and "test" in metadata
    assert metadata["helpfile"].strip().startswith("Prints the message of the day.")
    root = unsquash(sif, tmp_path / "root")
    assert (root / ".singularity.d" / "Singularity").read_text() == text[text.index("Bootstrap:"):]
    assert json.loads((root / ".singularity.d" / "labels.json").read_text()) == metadata["labels"]
    assert in_tree(root, "/bin/sh", "/.singularity.d/actions/run").stdout == "hello from a reproducible image\n"
    assert in_tree(root, "/bin/sh", "/.singularity.d/actions/exec", "/bin/sh", "-c",
                   'echo "$GREETING"').stdout == "hello\n"
    in_tree(root, "/bin/sh", "/.singularity.d/actions/test")
    assert in_tree(root, "/bin/sh", "/.singularity.d/runscript").stdout == "hello from a reproducible image\n"
    assert (root / "singularity").readlink() == Path(".singularity.d/runscript")


def test_hello_def_runs_like_the_hello_spec(hello):
    """The OCI image: the runscript is the entrypoint, %environment's GREETING is in Env; the spec's tests pass."""
    assert repro("run", hello["ref"]).stdout == "hello from a reproducible image\n"
    info = json.loads(repro("inspect", "--json", hello["ref"]).stdout)
    assert "GREETING=hello" in info["env"] and info["labels"]["org.opencontainers.image.title"] == "hello"

    for test in yaml.safe_load((CATALOG / "hello" / "spec.yaml").read_text())["tests"]:
        out = repro("run", hello["ref"], "--", "/bin/sh", "-c", test["run"]).stdout
        assert test["output"] in out


def test_build_check_of_a_def_file(tmp_path):
    definition = staged("hello", tmp_path)
    proc = repro("build", str(definition), "--check", "--store", str(tmp_path / "store"), env=EPOCH)
    assert proc.stdout.startswith("reproducible: sha256:")
    again = build(definition, tmp_path / "store", "--test")  # --store keeps the check's first build
    assert all(step["cached"] for step in again["steps"]) and again["digest"] == proc.stdout.split()[1]
    assert again["tests"][0]["passed"]


def test_multi_stage_def(tmp_path):
    """%files from an earlier stage; only the last stage is the image, its SIF has the whole def file."""
    shutil.copy2("/bin/busybox", tmp_path / "busybox")
    definition = write(tmp_path, "Bootstrap: scratch\nStage: build\n%files\n  busybox /bin/sh\n%post\n"
                                 "  mkdir -p /out && echo built in stage one > /out/result.txt\n"
                                 "  echo not copied > /out/other.txt\n\n"
                                 "Bootstrap: scratch\n%files from build\n  /bin/sh\n  /out/result.txt /srv/\n"
                                 "%runscript\n  cat /srv/result.txt\n")
    result = build(definition, tmp_path / "store", "-o", f"rootfs:{tmp_path}/tree", "-o", f"sif:{tmp_path}/m.sif")
    tree = tmp_path / "tree"
    assert (tree / "srv" / "result.txt").read_text() == "built in stage one\n"
    assert not (tree / "out").exists()
    assert run("siftool", "dump", "1", str(tmp_path / "m.sif")).stdout == definition.read_text()
    assert repro("run", f"oci:{tmp_path}/store:{tmp_path.name}:latest").stdout == "built in stage one\n"
    assert result["digest"].startswith("sha256:")


def test_docker_bootstrap_from_a_registry(tmp_path, registry, busybox_layout):
    """Bootstrap: docker with --registry: the base comes from the registry; no %runscript keeps the base's
    ENTRYPOINT and CMD, which the SIF's runscript runs (as Apptainer's OCI bootstrap does)."""
    repro("convert", f"oci:{busybox_layout}:1", f"docker://{registry.host}/team/busybox:1")
    definition = write(tmp_path, "Bootstrap: docker\nFrom: team/busybox:1\n%post\n  echo from post > /etc/motd\n"
                                 "  echo 'export FROM_POST=yes' >> $APPTAINER_ENVIRONMENT\n")
    build(definition, tmp_path / "store", "--registry", registry.host, "-o", f"sif:{tmp_path}/d.sif")
    info = json.loads(repro("inspect", "--json", f"oci:{tmp_path}/store:{tmp_path.name}:latest").stdout)
    assert info["entrypoint"] == ["/bin/sh", "-c"] and info["cmd"] == ["cat /etc/motd"]
    assert info["labels"]["org.label-schema.usage.singularity.deffile.from"] == "team/busybox:1"
    root = unsquash(tmp_path / "d.sif", tmp_path / "root")
    assert in_tree(root, "/bin/sh", "/.singularity.d/actions/run").stdout == "from post\n"
    assert in_tree(root, "/bin/sh", "/.singularity.d/actions/exec", "/bin/sh", "-c",
                   'echo "$FROM_POST $GREETING"').stdout == "yes hi there\n"


# The Debian images of the catalog, from their def files: %post installs with apt on a Debian bookworm
# image the session builds anyway (conftest's catalog_images: python-science, minbase with python3), given
# as --build-arg base=DIR:TAG. Each is built with --check as root (runc), and once as a plain user who has
# subordinate ids, as Debian's adduser gives (bwrap in a user namespace of them for root steps, see
# repro/run/executors/subids.py: dpkg gives files to _apt, adm, _ssh; apt's sandbox user, builders/apt_sandbox.py),
# all at once; both give one digest. These run in `make test-slow` (conftest marks users of debian_defs).
DEBIAN_DEFS = {"python-science": "integral of exp(-x^2) over the real line = 1.7724538509",
               "openmpi": "hello from rank 0 of 2", "r-stats": "slope = 3.9324"}
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
AS_A_PLAIN_USER = tuple(DEBIAN_DEFS)


def _checked(proc: subprocess.Popen, what: str) -> str:
    """The digest a `repro build --check` (or `--json`) reported."""
    stdout, stderr = proc.communicate(timeout=3600)
    assert proc.returncode == 0, f"{what}: {stderr[-3000:]}"
    if stdout.startswith("{"):
        return json.loads(stdout)["digest"]
    assert stdout.startswith("reproducible: sha256:"), f"{what}: {stdout}"
    return stdout.split()[1]


@pytest.fixture(scope="module")
def debian_defs(catalog_images) -> dict:
    """Per def: `repro build --check` as root, keeping its first build in a store (built again with --test
    from the cache), and one build as nobody; the base copied where nobody can read it."""
    with public_directory("repro-defs-") as public, subordinate_ids_for_nobody():
        base = public / "base"
        repro("convert", catalog_images["python-science"]["ref"], f"oci:{base}:1")
        argument = f"base={base}:1"
        defs = {("root", name): staged(name, public / "root") for name in DEBIAN_DEFS}
        defs.update({("user", name): staged(name, public / "user") for name in AS_A_PLAIN_USER})
        subprocess.run(["chmod", "-R", "a+rwX", str(public)], check=True)
        env = {**EPOCH, "HOME": str(public)}
        started = {}
        for (who, name), definition in defs.items():
            argv = [REPRO, "build", str(definition), "--check" if who == "root" else "--json",
                    "--store", str(public / who / f"{name}-store"), "--build-arg", argument]
            started[who, name] = subprocess.Popen([*NOBODY, *argv] if who == "user" else argv, env=env,
                                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        digests = {key: _checked(proc, f"{key[0]}: {key[1]}") for key, proc in started.items()}
        out = {}
        for name in DEBIAN_DEFS:
            store = public / "root" / f"{name}-store"
            result = build(defs["root", name], store, "--test", "--build-arg", argument)  # from the cache
            out[name] = {**result, "def": defs["root", name], "argument": argument,
                         "root": digests["root", name], "user": digests.get(("user", name)),
                         "ref": f"oci:{store}:{name}:latest",
                         "user_ref": f"oci:{public / 'user' / f'{name}-store'}:{name}:latest"}
        yield out


@pytest.mark.parametrize("name", list(DEBIAN_DEFS))
def test_debian_def_builds_and_passes_its_tests(debian_defs, name):
    result = debian_defs[name]
    # every step from the cache the first build of root's --check left (a base image is read, never cached):
    # the /.singularity.d file steps after %post too, whose entries record what %post left out (apt's lists)
    assert all(step["cached"] for step in result["steps"] if not step["title"].startswith("base "))
    assert result["digest"] == result["root"]  # built again in the store of root's --check: the same image
    assert result["tests"] == [{"run": deffile.TEST, "exit": 0, "passed": True}]
    out = repro("run", result["ref"]).stdout  # the runscript, as the entrypoint
    assert DEBIAN_DEFS[name] in out


@pytest.mark.parametrize("name", AS_A_PLAIN_USER)
def test_debian_def_gives_one_image_and_sif_as_root_and_as_a_plain_user(debian_defs, name, tmp_path):
    """--check as root (two builds from nothing: apt) and a build as nobody: one digest; the same SIF
    bytes from root's image and the plain user's."""
    result = debian_defs[name]
    assert result["user"] == result["root"]
    one = write_sif(result["ref"], tmp_path / "root.sif")
    assert write_sif(result["user_ref"], tmp_path / "user.sif") == one
    assert sif_listing(tmp_path / "root.sif") == SIF_TYPES
    stored = run("siftool", "dump", "1", str(tmp_path / "root.sif")).stdout
    assert f"From: {result['argument'].partition('=')[2]}\n" in stored and "{{ base }}" not in stored
