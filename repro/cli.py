"""The `repro` command. The only module that prints.

Exit status: 0 success, 1 a check failed, 2 bad input or usage. Every error is one line on stderr;
`--debug` shows the traceback.

Each command is a pair: `add_<command>` declares its flags (the shared ones come from the parent parsers
below), `cmd_<command>` parses nothing more, calls the library and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from repro import __version__, jsonout, referrers
from repro.atomic import atomic_file
from repro.blobs import IndexImage
from repro.clock import document_time
from repro.errors import EXIT_BAD_INPUT, CheckFailed, ReproError
from repro.image import Platform
from repro.preserve import provenance
from repro.refs import Options, is_reference, open_image, parse, write_image
from repro.run import container, mpi, unpacked
from repro.run.executors import terminal
from repro.store import default_store
from repro.summary import image_details, image_digests
from sbom.diff import describe, diff_images

# No markup and no emoji codes: references, labels, paths and commands come from the user or the image,
# and rich would read `oci:x:1` as the emoji :x: or `[bold]` in a label as a style.
out = Console(highlight=False, markup=False, emoji=False, soft_wrap=True,
              width=None if sys.stdout.isatty() else 250)
err = Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True,
              width=None if sys.stderr.isatty() else 250)


class _Parser(argparse.ArgumentParser):
    """One-line usage errors; with `rest`, a command line's `--` ends the options and every word after it
    (a second `--` included) goes to that list, as docker's `run IMAGE [OPTIONS] -- CMD ARGS`."""

    def __init__(self, *args, rest: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rest = rest

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        words = None if args is None else list(args)
        if self.rest is None or words is None or "--" not in words:
            return super().parse_known_args(words, namespace)
        # the options end here: argparse alone would drop one `--` only, and read the words after it as
        # options when a positional was already complete before it
        split = words.index("--")
        namespace, extras = super().parse_known_args(words[:split], namespace)
        setattr(namespace, self.rest, [*(getattr(namespace, self.rest, None) or []), *words[split + 1:]])
        return namespace, extras

    def error(self, message: str) -> None:  # one line, exit 2, as every other error
        err.print(f"repro: {message} (see 'repro --help')", markup=False)
        raise SystemExit(EXIT_BAD_INPUT)


def _options(args: argparse.Namespace) -> Options:
    return Options(platform=Platform.parse(args.platform) if getattr(args, "platform", None) else None,
                   all_platforms=getattr(args, "all", False),
                   compression=getattr(args, "compression", None) or None,
                   creds=getattr(args, "creds", None) or None,
                   tls_verify=getattr(args, "tls_verify", None) != "false",
                   chunk_size=getattr(args, "chunk_size", None) or 0,
                   preserve_devices=getattr(args, "preserve_devices", False),
                   preserve_setuid=getattr(args, "preserve_setuid", False))


def _emit_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _progress(description: str):
    """On a terminal: a line per blob (like skopeo's) under an overall byte counter; nothing in pipelines."""
    if not err.is_terminal:
        return contextlib.nullcontext(None)
    return _Bars(description)


class _Bars:
    """The progress display handed to writers: called with byte counts; `blob()` opens a bar per blob."""

    def __init__(self, description: str) -> None:
        self.description = description

    def __enter__(self) -> _Bars:
        self.bars = Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), console=err, transient=True)
        self.bars.__enter__()
        self.overall = self.bars.add_task(self.description, total=None)
        return self

    def __call__(self, n: int) -> None:
        self.bars.advance(self.overall, n)

    def blob(self, digest: str, size: int | None) -> Callable[[int], None]:
        task = self.bars.add_task(f"  blob {digest.partition(':')[2][:12]}", total=size)

        def advance(n: int) -> None:
            self.bars.advance(task, n)
            self.bars.advance(self.overall, n)

        return advance

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)


# --- shared flags: each declared once, given to the commands that take it with `parents=[...]` ----------

PICK_PLATFORM = "os/arch[/variant] to pick from a multi-platform index"
STORE_DEFAULT = "default $REPRO_STORE or ~/.local/share/repro"


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def _platform(text: str = PICK_PLATFORM) -> argparse.ArgumentParser:
    parent = _parent()
    parent.add_argument("--platform", help=text)
    return parent


def _json(text: str = "print JSON") -> argparse.ArgumentParser:
    parent = _parent()
    parent.add_argument("--json", action="store_true", help=text)
    return parent


def _store(text: str) -> argparse.ArgumentParser:
    parent = _parent()
    parent.add_argument("--store", help=text)
    return parent


def _compression(text: str) -> argparse.ArgumentParser:
    parent = _parent()
    parent.add_argument("--compression", choices=("gzip", "zstd", "xz", "lz4"), help=text)
    return parent


