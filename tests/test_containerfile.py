"""Containerfiles and Dockerfiles (builders/containerfile.py).

- the parser, the word expansion and the translation to spec dicts, table-driven, without builds;
- files repro refuses: through `repro build`, each one line FILE:LINE and exit 2;
- end-to-end builds: heredocs, ONBUILD, ADD of a URL, the catalog's four images from a Containerfile
  beside their spec.yaml, each `repro build --check` reproducible;
- a cross-check against buildah (Debian's 1.28: no heredocs): the same file trees and config fields.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest
import yaml

from builders import containerfile as cf
from builders.containerfile import BaseInfo, Ignore, _Lexer, ignore_patterns, parse, translate
from repro.image import Platform
from repro.refs import open_image
from tests.conftest import REPRO, busybox_layers, repro, run
from tests.imagekit import E, make_image
from tests.test_crosscheck import tree_of

CATALOG = Path(__file__).resolve().parents[1] / "catalog"
BASE_ENV = {"PATH": "/bin", "BASE": "from-base"}


def stub_base(triggers: list[str] | None = None, workdir: str = "/srv", user: str = ""):
    """A base reader that answers without an image: the config fields the translation reads."""
    seen = []

    def read(reference: str) -> BaseInfo:
        seen.append(reference)
        return BaseInfo(dict(BASE_ENV), workdir, user, ["/bin/sh", "-c"], list(triggers or []), {})

    read.seen = seen  # type: ignore[attr-defined]
    return read


def spec_of(tmp_path: Path, text: str, files: dict[str, str] | None = None, base=None, **kwargs) -> dict:
    for name, content in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    path = tmp_path / "Containerfile"
    path.write_text(text)
    raw, _lines = translate(path, base_reader=base or stub_base(), **kwargs)
    return raw


# --- the parser -------------------------------------------------------------------------------------------

PARSE = [
    ("comments and blank lines", "# a comment\n\nFROM scratch\n  # indented comment\nRUN true\n",
     [("FROM", "scratch", 3), ("RUN", "true", 5)]),
    ("continuation keeps the next line's blanks", "FROM scratch\nRUN echo a \\\n  b\n",
     [("FROM", "scratch", 1), ("RUN", "echo a   b", 2)]),
    ("comment and empty lines inside a continuation", "FROM scratch\nRUN a \\\n# inside\n\n b\nUSER x\n",
     [("FROM", "scratch", 1), ("RUN", "a  b", 2), ("USER", "x", 6)]),
    ("blanks after the escape still continue", "FROM scratch\nRUN a \\  \n b\n",
     [("FROM", "scratch", 1), ("RUN", "a  b", 2)]),
    ("escape directive: backtick", "# escape=`\nFROM scratch\nRUN dir c:\\ `\n  /b\n",
     [("FROM", "scratch", 2), ("RUN", "dir c:\\   /b", 3)]),
    ("keywords in any case", "from scratch\nrun true\n", [("FROM", "scratch", 1), ("RUN", "true", 2)]),
    ("a directive after an instruction is a comment", "FROM scratch\n# escape=`\nRUN a \\\n b\n",
     [("FROM", "scratch", 1), ("RUN", "a  b", 3)]),
    ("CRLF line ends and a byte order mark", "\ufeffFROM scratch\r\nRUN a \\\r\n b\r\n",
     [("FROM", "scratch", 1), ("RUN", "a  b", 2)]),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in PARSE], ids=[c[0] for c in PARSE])
def test_parse(text, expected):
    parsed = parse(text)
    assert [(i.keyword, i.rest, i.line) for i in parsed.instructions] == expected


HEREDOCS = [
    ("plain", "RUN <<EOF\necho $A\nEOF\n", [("EOF", "echo $A\n", True, False)]),
    ("quoted name: no expansion", 'COPY <<"EOT" /x\n$A\nEOT\n', [("EOT", "$A\n", False, False)]),
    ("single-quoted", "COPY <<'EOT' /x\n$A\nEOT\n", [("EOT", "$A\n", False, False)]),
    ("<<- strips tabs, also of the end line", "RUN <<-EOF\n\techo a\n\t\techo b\n\tEOF\n",
     [("EOF", "\techo a\n\t\techo b\n", True, True)]),
    ("two heredocs in order", "RUN cat <<A >/a && cat <<B >/b\na\nA\nb\nB\n",
     [("A", "a\n", True, False), ("B", "b\n", True, False)]),
    ("with flags first", "RUN --network=none <<EOF\ntrue\nEOF\n", [("EOF", "true\n", True, False)]),
    ("not in quotes", "RUN echo '<<EOF'\n", []),
    ("not for other instructions", "LABEL a=<<EOF\n", []),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in HEREDOCS], ids=[c[0] for c in HEREDOCS])
def test_heredocs_are_read(text, expected):
    parsed = parse("FROM scratch\n" + text + "USER after\n")
    docs = parsed.instructions[1].heredocs
    assert [(d.name, d.body, d.expand, d.chomp) for d in docs] == expected
    assert parsed.instructions[-1].keyword == "USER"
    assert parsed.instructions[-1].line == 2 + text.count("\n")


def test_chomped_heredoc_content():
    doc = parse("FROM scratch\nRUN <<-EOF\n\techo a\n\t\techo b\n\tEOF\n").instructions[1].heredocs[0]
    assert doc.content == "echo a\necho b\n"


ENV = {"A": "x y", "EMPTY": "", "P": "/bin"}
WORDS = [
    ("$A", "x y", ["x", "y"]),
    ("${A}", "x y", ["x", "y"]),
    ('"$A"', "x y", ["x y"]),
    ("'$A'", "$A", ["$A"]),
    ("\\$A", "$A", ["$A"]),
    ("${EMPTY:-d}", "d", ["d"]),
    ("${EMPTY-d}", "", []),
    ("${UNSET-d}", "d", ["d"]),
    ("${UNSET:-${P}/x}", "/bin/x", ["/bin/x"]),
    ("${A:+alt}", "alt", ["alt"]),
    ("${EMPTY:+alt}", "", []),
    ("${EMPTY+alt}", "alt", ["alt"]),
    ("${UNSET:+alt}", "", []),
    ("a\\ b", "a b", ["a b"]),
    ('"a\\"b\\$P"', 'a"b$P', ['a"b$P']),
    ('"a\\nb"', "a\\nb", ["a\\nb"]),
    ("pre${P}post", "pre/binpost", ["pre/binpost"]),
    ("$ $- a$", "$  a$", ["$", "a$"]),
    ("$1", "", []),
    ("'a b' \"c d\"", "a b c d", ["a b", "c d"]),
]


@pytest.mark.parametrize("word, single, split", WORDS, ids=[w[0] for w in WORDS])
def test_expansion(word, single, split):
    lexer = _Lexer()
    assert lexer.word(word, ENV.get) == single
    assert lexer.words(word, ENV.get) == split


def test_expansion_with_a_backtick_escape():
    lexer = _Lexer("`")
    assert lexer.word("c:\\dir `$P", ENV.get) == "c:\\dir $P"


@pytest.mark.parametrize("word", ["${", "${A", "${}", "${A:}", "${A%x}", '"open', "'open", "${UNSET:?needed}"])
def test_expansion_errors(word):
    with pytest.raises(cf._Failure):
        _Lexer().word(word, ENV.get)


def test_expansion_is_bounded():
    with pytest.raises(cf._Failure, match="more than"):
        _Lexer().word("$A" * (cf.MAX_WORD // 2), ENV.get)
    with pytest.raises(cf._Failure, match="nested"):
        _Lexer().word("${U:-" * 100 + "}" * 100, ENV.get)


IGNORE = [
    ("*.log", "a.log", True), ("*.log", "d/a.log", False), ("**/*.log", "d/e/a.log", True),
    ("docs", "docs/deep/file", True), ("docs", "docs2", False), ("/abs", "abs", True),
    ("d/*/x", "d/e/x", True), ("d/?", "d/ab", False), ("[ab].txt", "b.txt", True),
    ("*\n!keep.log", "keep.log", False), ("*\n!keep.log", "x.log", True),
    ("**", "anything/at/all", True), ("# comment\n a.txt ", "a.txt", True), ("./x/../y", "y", True),
]


@pytest.mark.parametrize("patterns, path, excluded", IGNORE, ids=[f"{c[0]!r}-{c[1]}" for c in IGNORE])
def test_ignore_patterns(patterns, path, excluded):
    assert Ignore(ignore_patterns(patterns)).excluded(path) is excluded


@pytest.mark.parametrize("name, yes", [
    ("Containerfile", True), ("Dockerfile", True), ("dockerfile", True), ("app.Dockerfile", True),
    ("Dockerfile.prod", True), ("web.containerfile", True), ("spec.yaml", False), ("app.def", False),
    ("Dockerfiles.txt", False),
])
def test_containerfile_names(name, yes):
    assert cf.is_containerfile(name) is yes


@pytest.mark.parametrize("text, registry, expected", [
    ("debian:bookworm", None, "docker://registry-1.docker.io/library/debian:bookworm"),
    ("debian", None, "docker://registry-1.docker.io/library/debian:latest"),
    ("team/tool:1", None, "docker://registry-1.docker.io/team/tool:1"),
    ("docker.io/library/debian:12", None, "docker://registry-1.docker.io/library/debian:12"),
    ("debian:bookworm", "127.0.0.1:5000", "docker://127.0.0.1:5000/debian:bookworm"),
    ("localhost:5000/x/y", None, "docker://localhost:5000/x/y:latest"),
    ("quay.io/a/b@sha256:" + "0" * 64, None, "docker://quay.io/a/b@sha256:" + "0" * 64),
    ("oci:/layouts/base:1", "127.0.0.1:5000", "oci:/layouts/base:1"),
    ("docker-archive:/x.tar", None, "docker-archive:/x.tar"),
    ("docker://127.0.0.1:5000/a:1", None, "docker://127.0.0.1:5000/a:1"),
])
def test_from_references(text, registry, expected):
    assert cf.resolve_reference(text, registry) == expected


# --- the translation --------------------------------------------------------------------------------------


def test_env_and_label_forms(tmp_path):
    raw = spec_of(tmp_path, 'FROM oci:/b:1\nENV A=1 B="two words" C=3\\ 4\nENV LEGACY value with blanks\n'
                  'ENV D=$A-${BASE} E=$D\nLABEL "k 1"=v1 k2="${A}x"\nMAINTAINER Jane <j@x>\n')
    assert raw["config"]["env"] == {"A": "1", "B": "two words", "C": "3 4", "LEGACY": "value with blanks",
                                    "D": "1-from-base", "E": ""}
    assert raw["config"]["labels"] == {"k 1": "v1", "k2": "1x", "maintainer": "Jane <j@x>"}
    assert raw["steps"] == []


def test_env_in_one_instruction_sees_the_values_before_it(tmp_path):
    raw = spec_of(tmp_path, "FROM scratch\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n")
    assert raw["config"]["env"] == {"abc": "bye", "def": "hello", "ghi": "bye"}


ARGS = ("ARG TAG=1\nARG UNUSED=u\nFROM oci:/b:${TAG} AS first\nRUN echo $TAG\nARG TAG\nARG LOCAL=l-${TAG}\n"
        "ENV FROM_ENV=$LOCAL\nRUN echo $TAG\nFROM oci:/other:${TAG}\nRUN echo\n")


def test_global_args_are_seen_by_from_only(tmp_path):
    base = stub_base()
    raw = spec_of(tmp_path, ARGS, base=base, build_args={"TAG": "2"})
    assert base.seen == ["oci:/other:2"] and raw["base"] == {"image": "oci:/other:2"}
    assert "stages" not in raw  # the first stage is not needed
    first = spec_of(tmp_path, ARGS, target="first")
    assert first["steps"][0]["env"] == BASE_ENV  # TAG is not declared in the stage yet
    step = first["steps"][1]
    assert step["env"] == {**BASE_ENV, "FROM_ENV": "l-1", "TAG": "1", "LOCAL": "l-1"}
    assert step["history"] == "|2 LOCAL=l-1 TAG=1 /bin/sh -c echo $TAG"


def test_build_arg_wins_over_defaults_and_env_wins_over_arg(tmp_path):
    raw = spec_of(tmp_path, "FROM scratch\nARG V=default\nARG W\nENV W=from-env\nRUN x\n",
                  build_args={"V": "given", "W": "given-w"})
    step = raw["steps"][0]
    assert step["env"]["V"] == "given" and step["env"]["W"] == "from-env"
    assert step["history"].startswith("|2 V=given W=from-env /bin/sh -c x")


def test_proxy_args_reach_run_without_a_declaration_and_stay_out_of_history(tmp_path):
    raw = spec_of(tmp_path, "FROM scratch\nRUN x\n", build_args={"https_proxy": "http://p:3128"})
    assert raw["steps"][0]["env"]["https_proxy"] == "http://p:3128"
    assert raw["steps"][0]["history"] == "/bin/sh -c x"


def test_predefined_platform_args(tmp_path):
    raw = spec_of(tmp_path, "FROM scratch\nARG TARGETARCH\nENV ARCH=$TARGETARCH\n")
    assert raw["config"]["env"]["ARCH"] == Platform.host().architecture


def test_platform_args_and_from_platform_follow_the_platform_built(tmp_path):
    seen = []

    def read(reference: str, platform: str | None = None) -> BaseInfo:
        seen.append(platform)
        return BaseInfo(dict(BASE_ENV), "/", "", ["/bin/sh", "-c"], [], {})

    text = ("FROM --platform=$BUILDPLATFORM base AS build\nARG TARGETPLATFORM TARGETARCH TARGETVARIANT BUILDARCH\n"
            "ENV T=$TARGETPLATFORM A=$TARGETARCH V=$TARGETVARIANT B=$BUILDARCH\n"
            "FROM --platform=linux/s390x base AS other\n"
            "FROM other AS child\n"
            "FROM base\nCOPY --from=build /x /x\nCOPY --from=child /y /y\n")
    host = Platform.host()
    raw = spec_of(tmp_path, text, base=read, platform=Platform.parse("linux/arm/v7"))
    stages = {s["name"]: s for s in raw["stages"]}
    assert stages["build"]["platform"] == str(host)  # BUILDPLATFORM: this machine
    assert stages["build"]["config"]["env"] == {"T": "linux/arm/v7", "A": "arm", "V": "v7",
                                                "B": host.architecture}
    assert stages["other"]["platform"] == stages["child"]["platform"] == "linux/s390x"  # FROM a stage: its platform
    assert "platform" not in raw  # the last stage is for the platform built
    assert seen == [str(host), "linux/s390x", "linux/arm/v7"]  # each base's config for its stage's platform
    assert spec_of(tmp_path, "FROM --platform=$TARGETPLATFORM scratch\n")["platform"] == str(host)


def test_source_date_epoch_build_arg(tmp_path):
    raw = spec_of(tmp_path, "FROM scratch\n", build_args={"SOURCE_DATE_EPOCH": "1700000000"})
    assert raw["source_date_epoch"] == 1700000000


def test_run_forms_shell_and_network(tmp_path):
    raw = spec_of(tmp_path, 'FROM oci:/b:1\nRUN echo "$HOME" && true\nRUN ["/bin/echo", "a b"]\n'
                  'SHELL ["/bin/bash", "-eu", "-c"]\nRUN --network=none echo hi\nUSER 1000:1000\n'
                  "RUN --mount=type=cache,target=/root/.cache --mount=type=cache,id=x,target=rel make\n")
    one, two, three, four = raw["steps"]
    assert one["run"] == ["/bin/sh", "-c", 'echo "$HOME" && true'] and one["network"] is True
    assert one["workdir"] == "/srv" and "user" not in one
    assert one["history"] == '/bin/sh -c echo "$HOME" && true'
    assert two["run"] == ["/bin/echo", "a b"] and two["history"] == '/bin/sh -c ["/bin/echo", "a b"]'
    assert three["run"] == ["/bin/bash", "-eu", "-c", "echo hi"] and three["network"] is False
    assert three["history"] == "/bin/bash -eu -c --network=none echo hi"
    assert four["user"] == "1000:1000" and four["cache"] == ["/root/.cache", "/srv/rel"]


def test_run_heredocs(tmp_path):
    raw = spec_of(tmp_path, "FROM scratch\nRUN <<EOF\necho $A\nEOF\nRUN <<-EOF\n\techo tab\n\tEOF\n"
                  "RUN python3 <<'PY' > /out\nprint(1)\nPY\nRUN <<EOF\n#!/usr/bin/env python3\nprint(2)\nEOF\n")
    plain, chomped, fed, shebang = (s["run"] for s in raw["steps"])
    assert plain == ["/bin/sh", "-c", "echo $A\n"]
    assert chomped == ["/bin/sh", "-c", "echo tab\n"]
    assert fed == ["/bin/sh", "-c", "python3 <<'PY' > /out\nprint(1)\nPY"]
    assert shebang[:2] == ["/bin/sh", "-c"]
    assert shebang[2].startswith("exec '/usr/bin/env' 'python3' /proc/self/fd/3 3<<'REPRO_HEREDOC'\n#!/usr/bin/env")
    assert raw["steps"][0]["history"] == "/bin/sh -c <<EOF\necho $A\nEOF"


def test_copy_heredocs_make_files(tmp_path):
    raw = spec_of(tmp_path, 'FROM scratch\nENV A=1\nCOPY <<EOF /etc/a.conf\nx=$A "q" \\$A\nEOF\n'
                  "COPY --chmod=0755 --chown=1:2 <<'EOF' <<EOT /bin/\n#!/bin/sh\necho $A\nEOF\nt\nEOT\n")
    first, second, third = raw["steps"]
    assert first["file"] == {"dst": "/etc/a.conf", "content": 'x=1 "q" $A\n', "mode": "0644", "owner": "0:0"}
    assert second["file"] == {"dst": "/bin/EOF", "content": "#!/bin/sh\necho $A\n", "mode": "0755", "owner": "1:2"}
    assert third["file"]["dst"] == "/bin/EOT"
    digest = hashlib.sha256(b'x=1 "q" $A\n').hexdigest()
    assert first["history"] == f"/bin/sh -c #(nop) COPY file:{digest} in /etc/a.conf "


def test_workdir_and_relative_destinations(tmp_path):
    raw = spec_of(tmp_path, "FROM oci:/b:1\nWORKDIR app\nWORKDIR ../lib/./x\nCOPY a.txt .\nCOPY a.txt rel/\n"
                  "COPY a.txt named\nWORKDIR /\nRUN pwd\n", files={"a.txt": "a\n"})
    steps = raw["steps"]
    assert steps[0] == {"directory": {"dst": "/srv/app", "mode": "0755", "owner": "0:0"},
                        "history": "/bin/sh -c #(nop) WORKDIR app"}
    assert steps[1]["directory"]["dst"] == "/srv/lib/x"
    assert [s["copy"]["dst"] for s in steps[2:5]] == ["/srv/lib/x/", "/srv/lib/x/rel/", "/srv/lib/x/named"]
    assert steps[5]["workdir"] == "/" and raw["config"]["workdir"] == "/"
    raw = spec_of(tmp_path, "FROM oci:/b:1\nUSER app:staff\nWORKDIR /home/app\n")
    assert raw["steps"][0]["directory"]["owner"] == "app:staff"  # as buildah and BuildKit


def test_copy_flags_globs_and_ignore_files(tmp_path):
    files = {"a.txt": "a", "b.txt": "b", "c.log": "c", "d/sub/f": "f", "d/skip.tmp": "s", "d/keep.tmp": "k",
             ".dockerignore": "*.log\nd/*.tmp\n!d/keep.tmp\n"}
    raw = spec_of(tmp_path, "FROM scratch\nCOPY --chown=app:staff --chmod=640 --link *.txt /txt/\n"
                  "COPY --chown=1000 . /ctx\nCOPY [\"d\", \"/with blank/\"]\nCOPY --exclude=*.txt . /some/\n",
                  files=files)
    globbed, whole, json_form, excluded = (s["copy"] for s in raw["steps"])
    assert globbed == {"src": ["a.txt", "b.txt"], "dst": "/txt/", "mode": "0640", "owner": "app:staff",
                       "exclude": ["*.log", "d/*.tmp", "!d/keep.tmp"]}
    assert whole["src"] == "." and whole["owner"] == "1000:1000"
    assert json_form["dst"] == "/with blank/"
    assert excluded["exclude"][-1] == "*.txt"
    assert raw["steps"][0]["history"].startswith("/bin/sh -c #(nop) COPY multi:")
    assert raw["steps"][2]["history"].startswith("/bin/sh -c #(nop) COPY dir:")


def test_the_containerfile_own_ignore_file_wins(tmp_path):
    files = {"a.txt": "a", "b.txt": "b", ".dockerignore": "a.txt\n", "Containerfile.dockerignore": "b.txt\n"}
    raw = spec_of(tmp_path, "FROM scratch\nCOPY *.txt /t/\n", files=files)
    assert raw["steps"][0]["copy"]["src"] == "a.txt"


def test_context_directory_summary_follows_the_ignore_file(tmp_path):
    text = "FROM scratch\nCOPY d /d\n"
    files = {"d/a": "a", "d/b.log": "b"}
    plain = spec_of(tmp_path, text, files=files)["steps"][0]["history"]
    (tmp_path / ".dockerignore").write_text("d/b.log\n")
    ignored = spec_of(tmp_path, text)["steps"][0]["history"]
    (tmp_path / "d" / "b.log").write_text("changed")
    assert spec_of(tmp_path, text)["steps"][0]["history"] == ignored != plain


def test_config_instructions(tmp_path):
    raw = spec_of(tmp_path, 'FROM oci:/b:1\nSHELL ["/bin/bash", "-c"]\nENV PORT=8080\nEXPOSE $PORT 53/UDP 7000-7002\n'
                  'VOLUME ["/data", "/cache"]\nVOLUME /logs\nSTOPSIGNAL SIGINT\nUSER app:app\n'
                  "CMD echo hi\nENTRYPOINT exec server\nHEALTHCHECK --interval=5s CMD true\n")
    config = raw["config"]
    assert config["exposed_ports"] == ["8080/tcp", "53/udp", "7000/tcp", "7001/tcp", "7002/tcp"]
    assert config["volumes"] == ["/data", "/cache", "/logs"]
    assert config["stop_signal"] == "SIGINT" and config["user"] == "app:app"
    assert config["cmd"] == ["/bin/bash", "-c", "echo hi"]
    assert config["entrypoint"] == ["/bin/bash", "-c", "exec server"]
    assert "healthcheck" not in json.dumps(config).lower()


def test_multi_stage_and_target(tmp_path):
    text = ("FROM scratch AS tools\nCOPY a.txt /a\n"
            "FROM tools AS build\nRUN make\n"
            "FROM scratch AS unused\nCOPY nothing-here /x\n"
            "FROM oci:/b:1\nCOPY --from=build /out /out\nCOPY --from=0 /a /a\nCOPY --from=oci:/other:1 /x /x\n")
    raw = spec_of(tmp_path, text, files={"a.txt": "a"})
    assert [s["name"] for s in raw["stages"]] == ["tools", "build"]
    assert raw["stages"][1]["base"] == {"stage": "tools"}
    froms = [s["copy"]["from"] for s in raw["steps"]]
    assert froms == ["build", "tools", "oci:/other:1"]
    assert raw["steps"][0]["history"] == "/bin/sh -c #(nop) COPY --from=build /out in /out "
    target = spec_of(tmp_path, text, target="build")
    assert target["base"] == {"stage": "tools"} and [s["name"] for s in target["stages"]] == ["tools"]
    alone = spec_of(tmp_path, text, target="TOOLS")
    assert "stages" not in alone and alone["steps"][0]["copy"]["src"] == "a.txt"


def test_unnamed_stages_are_named_by_index(tmp_path):
    raw = spec_of(tmp_path, "FROM scratch\nCOPY a /a\nFROM scratch\nCOPY --from=0 /a /b\n", files={"a": "a"})
    assert raw["stages"][0]["name"] == "0" and raw["steps"][0]["copy"]["from"] == "0"


def test_a_stage_inherits_env_workdir_user_and_shell(tmp_path):
    raw = spec_of(tmp_path, 'FROM scratch AS one\nENV X=1\nWORKDIR /w\nUSER nobody\nSHELL ["/bin/ash", "-c"]\n'
                  "FROM one\nRUN echo $X\nCMD run\n")
    step = raw["steps"][0]
    assert step["env"]["X"] == "1" and step["workdir"] == "/w" and step["user"] == "nobody"
    assert step["run"] == ["/bin/ash", "-c", "echo $X"] and raw["config"]["cmd"] == ["/bin/ash", "-c", "run"]


def test_onbuild_is_stored_and_runs_in_the_next_stage(tmp_path):
    raw = spec_of(tmp_path, "FROM scratch AS parent\nONBUILD COPY a /a\nONBUILD RUN echo $X\n"
                  "FROM parent\nENV X=1\nRUN next\n", files={"a": "a"})
    parent = raw["stages"][0]
    assert json.loads(parent["config"]["labels"][cf.ONBUILD_LABEL]) == ["COPY a /a", "RUN echo $X"]
    assert [next(k for k in s if k in ("copy", "run")) for s in raw["steps"]] == ["copy", "run", "run"]
    assert raw["config"]["labels"][cf.ONBUILD_LABEL] == "[]"  # consumed


def test_onbuild_triggers_of_a_base_image_run_first(tmp_path):
    raw = spec_of(tmp_path, "FROM oci:/b:1\nRUN mine\n", base=stub_base(["RUN from-base", "ENV T=1"]))
    assert [s["run"][-1] for s in raw["steps"]] == ["from-base", "mine"]
    assert raw["config"]["env"] == {"T": "1"}


def test_add_of_local_files(tmp_path):
    raw = spec_of(tmp_path, "FROM scratch\nADD a.txt /x/\n", files={"a.txt": "plain"})
    assert raw["steps"][0]["copy"] == {"src": "a.txt", "dst": "/x/"}
    assert raw["steps"][0]["history"].startswith("/bin/sh -c #(nop) ADD file:")


# --- refusals, through `repro build` ------------------------------------------------------------------------

BAD = [
    ("unknown instruction", "FROM scratch\nRUN true\nFETCH x\n", 3, "unknown instruction FETCH"),
    ("instruction before FROM", "ARG A\nRUN true\nFROM scratch\n", 2, "before the first FROM"),
    ("no FROM", "ARG A=1\n", 1, "no FROM"),
    ("unterminated heredoc", "FROM scratch\nRUN <<EOF\necho\n", 2, "never terminated"),
    ("mount other than cache", "FROM scratch\nRUN --mount=type=bind,target=/x true\n", 2, "type=bind"),
    ("mount without target", "FROM scratch\nRUN --mount=type=cache true\n", 2, "target"),
    ("network host", "FROM scratch\nRUN --network=host true\n", 2, "--network=host"),
    ("security", "FROM scratch\nRUN --security=insecure true\n", 2, "--security"),
    ("unknown flag", "FROM scratch\nCOPY --chmown=1 a /a\n", 2, "unknown flag --chmown"),
    ("flag twice", "FROM scratch\nCOPY --chown=1 --chown=2 a /a\n", 2, "given twice"),
    ("ADD URL without checksum", "FROM scratch\nADD https://example.org/x.tgz /x\n", 2, "--checksum=sha256:"),
    ("ADD bad checksum", "FROM scratch\nADD --checksum=md5:00 https://example.org/x /x\n", 2, "expected sha256"),
    ("ADD git", "FROM scratch\nADD --checksum=sha256:" + "0" * 64 + " git@github.com:a/b.git /x\n", 2, "git"),
    ("COPY URL", "FROM scratch\nCOPY https://example.org/x /x\n", 2, "COPY does not take URLs"),
    ("ADD of a local tar", "FROM scratch\nADD archive.tar /x/\n", 2, "does not unpack"),
    ("missing context file", "FROM scratch\n\nCOPY missing.txt /x\n", 3, "not found in the build context"),
    ("ignored context file", "FROM scratch\nCOPY ignored.txt /x\n", 2, "left out by"),
    ("glob matching nothing", "FROM scratch\nCOPY *.nothing /x/\n", 2, "no file in the build context matches"),
    ("outside the context", "FROM scratch\nCOPY ../x /x\n", 2, "leaves the build context"),
    ("several sources, no trailing /", "FROM scratch\nCOPY a.txt b.txt /x\n", 2, "end with a /"),
    ("later stage by index", "FROM scratch\nCOPY --from=1 /a /a\nFROM scratch\n", 2, "not defined before"),
    ("stage by name, not yet defined", "FROM scratch\nCOPY --from=later /a /a\nFROM scratch AS later\n", 2,
     "not defined before"),
    ("--exclude with --from", "FROM scratch AS a\nFROM scratch\nCOPY --from=a --exclude=x / /\n", 3, "--exclude"),
    ("platform not Linux", "FROM --platform=windows/amd64 scratch\n", 1, "Linux images only"),
    ("platform of a stage base", "FROM --platform=linux/s390x scratch AS a\nFROM --platform=linux/arm64 a\n", 2,
     "the stage a is built for linux/s390x"),
    ("SHELL not JSON", "FROM scratch\nSHELL /bin/bash -c\n", 2, "JSON"),
    ("ONBUILD FROM", "FROM scratch\nONBUILD FROM x\n", 2, "ONBUILD FROM is not allowed"),
    ("bad substitution", "FROM scratch\nENV A=${}\n", 2, "bad substitution"),
    ("unterminated quote", 'FROM scratch\nENV A="x\n', 2, "double-quote"),
    ("required variable", "FROM scratch\nWORKDIR ${DIR:?give DIR}\n", 2, "DIR: give DIR"),
    ("ENV without value", "FROM scratch\nENV LONELY\n", 2, "two arguments"),
    ("EXPOSE", "FROM scratch\nEXPOSE 80/icmp\n", 2, "EXPOSE"),
    ("relative VOLUME", "FROM scratch\nVOLUME data\n", 2, "absolute"),
    ("empty base", "ARG BASE\nFROM ${BASE}\n", 2, "base name is empty"),
    ("bad escape directive", "# escape=x\nFROM scratch\n", 1, "escape"),
    ("bad chmod", "FROM scratch\nCOPY --chmod=u+x a.txt /a\n", 2, "octal"),
    ("heredoc file owned by name", "FROM scratch\nCOPY --chown=app <<EOF /a\nx\nEOF\n", 2, "numeric"),
    ("empty CMD", "FROM scratch\nCMD\n", 2, "needs an argument"),
    ("line after a long instruction", "FROM scratch\nRUN a \\\n  b \\\n\n  c\nNOPE\n", 6, "unknown instruction"),
    ("owner with capitals", "FROM scratch\nCOPY --chown=Admin a.txt /a\n", 2, "lower-case"),
    ("USER with capitals, then RUN", "FROM scratch\nUSER Admin\nRUN true\n", 3, "USER Admin"),
    ("a cache on /", "FROM scratch\nRUN --mount=type=cache,target=/ true\n", 2, "cache"),
]


@pytest.fixture(scope="module")
def bad_context(tmp_path_factory) -> Path:
    context = tmp_path_factory.mktemp("bad")
    (context / "a.txt").write_text("a")
    (context / "b.txt").write_text("b")
    (context / "ignored.txt").write_text("i")
    (context / ".dockerignore").write_text("ignored.txt\n")
    with tarfile.open(context / "archive.tar", "w") as tar:
        tar.add(context / "a.txt", "a.txt")
    return context


@pytest.mark.parametrize("text, line, fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_refused(bad_context, text, line, fragment):
    path = bad_context / "Containerfile"
    path.write_text(text)
    proc = repro("build", "--store", str(bad_context / "store"), str(path), check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"repro: {path}:{line}: "), proc.stderr
    assert fragment in lines[0], proc.stderr


def test_a_missing_target_is_one_line(bad_context):
    path = bad_context / "Dockerfile.target"
    path.write_text("FROM scratch AS one\n")
    proc = repro("build", "--store", str(bad_context / "store"), "--target", "two", "-f", str(path),
                 str(bad_context), check=False)
    assert proc.returncode == 2 and "--target two: no stage of that name (named stages: one)" in proc.stderr


def test_build_args_are_for_containerfiles_only(bad_context):
    (bad_context / "spec.yaml").write_text("spec: 1\nbase: {scratch: true}\n")
    proc = repro("build", str(bad_context / "spec.yaml"), "--build-arg", "A=1", check=False)
    assert proc.returncode == 2 and "for Containerfiles" in proc.stderr


# --- end-to-end builds ----------------------------------------------------------------------------------------

PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = b"root:x:0:\napp:x:1000:\nstaff:x:50:app\n"


@pytest.fixture(scope="module")
def base_layout(tmp_path_factory) -> Path:
    """busybox with passwd and group (user app, 1000:1000) as oci:PATH:1, config Cmd ["sh"]."""
    layers = busybox_layers()
    layers[1] += [E("etc/passwd", PASSWD), E("etc/group", GROUP)]
    path = tmp_path_factory.mktemp("cf-base") / "layout"
    make_image(path, "1", layers, config={"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/",
                                          "Labels": {"from.base": "yes"}})
    return path


def flat(store: Path, tag: str, where: Path) -> Path:
    repro("flatten", f"oci:{store}:{tag}", f"rootfs:{where}")
    return where


def build(path: Path, store: Path, *args: str) -> dict:
    return json.loads(repro("build", "--store", str(store), "--json", *args, str(path)).stdout)


def test_heredocs_and_workdir_build(base_layout, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(
        f"FROM oci:{base_layout}:1\nARG WHO=world\nWORKDIR /srv/app\n"
        "RUN <<EOF\necho \"hello $WHO\" > greeting\nEOF\n"
        "RUN <<EOF\n#!/bin/sh\necho \"script $0 $WHO\" > script.txt\nEOF\n"
        "COPY <<EOF <<'RAW' ./\nwho=$WHO\nEOF\nraw=$WHO\nRAW\n"
        "RUN cat <<-A > tabbed && echo done >> tabbed\n\tindented\n\tA\n")
    result = build(ctx / "Containerfile", tmp_path / "store", "--build-arg", "WHO=you")
    root = flat(tmp_path / "store", "ctx:latest", tmp_path / "root")
    app = root / "srv" / "app"
    assert (app / "greeting").read_text() == "hello you\n"
    assert (app / "script.txt").read_text() == "script /proc/self/fd/3 you\n"
    assert (app / "EOF").read_text() == "who=you\n" and (app / "RAW").read_text() == "raw=$WHO\n"
    assert (app / "tabbed").read_text() == "indented\ndone\n"
    assert sorted(p.name for p in app.iterdir()) == ["EOF", "RAW", "greeting", "script.txt", "tabbed"]
    assert result["digest"].startswith("sha256:")


def test_onbuild_through_an_image(base_layout, tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "Containerfile").write_text(f"FROM oci:{base_layout}:1\nONBUILD RUN echo $MARK > /srv/triggered\n"
                                          "ONBUILD ENV FROM_TRIGGER=1\n")
    build(parent / "Containerfile", tmp_path / "store", "-o", f"oci:{tmp_path / 'parent.oci'}:1")
    child = tmp_path / "child"
    child.mkdir()
    (child / "Containerfile").write_text(f"FROM oci:{tmp_path / 'parent.oci'}:1\nRUN test -f /srv/triggered\n")
    build(child / "Containerfile", tmp_path / "store", "--build-arg", "MARK=x")
    root = flat(tmp_path / "store", "child:latest", tmp_path / "root")
    assert (root / "srv" / "triggered").read_text() == "\n"  # $MARK is not declared: unset, as in docker
    config = json.loads(repro("inspect", "--json", f"oci:{tmp_path / 'store'}:child:latest").stdout)
    assert config["labels"][cf.ONBUILD_LABEL] == "[]" and "FROM_TRIGGER=1" in config["env"]


def test_plain_from_names_resolve_against_the_registry(base_layout, registry, tmp_path):
    repro("convert", f"oci:{base_layout}:1", f"docker://{registry.host}/tools/busybox:1")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text("FROM tools/busybox:1 AS base\nRUN echo ok > /srv/ok\n"
                                       "FROM base\nCOPY --from=tools/busybox:1 /etc/motd /srv/motd\n")
    build(ctx / "Containerfile", tmp_path / "store", "--registry", registry.host)
    root = flat(tmp_path / "store", "ctx:latest", tmp_path / "root")
    assert (root / "srv" / "ok").read_text() == "ok\n" and (root / "srv" / "motd").read_text() == "hello from repro\n"
    lock = json.loads((ctx / "Containerfile.lock").read_text())
    reference = f"docker://{registry.host}/tools/busybox:1"
    assert lock["stages"]["base"]["image"] == reference and reference in lock["sources"]


def test_locked_refuses_a_base_that_moved(base_layout, tmp_path):
    moving = tmp_path / "moving"
    shutil.copytree(base_layout, moving)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(f"FROM oci:{moving}:1\nRUN echo > /srv/x\n")
    build(ctx / "Containerfile", tmp_path / "store")
    build(ctx / "Containerfile", tmp_path / "store", "--locked")
    make_image(moving, "1", [[E("srv", kind="dir"), E("srv/other", b"moved")], *busybox_layers()],
               config={"Env": ["PATH=/bin"]})
    proc = repro("build", "--store", str(tmp_path / "store"), "--locked", str(ctx / "Containerfile"), check=False)
    assert proc.returncode == 2 and "the base resolved to" in proc.stderr and "the lock says" in proc.stderr


@pytest.fixture
def http_file(tmp_path):
    """A file served on 127.0.0.1 by a local HTTP server: yields (url, sha256, content)."""
    served = tmp_path / "served"
    served.mkdir()
    content = b"downloaded content\n" * 100
    (served / "tool.bin").write_bytes(content)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/tool.bin", hashlib.sha256(content).hexdigest(), content
    finally:
        server.shutdown()


def test_add_of_a_url_with_its_checksum(base_layout, tmp_path, http_file, monkeypatch):
    url, sha, content = http_file
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(f"FROM oci:{base_layout}:1\nADD --checksum=sha256:{sha} {url} /opt/\n"
                                       f"ADD --checksum=sha256:{sha} --chown=app {url} /opt/named\n")
    env = {**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = repro("build", "--store", str(tmp_path / "store"), str(ctx / "Containerfile"), env=env)
    assert proc.returncode == 0
    root = flat(tmp_path / "store", "ctx:latest", tmp_path / "root")
    for name, uid in (("tool.bin", 0), ("named", 1000)):
        st = (root / "opt" / name).stat()
        assert (root / "opt" / name).read_bytes() == content and (st.st_mode & 0o777, st.st_uid) == (0o600, uid)
    wrong = ctx / "Dockerfile.wrong"
    wrong.write_text(f"FROM scratch\nADD --checksum=sha256:{'1' * 64} {url} /x\n")
    proc = repro("build", "--store", str(tmp_path / "store"), str(wrong), env=env, check=False)
    assert proc.returncode == 2 and f"{wrong}:2: ADD {url}: the download has sha256:{sha}" in proc.stderr


# --- the catalog from Containerfiles ------------------------------------------------------------------------

DEBIAN_IMAGES = ["openmpi", "python-science", "r-stats"]


@pytest.mark.parametrize("name", ["hello", *DEBIAN_IMAGES])
def test_catalog_containerfiles_say_what_the_specs_say(tmp_path, name):
    """The config of each catalog Containerfile is its spec.yaml's (Env as the image gets it: PATH first)."""

    spec = yaml.safe_load((CATALOG / name / "spec.yaml").read_text())
    path = staged(name, tmp_path)
    base = lambda ref: BaseInfo({"PATH": cf.DEFAULT_PATH}, "/", "", ["/bin/sh", "-c"], [], {})  # noqa: E731
    raw, _ = translate(path, build_args={"BASE": "oci:/base:1"}, base_reader=base)
    assert raw["source_date_epoch"] == spec["source_date_epoch"]
    expected = dict(spec["config"])
    assert raw["config"] == expected