# every command takes --debug after its name too; SUPPRESS keeps it from resetting the top-level one
DEBUG = _parent()
DEBUG.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

REGISTRY = _parent()
REGISTRY.add_argument("--creds", help="USER:PASSWORD for docker:// registries (else REPRO_REGISTRY_AUTH, "
                      "docker login)")
REGISTRY.add_argument("--tls-verify", choices=("true", "false"), help="verify TLS of non-loopback registries (true)")
REGISTRY.add_argument("--chunk-size", type=int, help="upload blobs in chunks of this many bytes (default: one "
                      "request)")

EXECUTOR = _parent()
EXECUTOR.add_argument("--executor", help="runc, bwrap, proot, docker or udocker (default: runc for root, else "
                      "bwrap or proot)")

# what convert and flatten share: they are one copy, flatten's destination a root filesystem
COPY = argparse.ArgumentParser(add_help=False, parents=[
    _platform(f"{PICK_PLATFORM} (default: host)"), _compression("squashfs/SIF compressor (gzip)"),
    _json("print a JSON summary"), REGISTRY])
COPY.add_argument("--preserve-devices", action="store_true",
                  help="rootfs: as root, create the image's device nodes (default: left out, with a warning)")
COPY.add_argument("--preserve-setuid", action="store_true",
                  help="rootfs: keep setuid/setgid bits of files (default: dropped, with a warning)")


def _command(commands: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int],
             help_text: str, parents: Sequence[argparse.ArgumentParser] = (), **kwargs) -> argparse.ArgumentParser:
    """The parser of `repro NAME`, calling func; every command takes the hidden --debug."""
    parser = commands.add_parser(name, help=help_text, description=help_text, parents=[DEBUG, *parents], **kwargs)
    parser.set_defaults(func=func)
    return parser


# --- commands -----------------------------------------------------------------------------


def add_convert(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "convert", cmd_convert, "copy an image from any reference to any reference", [COPY])
    p.add_argument("src", help="source, e.g. docker-archive:img.tar")
    p.add_argument("dst", help="e.g. oci:layout:1.0")
    p.add_argument("--all", action="store_true",
                   help="copy a multi-platform index whole (oci: and docker:// on both sides)")
    p.add_argument("--referrers", action="store_true",
                   help="also copy the image's OCI referrers (SBOMs, attestations; oci: and docker://)")


def cmd_convert(args: argparse.Namespace) -> int:
    copy_all = getattr(args, "all", False)
    if copy_all and not all(is_reference(text) and parse(text).transport.index for text in (args.src, args.dst)):
        raise ReproError("--all copies an index between oci: layouts and docker:// registries",
                         "use --platform to convert one platform to other formats")
    image = open_image(args.src, _options(args))
    if copy_all and not isinstance(image, IndexImage):
        raise ReproError(f"{args.src}: is a single image, not a multi-platform index", "drop --all")
    with _progress(f"{args.src} -> {args.dst}") as progress:
        written = write_image(image, args.dst, _options(args), progress)
    copied = []
    if getattr(args, "referrers", False):
        copied = referrers.copy(args.src, image, args.dst, _options(args))
    if args.json:
        summary = {"source": args.src, "destination": args.dst, "digest": written.digest, "manifest": image.digest,
                   "referrers": [a.descriptor.digest for a in copied]}
        if written.blobs is not None:  # a push of one image
            blobs = written.blobs
            summary["blobs"] = {"pushed": blobs.pushed, "skipped": blobs.skipped, "mounted": blobs.mounted}
        _emit_json(summary)
    else:
        out.print(f"{args.dst}  {written.digest}", markup=False)
        for artifact in copied:
            out.print(f"  referrer {artifact.descriptor.digest}  {artifact.descriptor.artifact_type}", markup=False)
    return 0


def add_build(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "build", cmd_build, "build an image from a spec, reproducibly",
                 [_store(f"the local store (an OCI layout; {STORE_DEFAULT})"), REGISTRY,
                  _compression("squashfs/SIF compressor"), _json("print a JSON summary")])
    p.add_argument("spec", nargs="?", help="the spec YAML file, a Containerfile or Dockerfile, an Apptainer "
                   "definition file (.def), or (with -f, or holding a Containerfile) the build context directory")
    p.add_argument("-f", "--file", help="the Containerfile or Dockerfile; the positional argument is the context")
    p.add_argument("--build-arg", action="append", metavar="NAME[=VALUE]", help="Containerfile ARG or def file "
                   "{{ NAME }} value (repeatable)")
    p.add_argument("--target", help="Containerfile stage to build (default: the last)")
    p.add_argument("--registry", help="registry of plain FROM names such as debian:bookworm (Containerfiles, "
                   "def files' Bootstrap: docker; default docker.io)")
    p.add_argument("-o", "--output", action="append", help="also write the image here (any writable reference)")
    # several platforms to build, not the one to pick: a flag of its own
    p.add_argument("--platform", dest="platforms", metavar="PLATFORM[,PLATFORM...]",
                   help="build for these os/arch (an OCI index when several; foreign ones run emulated)")
    p.add_argument("--locked", action="store_true", help="fail if resolution differs from SPEC.lock")
    p.add_argument("--no-cache", action="store_true", help="rebuild every step")
    p.add_argument("--check", action="store_true", help="build twice without the cache and compare the digests "
                   "(the first build in --store if given, the second in an empty store)")
    p.add_argument("--test", action="store_true", help="run the spec's tests against the image")
    p.add_argument("--executor", choices=("runc", "bwrap", "proot"),
                   help="how run steps execute (default: runc for root, else bwrap or proot)")
    p.add_argument("--cache-from", action="append", help="use a build cache published at this reference")
    p.add_argument("--cache-to", action="append", help="publish this build's cache (e.g. docker://HOST/REPO:cache)")


def cmd_build(args: argparse.Namespace) -> int:
    # lazy: builders.spec loads PyYAML; with the front ends ~150 ms at start-up that only a build needs
    from builders import build as b  # noqa: PLC0415 - lazy, see above
    from builders.frontend import load_spec  # noqa: PLC0415 - lazy, see above

    spec = load_spec(args.spec, args.file, args.build_arg or [], args.target, args.registry,
                     args.platforms.split(",")[0] if args.platforms else None)
    if args.check:
        return _build_check(args, spec)
    store = b.open_store(Path(args.store) if args.store else default_store())

    def report(step: b.StepReport) -> None:
        if args.json:
            return
        state = "cached" if step.cached else "built "
        err.print(f"[{step.number}/{step.total}] {state} {step.seconds:6.2f}s {_human(step.size):>10}  {step.title}",
                  markup=False)

    platforms = [Platform.parse(p) for p in args.platforms.split(",")] if args.platforms else None
    result = b.build(spec, store, executor=args.executor, use_cache=not args.no_cache, locked=args.locked,
                     report=report, log=lambda m: err.print(f"repro: {m}", markup=False),
                     cache_from=args.cache_from, cache_to=args.cache_to, platforms=platforms)
    _attach_provenance(spec, store, result)
    written = [f"oci:{store.path}:{result.tag}"]
    several = isinstance(result.image, IndexImage)
    for ref in args.output or []:
        if several and not (is_reference(ref) and parse(ref).transport.index):
            raise ReproError(f"{ref}: holds one platform, the build made an index of {len(platforms or [])}",
                             f"write the index to oci: or docker://, then repro convert --platform to {ref}")
        write_image(result.image, ref, replace(_options(args), platform=None, all_platforms=several))
        written.append(ref)
    failures = 0
    tests = []
    # an index's tests run in every platform's image, a foreign one under QEMU
    for image in (result.image.children if several else [result.image]) if args.test else []:
        where = f" [{image.config.platform}]" if several else ""
        for test, outcome, passed in b.run_tests(spec, image, args.executor):
            failures += not passed
            tests.append({"run": test["run"], "exit": outcome.exit_code, "passed": passed,
                          **({"platform": str(image.config.platform)} if several else {})})
            if not args.json:
                err.print(f"test {'ok  ' if passed else 'FAIL'}{where} {test['run']}" +
                          ("" if passed else f" (exit {outcome.exit_code}): {outcome.tail.strip()[-300:]}"),
                          markup=False)
    if args.json:
        _emit_json({"digest": result.digest, "written": written, "lock": str(result.lock_file), "tests": tests,
                    "steps": [{"title": s.title, "cached": s.cached, "seconds": round(s.seconds, 3), "size": s.size}
                              for s in result.steps]})
    else:
        out.print(f"{result.digest}  {' '.join(written)}", markup=False)
    return 1 if failures else 0


def _attach_provenance(spec, store, result) -> None:
    """What `repro build` attaches to each image it built: its provenance (spec, lock, SOURCE_DATE_EPOCH),
    so that it travels with `convert --referrers` and into `repro archive`."""
    from builders import definition  # noqa: PLC0415 - lazy: as cmd_build's

    for image in result.images:
        provenance.attach(store.path, image, provenance.statement(image, *definition.of_spec(spec)))