def staged(name: str, where: Path) -> Path:
    target = where / name
    shutil.copytree(CATALOG / name, target, ignore=shutil.ignore_patterns("*.lock"))
    if name == "hello" and not (target / "busybox").exists():
        shutil.copy("/bin/busybox", target / "busybox")
    return target / "Containerfile"


def test_catalog_hello_from_its_containerfile(tmp_path):
    path = staged("hello", tmp_path)
    proc = repro("build", "--check", str(path))
    assert "reproducible: sha256:" in proc.stdout
    result = build(path, tmp_path / "store")
    run_out = repro("run", f"oci:{tmp_path / 'store'}:hello:latest")
    assert run_out.stdout == "hello from a reproducible image\n"
    config = json.loads(repro("inspect", "--json", f"oci:{tmp_path / 'store'}:hello:latest").stdout)
    assert config["entrypoint"] == ["/bin/sh", "-c"] and config["cmd"] == ["cat /etc/motd"]
    assert "GREETING=hello" in config["env"] and result["digest"] in proc.stdout


@pytest.mark.parametrize("name", DEBIAN_IMAGES)
def test_catalog_debian_images_from_their_containerfiles(catalog_images, tmp_path, name):
    """On the spec's own image as BASE (the session's catalog build: it has the packages), built twice in
    empty stores to one digest; python-science's RUN runs its program, openmpi's compiles with mpicc. The
    lock records the base by digest."""

    base = catalog_images[name]["ref"]
    path = staged(name, tmp_path)
    proc = subprocess.run([REPRO, "build", "--check", "--build-arg", f"BASE={base}", str(path)],
                          capture_output=True, text=True, timeout=3600)  # two builds on a Debian base
    assert proc.returncode == 0 and "reproducible: sha256:" in proc.stdout, proc.stderr
    lock = json.loads(path.with_name("Containerfile.lock").read_text())
    assert lock["base"] == {"image": base, "digest": catalog_images[name]["digest"]}


# --- cross-check with buildah ----------------------------------------------------------------------------------

# Differences from buildah, each in README.md (Containerfiles): (buildah's, repro's).
KNOWN_DIFFERENCES: dict[str, dict] = {}
KNOWN_CONFIG_DIFFERENCES: dict[str, dict] = {
    "user-workdir-shell": {"Cmd": (["/bin/sh", "-c", "echo hi"], ["/bin/sh", "-ec", "echo hi"])},  # Docker: SHELL
}
BUILDAH_ARTIFACTS = {"dev", "proc", "sys", "run", "etc/hosts", "etc/hostname", "etc/resolv.conf"}

CROSS = {
    "stages-args-env": (
        "ARG BASE\nARG GREETING=hello\n"
        "FROM ${BASE} AS build\nARG GREETING\nENV OUT=/out DEST=\"${OUT}/sub\"\nWORKDIR /out/sub\n"
        "RUN echo \"$GREETING from $OUT\" > msg.txt && mkdir -p /out/bin && cp /bin/busybox /out/bin/ "
        "&& chmod 0750 /out/bin/busybox\n"
        "FROM ${BASE} AS unused\nRUN exit 1\n"
        "FROM ${BASE}\nARG GREETING\nENV MSG=\"$GREETING world\" EMPTY=\"${NOPE:-fallback}\" PLUS=${GREETING:+set}\n"
        "LABEL greeting=\"$GREETING\" other=x\n"
        "COPY --from=build /out /opt/out\nCOPY --from=build /out/sub/msg.txt /srv/\n"
        "RUN echo \"$GREETING\" > /srv/arg.txt\n"
        "ENTRYPOINT [\"/bin/sh\", \"-c\"]\n",
        {}, ["GREETING=hi"]),
    "copy-chown-chmod-globs-ignore": (
        "ARG BASE\nFROM ${BASE}\n"
        "COPY --chown=1000:1000 --chmod=0640 a.txt /data/\nCOPY *.txt /globbed/\nCOPY . /ctx/\n"
        "COPY --chown=app:staff d/sub/f /owned/f\nADD d /added\nCOPY [\"d/sub\", \"/json form/\"]\n"
        "COPY --chmod=0750 d/ /chmodded/\nWORKDIR /srv/w\nCOPY a.txt rel.txt\nCMD [\"cat\", \"rel.txt\"]\n",
        {"a.txt": "a\n", "b.txt": "b\n", "c.log": "log\n", "d/g": "g\n", "d/sub/f": "f\n",
         "d/sub/skip.tmp": "s\n", "d/sub/keep.tmp": "k\n", ".dockerignore": "*.log\nd/sub/*.tmp\n!d/sub/keep.tmp\n"},
        []),
    # the directories COPY/ADD --chown and WORKDIR make on the way are the owner's (the USER's), existing ones
    # stay as they are; --chmod sets the copied directories' modes, not the destination's nor the parents'
    "chown-chmod-parents-workdir": (
        "ARG BASE\nFROM ${BASE} AS st\nCOPY --chown=1000:1000 d /out/in/\n"
        "FROM ${BASE}\nCOPY --chown=1000:1000 a.txt /a/b/c/\nCOPY --chown=1000:1000 a.txt /a/b/c2/\n"
        "COPY --chown=app:staff d /cd/x/\nCOPY --chown=1000:50 d /cd2\nCOPY --chown=1000:1000 d /srv/\n"
        "COPY --chown=1000:1000 a.txt /tmp/new/\nCOPY --chown=1000:1000 a.txt /e/exact\n"
        "COPY --chmod=0750 d/ /x/y/\nCOPY --chmod=0750 a.txt /m/n/\nCOPY --chown=1000:1000 --chmod=0700 d /both/p/\n"
        "ADD --chown=1000:1000 a.txt /ad/b/c/\nADD --chmod=0700 d /ad2/q/\nADD --chown=app d /ad3/q/\n"
        "COPY --from=st --chown=2000:2000 /out /fr/om/\nCOPY --from=st /out /fr2/om/\n"
        "COPY --from=st --chmod=0700 /out /fr3/om/\n"
        "USER app\nWORKDIR /w/a/b\nUSER 1000:50\nWORKDIR /w/a/z\nCOPY a.txt /as-user/sub/\n"
        "USER root\nWORKDIR /w2/c\n",
        {"a.txt": "a\n", "d/g": "g\n", "d/sub/h": "h\n", "d/sub/deeper/i": "i\n"},
        []),
    "user-workdir-shell": (
        "ARG BASE\nFROM ${BASE}\nARG NAME=world\nSHELL [\"/bin/sh\", \"-ec\"]\n"
        "RUN mkdir -p /srv/app && chown app:app /srv/app\nUSER app\nWORKDIR /srv/app\n"
        "ENV GREETING=\"hello ${NAME}\"\nRUN echo \"$GREETING $(id -u):$(id -g) $(pwd)\" > out.txt\n"
        "USER root\nWORKDIR relative/dir\nRUN pwd > /srv/pwd.txt\nUSER app:staff\nWORKDIR /srv/by-app\n"
        "EXPOSE 8080 53/udp\nVOLUME [\"/data\"]\nSTOPSIGNAL SIGINT\nCMD echo hi\n",
        {}, []),
}