def _build_check(args: argparse.Namespace, spec) -> int:
    """Build twice, never from the cache, the second time in an empty store; on a difference, show which
    files and fields differ."""
    from builders.check import build_twice  # noqa: PLC0415 - lazy: PyYAML and the front ends, as cmd_build's

    def built(n: int, store, result) -> None:
        _attach_provenance(spec, store, result)
        err.print(f"build {n}: {result.digest}", markup=False)

    platforms = [Platform.parse(p) for p in args.platforms.split(",")] if args.platforms else None
    digests, differences = build_twice(spec, Path(args.store) if args.store else None, args.executor, platforms,
                                       built)
    if digests[0] == digests[1]:
        out.print(f"reproducible: {digests[0]}", markup=False)
        return 0
    for record in differences:
        out.print(describe(record), markup=False)
    raise CheckFailed(f"{spec.path}: two builds gave {digests[0]} and {digests[1]}", "see the differences above")


def add_diff(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "diff", cmd_diff, "what differs between two images, down to the file and the header field",
                 [_platform(), _json()])
    p.add_argument("ref1")
    p.add_argument("ref2")
    p.add_argument("--semantic", action="store_true",
                   help="ignore what a rebuild may change: timestamps, history, layer split, order, compression")


def cmd_diff(args: argparse.Namespace) -> int:
    records = diff_images(open_image(args.ref1, _options(args)), open_image(args.ref2, _options(args)),
                          semantic=args.semantic)
    if args.json:
        _emit_json({"equal": not records, "semantic": args.semantic, "differences": records})
    else:
        for record in records:
            out.print(describe(record), markup=False)
        if not records:
            out.print("no differences" + (" (semantic)" if args.semantic else ""), markup=False)
    return 1 if records else 0


def add_sbom(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "sbom", cmd_sbom,
                 "a software bill of materials (SPDX 2.3 or CycloneDX 1.6 JSON) of an image", [_platform(), REGISTRY])
    p.add_argument("ref")
    p.add_argument("--format", choices=("spdx-json", "cyclonedx-json"), default="spdx-json")
    p.add_argument("-o", "--output", help="write to this file (default: standard output)")
    p.add_argument("--attach", action="store_true",
                   help="store it as an OCI 1.1 referrer of the image (oci: layouts and docker:// registries)")


def cmd_sbom(args: argparse.Namespace) -> int:
    # lazy: sbom.licenses builds license_expression's SPDX license index when imported (~50 ms)
    from sbom.generate import MEDIA_TYPES, generate  # noqa: PLC0415 - lazy, see above
    from sbom.index import generate_index  # noqa: PLC0415 - lazy, see above

    options = _options(args)
    ref = parse(args.ref)
    if options.platform is None and ref.transport.index:
        options = replace(options, all_platforms=True)  # an index: describe every platform
    image = open_image(ref, options)
    name = ref.body or args.ref
    if isinstance(image, IndexImage):
        if args.attach:
            raise ReproError(f"{args.ref}: is a multi-platform index", "attach an SBOM to each platform's image "
                             "with --platform os/arch --attach")
        data = generate_index(image, (args.format,), name)[args.format]
    else:
        data = generate(image, args.format, name)
    if args.attach:
        artifact = referrers.attach(args.ref, image, data, MEDIA_TYPES[args.format], MEDIA_TYPES[args.format],
                                    document_time(image), _options(args))
        err.print(f"attached {args.format} to {image.digest} as {artifact.descriptor.digest}", markup=False)
    if args.output:
        with atomic_file(args.output) as out:
            out.write(data)
    elif not args.attach:
        sys.stdout.buffer.write(data)
    return 0


def add_run(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "run", cmd_run, "run a command in an image (docker run's rules for entrypoint and cmd)",
                 [EXECUTOR, _store(f"the store holding unpacked images ({STORE_DEFAULT})"), _platform(), REGISTRY],
                 rest="command")
    p.add_argument("ref", help="any image reference, e.g. archive:pkg.tar or oci:layout:1")
    p.add_argument("command", nargs="*", help="-- CMD ARGS... (default: the image's entrypoint and cmd)")
    p.add_argument("-v", "--volume", action="append", help="HOST:CONTAINER bind mount (repeatable)")
    p.add_argument("-e", "--env", action="append", help="KEY=VALUE added to the image's environment")
    p.add_argument("-w", "--workdir", help="working directory inside the image (default: the image's)")
    p.add_argument("--entrypoint", metavar="PROGRAM",
                   help="run PROGRAM (then the command after --) instead of the image's entrypoint and cmd; "
                        "'' runs the command alone")
    p.add_argument("--fresh", action="store_true",
                   help="unpack into a private copy for this run (default: the image unpacked once in the store, "
                        "under a throw-away overlay)")
    p.add_argument("--stop-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="after SIGTERM/SIGINT/SIGHUP/SIGQUIT, wait this long before killing the command (10)")
    p.add_argument("-i", "--interactive", action="store_true",
                   help="keep stdin attached to the command (else it reads /dev/null, as docker's)")
    p.add_argument("-t", "--tty", action="store_true",
                   help="run the command on a pseudo-terminal (-it from a terminal: an interactive shell)")
    p.add_argument("--network", choices=("none", "host"), default="none",
                   help="none: a network namespace with loopback only (default); host: the host's network")
    p.add_argument("--mpi", action=argparse.BooleanOptionalAction, default=None,
                   help="run as a rank of the MPI job that started repro: the host's network, PID and IPC, the "
                        "launcher's environment and session directories, your own ids (default: when mpirun or "
                        "srun --mpi=pmix started repro)")


def cmd_run(args: argparse.Namespace) -> int:
    terminal.check(args.interactive, args.tty)
    argv = list(args.command or [])
    binds = []
    for volume in args.volume or []:
        host, sep, inside = volume.partition(":")
        if not sep or not host or not inside.startswith("/"):
            raise ReproError(f"-v {volume}: expected HOST:/PATH/IN/CONTAINER", "e.g. -v $PWD/data:/data")
        if not Path(host).exists():
            raise ReproError(f"-v {volume}: {host} does not exist", "create it first")
        binds.append((str(Path(host).resolve()), inside.split(":", 1)[0]))
    env = tuple(_key_value(e, "-e") for e in args.env or ())
    rank = mpi.under_launcher() if args.mpi is None else args.mpi
    if rank:  # a rank of the MPI job that started repro: the launcher's variables and directories
        if not mpi.under_launcher():
            raise ReproError("--mpi: no MPI launcher started repro", "mpirun -n N repro run IMAGE -- CMD")
        if args.executor in ("docker", "udocker"):
            raise ReproError(f"--executor {args.executor}: an MPI rank runs with bwrap or proot",
                             "leave out --executor, or give --no-mpi")
        job = mpi.job()
        binds, env = [*job.binds, *binds], (*job.env, *env)
    image = open_image(args.ref, _options(args))
    invocation = container.Invocation(argv or None, "", tuple(binds), args.workdir or "", env, args.stop_timeout,
                                      network=args.network == "host", tty=args.tty, mpi=rank,
                                      entrypoint=args.entrypoint)
    store = None if args.fresh else Path(args.store) if args.store else default_store()
    with container.session(image, args.executor, store) as active:  # stdin as docker's: only with -i
        return active.run(invocation, stdin=None if args.interactive else subprocess.DEVNULL)


def add_prune(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "prune", cmd_prune, "remove images unpacked by repro run that were not used for some days",
                 [_store(f"the store ({STORE_DEFAULT})"), _json()])
    p.add_argument("--days", type=float, default=30.0, help="unused for at least this many days (default 30)")


def cmd_prune(args: argparse.Namespace) -> int:
    store = Path(args.store) if args.store else default_store()
    removed = unpacked.prune(store, args.days)
    if args.json:
        _emit_json({"removed": [{"path": str(p.path), "age_days": round(p.age_days, 2)} for p in removed]})
    else:
        for pruned in removed:
            out.print(f"removed {pruned.path}  (unused for {pruned.age_days:.1f} days)", markup=False)
        out.print(f"{len(removed)} unpacked images removed", markup=False)
    return 0


class _RecordAction(argparse.Action):
    """--record CMD starts a recorded run; --output PATH names a file of the run before it."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        from repro.preserve.archive import RecordRequest  # noqa: PLC0415 - lazy: the SBOM generator and PyYAML, as cmd_archive's

        runs = list(getattr(namespace, "records", None) or [])
        if option_string == "--record":
            runs.append(RecordRequest(value))
        elif not runs:
            parser.error("--output-file names a file of the --record before it")
        else:
            last = runs[-1]
            runs[-1] = RecordRequest(last.command, (*last.outputs, value))
        namespace.records = runs


def add_archive(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "archive", cmd_archive, "write a preservation package: a BagIt bag with the image, SBOMs, "
                 "provenance, recorded runs and instructions", [EXECUTOR, _platform(), _json(), REGISTRY])
    p.add_argument("ref", help="the image, any reference")
    p.add_argument("-o", "--output", required=True, help="the package: a new directory, or a file ending in .tar")
    p.add_argument("--spec", help="the build spec the image came from (adds provenance)")
    p.add_argument("--record", action=_RecordAction, dest="records", metavar="CMD",
                   help="run CMD (a shell line) in the image and record its results (repeatable)")
    p.add_argument("--output-file", "--record-output", action=_RecordAction, dest="records", metavar="PATH",
                   help="a file the preceding --record writes, hashed too (repeatable)")
    p.add_argument("--with", dest="with_", action="append", metavar="LIST",
                   help="renditions to include: sif, rootfs, docker-archive (comma-separated)")


def cmd_archive(args: argparse.Namespace) -> int:
    # lazy: repro.preserve loads the SBOM generator (license_expression's SPDX index) and PyYAML (provenance)
    from repro.preserve import archive  # noqa: PLC0415 - lazy, see above

    renditions = tuple(r.strip() for part in args.with_ or [] for r in part.split(",") if r.strip())
    image = archive.write(args.ref, args.output, spec=args.spec, records=args.records or [], renditions=renditions,
                          executor=args.executor, options=_options(args),
                          log=(lambda m: err.print(f"repro: {m}", markup=False)) if err.is_terminal else None)
    if args.json:
        _emit_json({"package": args.output, "image": image.digest})
    else:
        out.print(f"{args.output}  {image.digest}", markup=False)
    return 0


def _is_image_reference(text: str) -> bool:
    return is_reference(text) and not parse(text).transport.package


def add_verify(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "verify", cmd_verify, "check a preservation package (BagIt fixity, OCI digests, SBOM and "
                 "provenance subjects) or an image's blobs", [_platform(), _json(), REGISTRY])
    p.add_argument("target", help="a package (directory, .tar or archive:PATH) or an image reference")
    p.add_argument("--deep", action="store_true", help="also decompress every layer against its diff_id")


def cmd_verify(args: argparse.Namespace) -> int:
    from repro.preserve import verify  # noqa: PLC0415 - lazy: the SBOM generator and PyYAML, as cmd_archive's

    rows: list[tuple[str, str]] = []
    failure: CheckFailed | None = None
    try:
        if _is_image_reference(args.target):
            rows = verify.verify_image(args.target, _options(args), args.deep)[1]
        else:
            rows = verify.verify_package(args.target.removeprefix("archive:"), args.deep,
                                         lambda c, d: rows.append((c, d)))
    except CheckFailed as exc:
        failure = exc
    if args.json:
        _emit_json({"target": args.target, "ok": failure is None, "checked": [{"check": c, "result": d}
                                                                            for c, d in rows],
                    "error": str(failure) if failure else None})
    else:
        table = Table(show_header=True, box=None, pad_edge=False)
        table.add_column("check", style="bold")
        table.add_column("result")
        for check, detail in rows:
            table.add_row(check, f"ok  {detail}")
        out.print(table)
    if failure is not None:
        raise failure
    return 0


def add_replay(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "replay", cmd_replay, "run a package's recorded commands again and compare exit status and "
                 "hashes", [EXECUTOR, _json()])
    p.add_argument("package", help="a package made by repro archive (directory or .tar)")


def cmd_replay(args: argparse.Namespace) -> int:
    from repro.preserve.replay import replay  # noqa: PLC0415 - lazy: the SBOM generator and PyYAML, as cmd_archive's

    def report(result) -> None:
        if args.json:
            return
        state = "match   " if result.matches else "MISMATCH"
        out.print(f"{state} [{result.executor}] {result.record.command}", markup=False)
        for what, recorded, replayed, same in result.rows:
            if not same:
                out.print(f"    {what}: recorded {recorded}, now {replayed}", markup=False)
        if not result.matches and result.stderr_tail:
            out.print("    stderr of the replayed run, last lines:", markup=False)
            for line in result.stderr_tail.splitlines():
                out.print(f"      {line}", markup=False)

    results = replay(args.package, args.executor, report)
    mismatches = sum(not r.matches for r in results)
    if args.json:
        _emit_json({"package": args.package, "executor": results[0].executor if results else "",
                    "runs": [{"command": r.record.command, "matches": r.matches, "stderr_tail": r.stderr_tail,
                              "checks": [{"what": w, "recorded": a, "replayed": b, "matches": m}
                                         for w, a, b, m in r.rows]} for r in results]})
    else:
        out.print(f"{len(results) - mismatches} of {len(results)} recorded runs match", markup=False)
    if mismatches:
        raise CheckFailed(f"{args.package}: {mismatches} of {len(results)} recorded runs differ",
                          "see the rows marked MISMATCH")
    return 0


def add_flatten(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "flatten", cmd_flatten,
                 "merge the layers into one root filesystem (rootfs:, tar:, squashfs:)", [COPY])
    p.add_argument("src", help="source, e.g. docker-archive:img.tar")
    p.add_argument("dst", help="rootfs:DIR, tar:FILE or squashfs:FILE")


def cmd_flatten(args: argparse.Namespace) -> int:
    if not is_reference(args.dst) or not parse(args.dst).transport.flat:
        raise ReproError(f"{args.dst!r}: flatten writes rootfs:DIR, tar:FILE or squashfs:FILE",
                         "use repro convert for image formats")
    return cmd_convert(args)


def _format_details(ref_text: str) -> dict | None:
    """What a transport can say about its container format (a SIF's header and objects)."""
    ref = parse(ref_text)
    return ref.transport.describe(ref) if ref.transport.describe is not None else None


def _print_sif(details: dict) -> None:
    header = details["header"]
    out.print("SIF header", style="bold")
    for key, value in header.items():
        out.print(f"  {key:<20}{str(value).strip()}", markup=False)
    out.print("SIF objects", style="bold")
    out.print(f"  {'ID':<4}{'GROUP':<7}{'LINK':<6}{'OFFSET':>10} {'SIZE':>12}  {'TYPE':<14}NAME / PARTITION",
              markup=False)
    for o in details["objects"]:
        part = o.get("partition")
        what = f"{part['fstype']}/{part['parttype']}/{part['arch']}" if part else o["name"]
        out.print(f"  {o['id']:<4}{o['group']:<7}{o['link']:<6}{o['offset']:>10} {o['size']:>12}  "
                  f"{o['type']:<14}{what}", markup=False)


def add_attach(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "attach", cmd_attach, "attach a document to an image as an OCI 1.1 referrer (oci:, docker://)",
                 [_platform(), _json(), REGISTRY])
    p.add_argument("ref", help="the image, e.g. docker://127.0.0.1:5000/team/img:1")
    p.add_argument("file", help="the document (an SBOM, a provenance statement, a signature)")
    p.add_argument("--artifact-type", required=True, help="what the document is, e.g. application/spdx+json")
    p.add_argument("--media-type", help="the document's media type (default: the artifact type)")
    p.add_argument("--annotation", action="append", help="KEY=VALUE on the referrer's manifest (repeatable)")


def cmd_attach(args: argparse.Namespace) -> int:
    annotations = dict(_key_value(a, "--annotation") for a in args.annotation or ())
    image = open_image(args.ref, _options(args))
    document = Path(args.file).read_bytes()
    artifact = referrers.attach(args.ref, image, document, args.media_type or args.artifact_type, args.artifact_type,
                                document_time(image), _options(args), annotations)
    if args.json:
        _emit_json({"subject": image.digest, "digest": artifact.descriptor.digest,
                    "artifactType": args.artifact_type})
    else:
        out.print(f"{args.ref}  {artifact.descriptor.digest}", markup=False)
    return 0


def _key_value(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ReproError(f"{flag} {text!r}: expected KEY=VALUE", f"e.g. {flag} org.example.note=1")
    return key, value


def _print_referrers(args: argparse.Namespace) -> int:
    image = open_image(args.ref, _options(args))
    found, _ = referrers.listing(args.ref, image, _options(args), args.artifact_type or "")
    if args.json:
        _emit_json({"subject": image.digest, "referrers": [d.to_json() for d in found]})
        return 0
    out.print(f"referrers of {image.digest}: {len(found)}", markup=False)
    for d in found:
        created = d.annotations.get(referrers.CREATED, "")
        out.print(f"  {d.digest}  {_human(d.size):>9}  {d.artifact_type}  {created}", markup=False)
    return 0


def add_inspect(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "inspect", cmd_inspect, "show an image's digest, config, layers and history",
                 [_platform(), _json(), REGISTRY])
    p.add_argument("ref")
    p.add_argument("--referrers", action="store_true", help="list the image's OCI 1.1 referrers instead")
    p.add_argument("--artifact-type", help="with --referrers: only those of this artifact type")


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.referrers:
        return _print_referrers(args)
    details = _format_details(args.ref)
    info = image_details(open_image(args.ref, _options(args)))
    if details is not None:
        info["sif"] = details
    if args.json:
        _emit_json(info)
        return 0
    if details is not None:
        _print_sif(details)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key in ("reference", "digest", "mediaType", "platform", "created", "workdir", "user"):
        if info[key]:
            table.add_row(key, str(info[key]))
    table.add_row("config", info["config"]["digest"])
    for key in ("entrypoint", "cmd", "env"):
        if info[key]:
            table.add_row(key, json.dumps(info[key]))
    for key, value in sorted(info["labels"].items()):
        table.add_row("label", f"{key}={value}")
    out.print(table)
    out.print("layers", style="bold")
    for i, layer in enumerate(info["layers"]):
        kind = layer["mediaType"].rsplit(".", 1)[-1]
        out.print(f"  {i:<3}{layer['digest']}  {_human(layer['size']):>10}  {kind:<8}  diff_id {layer['diff_id']}",
                  markup=False)
    if info["history"]:
        out.print("history", style="bold")
        for h in info["history"]:
            note = "  (no layer)" if h["empty_layer"] else ""
            out.print(f"  {h['created']}  {h['created_by']}{note}", markup=False)
    return 0


def add_hash(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "hash", cmd_hash, "print manifest, config and layer digests and diff_ids",
                 [_platform(), _json()])
    p.add_argument("ref")
    p.add_argument("--files", action="store_true", help="also every file of the flattened image with its sha256")


def cmd_hash(args: argparse.Namespace) -> int:
    image = open_image(args.ref, _options(args))
    result = image_digests(image)
    if args.files:
        # lazy: the catalogers load sbom.licenses, which builds license_expression's SPDX index when imported
        from sbom.owners import files_with_packages  # noqa: PLC0415 - lazy, see above

        files = files_with_packages(image)
        if args.json:  # tens of thousands of records: written one by one, never all in memory at once
            jsonout.write({**result, "files": files}, sys.stdout)
            sys.stdout.write("\n")
            return 0
        result["files"] = list(files)
    if args.json:
        _emit_json(result)
        return 0
    out.print(f"manifest  {result['digest']}", markup=False)
    out.print(f"config    {result['config']}", markup=False)
    for i, layer in enumerate(result["layers"]):
        out.print(f"layer {i}   {layer['digest']}  diff_id {layer['diff_id']}", markup=False)
    for record in result.get("files", ()):
        shown = record["sha256"] or (f"-> {record['target']}" if record["target"] else "-")
        out.print(
            f"{record['type']:<8} {record['mode']} {record['uid']}:{record['gid']} "
            f"{record['size']:>10} {shown:<64} {record['path']}",
            markup=False,
        )
    return 0


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="repro", description="Reproducible container images: build, convert, flatten, hash, archive."
    )
    parser.add_argument("--version", action="version", version=f"repro {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (add_build, add_convert, add_flatten, add_diff, add_sbom, add_attach, add_inspect, add_run,
                add_prune, add_archive, add_verify, add_replay, add_hash):
        add(commands)
    return parser


class Terminated(BaseException):
    """A batch system's stop signal: raised where repro is, so that every `finally` still cleans up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame) -> None:
    raise Terminated(signum)


def _os_error_line(exc: OSError, args: argparse.Namespace) -> str:
    """The error line of a failed system call; a full disk names where the space ran out and what to do."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}:{where}"
    store = (args.store or default_store()) if hasattr(args, "store") else None
    places = [exc.filename, *_output_paths(args), store, tempfile.gettempdir()]
    return (f"{(exc.strerror or 'no space left').lower()} ({_free_space(places)}): free some space, or give "
            "--store (or REPRO_STORE) and TMPDIR on a larger disk, and run again")


def _output_paths(args: argparse.Namespace) -> list[str]:
    """The local paths a command writes to (its `dst` and `--output`), for a full disk's message."""
    outputs = getattr(args, "output", None)
    named = [getattr(args, "dst", None), *(outputs if isinstance(outputs, list) else [outputs])]
    paths = []
    for text in filter(None, named):
        if not is_reference(text):
            paths.append(text)
            continue
        reference = parse(text)
        if not reference.body.startswith("//"):  # a registry or a daemon is not a local path
            with contextlib.suppress(ReproError):
                paths.append(reference.split_path()[0])
    return paths


def _free_space(places: Sequence[str | Path | None]) -> str:
    """`free: 0 B at /x, 3.1 GiB at /tmp`, one entry per file system among `places`."""
    seen: dict[int, str] = {}
    for place in places:
        if not place:
            continue
        existing = Path(place).absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        with contextlib.suppress(OSError):
            device = existing.stat().st_dev
            if device not in seen:
                seen[device] = f"{_human(shutil.disk_usage(existing).free)} at {place}"
    return "free: " + ", ".join(seen.values()) if seen else "free space unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    logging.basicConfig(format="repro: warning: %(message)s", level=logging.WARNING, stream=sys.stderr)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, _terminate)
    try:
        return args.func(args)
    except Terminated as exc:
        err.print(f"repro: stopped by signal {exc.signum}", markup=False)
        return 128 + exc.signum
    except ReproError as exc:
        if args.debug:
            raise
        err.print(f"repro: {exc}", markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("repro: interrupted", markup=False)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if args.debug:
            raise
        err.print(f"repro: {_os_error_line(exc, args)}", markup=False)
        return EXIT_BAD_INPUT
    except Exception as exc:  # a bug of ours: still one line, the traceback with --debug
        if args.debug:
            raise
        err.print(f"repro: internal error: {exc.__class__.__name__}: {exc} (rerun with --debug and report it)",
                  markup=False)
        return 70