@pytest.fixture(scope="module")
def buildah(tmp_path_factory):
    if shutil.which("buildah") is None:
        pytest.fail("buildah is missing (make setup installs it)")
    root = tmp_path_factory.mktemp("buildah")
    prefix = ["buildah", "--root", str(root / "root"), "--runroot", str(root / "run"), "--storage-driver", "vfs"]
    yield prefix
    subprocess.run([*prefix, "rm", "--all"], capture_output=True)
    subprocess.run([*prefix, "rmi", "--all", "--force"], capture_output=True)


def _raw_config(ref: str) -> dict:
    return json.loads(open_image(ref).raw_config)


def _config_fields(ref: str) -> dict:
    config = _raw_config(ref).get("config") or {}
    labels = {k: v for k, v in (config.get("Labels") or {}).items() if k not in ("io.buildah.version",)}
    return {
        "Env": dict(e.partition("=")[::2] for e in config.get("Env") or []),
        "Entrypoint": config.get("Entrypoint") or [], "Cmd": config.get("Cmd") or [],
        "WorkingDir": config.get("WorkingDir") or "", "User": config.get("User") or "", "Labels": labels,
        "ExposedPorts": sorted(config.get("ExposedPorts") or {}), "Volumes": sorted(config.get("Volumes") or {}),
        "StopSignal": config.get("StopSignal") or "",
    }


def _run_history(ref: str) -> list[str]:
    return [h["created_by"] for h in _raw_config(ref).get("history") or []
            if "#(nop)" not in h.get("created_by", "") and h.get("created_by", "").startswith(("|", "/bin/sh -c"))]


@pytest.mark.parametrize("case", sorted(CROSS))
def test_same_result_as_buildah(buildah, base_layout, tmp_path, case):
    text, files, args = CROSS[case]
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for name, content in files.items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(content)
    (ctx / "Containerfile").write_text(text)
    base = f"oci:{base_layout}:1"
    build_args = [a for arg in [f"BASE={base}", *args] for a in ("--build-arg", arg)]
    tag = f"cross-{case}:1"
    run(*buildah, "bud", "--layers=false", "--format", "oci", "-t", tag, *build_args, "-f",
        str(ctx / "Containerfile"), str(ctx))
    run(*buildah, "push", tag, f"oci:{tmp_path / 'buildah'}:1")
    build(ctx / "Containerfile", tmp_path / "store", *build_args)
    theirs = tree_of(_flatten(f"oci:{tmp_path / 'buildah'}:1", tmp_path / "theirs"))
    ours = tree_of(_flatten(f"oci:{tmp_path / 'store'}:ctx:latest", tmp_path / "ours"))
    for path in BUILDAH_ARTIFACTS:  # mount points and files buildah's runs leave behind, empty
        entry = theirs.pop(path, None)
        assert entry is None or entry[4] in ("", hashlib.sha256(b"").hexdigest()), (path, entry)
    differences = {p: (theirs.get(p), ours.get(p)) for p in sorted(theirs.keys() | ours.keys())
                   if theirs.get(p) != ours.get(p)}
    assert differences == KNOWN_DIFFERENCES.get(case, {})
    ours_config = _config_fields(f"oci:{tmp_path / 'store'}:ctx:latest")
    theirs_config = _config_fields(f"oci:{tmp_path / 'buildah'}:1")
    differences = {k: (theirs_config[k], ours_config[k]) for k in ours_config if ours_config[k] != theirs_config[k]}
    assert differences == KNOWN_CONFIG_DIFFERENCES.get(case, {})
    if "SHELL" not in text:  # buildah writes /bin/sh -c whatever the SHELL; repro writes the SHELL (README)
        base_history = len(_raw_config(base).get("history") or [])
        assert _run_history(f"oci:{tmp_path / 'store'}:ctx:latest")[base_history:] == \
            _run_history(f"oci:{tmp_path / 'buildah'}:1")[base_history:]


def _flatten(ref: str, where: Path) -> Path:
    repro("flatten", ref, f"rootfs:{where}")
    return where


def _as_nobody(public: Path, *args: str) -> dict:
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", REPRO, *args, "--json"],
                          capture_output=True, text=True, env={**os.environ, "HOME": str(public)}, timeout=3600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("front", ["Containerfile", "app.def"])
def test_hello_front_ends_give_one_digest_as_root_and_as_a_plain_user(public_dir, front):
    target = public_dir / "hello"
    shutil.copytree(CATALOG / "hello", target, ignore=shutil.ignore_patterns("*.lock", "busybox"))
    shutil.copy("/bin/busybox", target / "busybox")
    subprocess.run(["chmod", "-R", "a+rwX", str(public_dir)], check=True)
    as_root = build(target / front, public_dir / "root")
    as_user = _as_nobody(public_dir, "build", str(target / front), "--store", str(public_dir / "user"))
    assert as_user["digest"] == as_root["digest"]


def test_chown_parents_and_workdir_as_a_plain_user(base_layout, public_dir):
    """A plain user cannot chown: the parents COPY --chown and WORKDIR make are recorded as the owner's in
    the layers all the same, and the image is the one root builds."""
    base = public_dir / "base"
    shutil.copytree(base_layout, base)
    ctx = public_dir / "ctx"
    (ctx / "d" / "sub").mkdir(parents=True)
    (ctx / "a.txt").write_text("a\n")
    (ctx / "d" / "sub" / "f").write_text("f\n")
    (ctx / "Containerfile").write_text(
        f"FROM oci:{base}:1\nCOPY --chown=1000:50 a.txt /a/b/\nCOPY --chown=app --chmod=0750 d /c/d/\n"
        "USER app\nWORKDIR /w/x/y\nUSER 1000:50\nWORKDIR /w/x/z\n")
    subprocess.run(["chmod", "-R", "a+rwX", str(public_dir)], check=True)
    as_root = build(ctx / "Containerfile", public_dir / "root")
    as_user = _as_nobody(public_dir, "build", str(ctx / "Containerfile"), "--store", str(public_dir / "user"))
    assert as_user["digest"] == as_root["digest"]
    root = flat(public_dir / "root", "ctx:latest", public_dir / "flat")
    owners = {p: ((st := (root / p).stat()).st_mode & 0o7777, st.st_uid, st.st_gid)
              for p in ("a", "a/b", "a/b/a.txt", "c", "c/d", "c/d/sub", "c/d/sub/f", "w", "w/x", "w/x/y", "w/x/z")}
    assert owners == {"a": (0o755, 1000, 50), "a/b": (0o755, 1000, 50), "a/b/a.txt": (0o666, 1000, 50),  # a+rw
                      "c": (0o755, 1000, 1000), "c/d": (0o755, 1000, 1000), "c/d/sub": (0o750, 1000, 1000),
                      "c/d/sub/f": (0o750, 1000, 1000), "w": (0o755, 1000, 1000), "w/x": (0o755, 1000, 1000),
                      "w/x/y": (0o755, 1000, 1000), "w/x/z": (0o755, 1000, 50)}


@pytest.mark.parametrize("name", DEBIAN_IMAGES)
def test_catalog_debian_containerfile_as_a_plain_user(catalog_images, public_dir, nobody_subids, name):
    """Its RUN runs under bwrap as a plain user who has subordinate ids, as Debian's `adduser` gives (a
    user namespace of them, see repro/run/executors/subids.py), and gives the image root gives."""
    base = f"oci:{public_dir / 'base'}:1"
    repro("convert", catalog_images[name]["ref"], base)
    path = staged(name, public_dir)
    subprocess.run(["chmod", "-R", "a+rwX", str(public_dir)], check=True)
    as_root = build(path, public_dir / "root", "--build-arg", f"BASE={base}")
    as_user = _as_nobody(public_dir, "build", str(path), "--store", str(public_dir / "user"),
                         "--build-arg", f"BASE={base}")
    assert as_user["digest"] == as_root["digest"]
