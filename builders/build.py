"""`repro build`: a spec becomes an image, one layer per step, the same digest for the same inputs.

Steps that only add files (copy, file) are written straight into a layer. Steps that run commands
(run, packages) need the image as a directory: it is materialized once, on the first such step that
misses the cache, and kept current as later steps change it. Every step's layer goes through the
cache, keyed by the parent chain of diff_ids, the step, and the content of its inputs.
"""

from __future__ import annotations

import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builders import cache as _cache
from builders import lock as _lock
from builders import tree as _tree
from builders.spec import Spec, Step, check_copy_source
from converters.oci_layout import LayoutBlobs
from repro import executors
from repro.blobs import BlobImage, BlobLayer
from repro.confined import Tree, clean_path, remove_tree
from repro.errors import CheckFailed, ReproError
from repro.extract import Extractor, Policy
from repro.flatten import WHITEOUT_PREFIX, extract, whiteout_target
from repro.image import Image, Platform, parse_json
from repro.layers import TarWriter, source_date_epoch
from repro.mutate import NewLayer, commit, new_config, rfc3339, write_layer
from repro.reaper import reaper, remove_command
from repro.refs import Options, open_image
from repro.store import Layout
from repro.tarstream import TarStream
from repro.transfer import manifest_descriptor

DEFAULT_ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"




def open_store(path: Path) -> Layout:
    if (path / "oci-layout").exists():
        return Layout.open_existing(path)
    path.mkdir(parents=True, exist_ok=True)
    return Layout.initialize(path)


@dataclass
class StepReport:
    number: int
    total: int
    title: str
    cached: bool
    seconds: float
    size: int


@dataclass
class BuildResult:
    image: Image
    digest: str
    tag: str
    steps: list[StepReport] = field(default_factory=list)
    lock_file: Path | None = None


def _epoch(spec: Spec) -> int:
    return source_date_epoch(int(spec.raw.get("source_date_epoch", 0)))


def _title(step: Step) -> str:
    if step.kind == "copy":
        return f"copy {step.value['src']} -> {step.value['dst']}"
    if step.kind == "file":
        return f"file {step.value['dst']}"
    if step.kind == "packages":
        return "packages " + " ".join(step.value)
    return f"run {step.value if isinstance(step.value, str) else ' '.join(step.value)}"


def _owner(value: dict) -> tuple[int, int]:
    uid, _, gid = (value.get("owner") or "0:0").partition(":")
    return int(uid), int(gid)


def _copy_entries(spec: Spec, step: Step, epoch: int) -> Callable[[TarWriter], None]:
    """The layer of a copy step: sources beside the spec, placed like `COPY` does."""
    source = check_copy_source(spec, step)
    dst = step.value["dst"]
    mode = int(step.value["mode"], 8) if step.value.get("mode") else None
    uid, gid = _owner(step.value)

    def produce(tar: TarWriter) -> None:
        from repro.mutate import directory_entries

        if source.is_dir():
            base = clean_path(dst)
            items = list(directory_entries(source, epoch))
        else:
            target = dst.rstrip("/") + "/" + source.name if dst.endswith("/") else dst
            base = clean_path(target).rpartition("/")[0]
            st = source.stat()
            info = tarfile.TarInfo(clean_path(target).rpartition("/")[2])
            info.size, info.mode, info.mtime = st.st_size, st.st_mode & 0o7777, min(int(st.st_mtime), epoch)
            items = [(info, source)]
        for info, path in items:
            info.name = f"{base}/{info.name}" if base else info.name
            _refuse_whiteout(info.name, spec, step)
            if info.islnk():
                info.linkname = f"{base}/{info.linkname}" if base else info.linkname
            info.uid, info.gid = uid, gid
            if mode is not None and info.isreg():
                info.mode = mode
            if info.isreg():
                with open(path, "rb") as f:
                    tar.add(info, f)
            else:
                tar.add(info)

    return produce


def _refuse_whiteout(name: str, spec: Spec, step: Step) -> None:
    """A name that a layer would read as a whiteout deletes files instead of adding one."""
    if name.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
        raise spec.error(f"steps[{step.index}].{step.kind}", f"{name!r}: names starting with {WHITEOUT_PREFIX} are "
                         "whiteouts in a layer (they delete files)", "rename the file")


def _file_entry(spec: Spec, step: Step, epoch: int) -> Callable[[TarWriter], None]:
    def produce(tar: TarWriter) -> None:
        import io

        data = step.value["content"].encode()
        info = tarfile.TarInfo(clean_path(step.value["dst"]))
        _refuse_whiteout(info.name, spec, step)
        info.size, info.mtime = len(data), epoch
        info.mode = int(step.value.get("mode") or "0644", 8)
        info.uid, info.gid = _owner(step.value)
        tar.add(info, io.BytesIO(data))

    return produce


def _container_config(base: dict, spec: Spec) -> dict:
    """The base's config with the spec's on top (docker's rules: ENTRYPOINT resets CMD)."""
    out = dict(base)
    conf = spec.config
    env = [e for e in out.get("Env") or [] if e.partition("=")[0] not in (conf.get("env") or {})]
    env += [f"{k}={v}" for k, v in (conf.get("env") or {}).items()]
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, f"PATH={DEFAULT_ENV_PATH}")
    out["Env"] = env
    if "entrypoint" in conf:
        out["Entrypoint"] = conf["entrypoint"]
        out.pop("Cmd", None)
    if "cmd" in conf:
        out["Cmd"] = conf["cmd"]
    for key, name in (("workdir", "WorkingDir"), ("user", "User"), ("stop_signal", "StopSignal")):
        if key in conf:
            out[name] = conf[key]
    if conf.get("labels"):
        out["Labels"] = {**(out.get("Labels") or {}), **conf["labels"]}
    if conf.get("exposed_ports"):
        out["ExposedPorts"] = {
            **(out.get("ExposedPorts") or {}),
            **{p if "/" in p else f"{p}/tcp": {} for p in conf["exposed_ports"]},
        }
    if conf.get("volumes"):
        out["Volumes"] = {**(out.get("Volumes") or {}), **{v: {} for v in conf["volumes"]}}
    return {k: v for k, v in out.items() if v not in (None, [], {})}


MAX_DPKG_STATUS = 256 << 20


def _installed_packages(root: Path) -> list[dict]:
    """dpkg's status file in the tree, read inside it (a step may have made it a link to the host's)."""
    try:
        with Tree(root) as tree, tree.open_file("var/lib/dpkg/status") as status:
            text = status.read(MAX_DPKG_STATUS + 1).decode(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return []
    if len(text) > MAX_DPKG_STATUS:
        raise ReproError(f"{root}: /var/lib/dpkg/status is larger than {MAX_DPKG_STATUS >> 20} MiB",
                         "the image is damaged or hostile")
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(" "))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            out.append(
                {
                    "name": fields["Package"],
                    "version": fields.get("Version", ""),
                    "architecture": fields.get("Architecture", ""),
                    "sha256": "",
                }
            )
    return sorted(out, key=lambda p: p["name"])


class Builder:
    def __init__(
        self,
        spec: Spec,
        store: Layout,
        executor: str | None = None,
        use_cache: bool = True,
        report: Callable[[StepReport], None] | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.spec = spec
        self.store = store
        self.executor_name = executor
        self.cache = _cache.Cache(store, use_cache)
        self.report = report or (lambda r: None)
        self.log = log
        self.epoch = _epoch(spec)
        self.created = rfc3339(self.epoch)
        self.layers: list[NewLayer] = []
        self.history: list[dict] = []
        self.base_config: dict = {}
        self.platform = Platform.host()
        self.resolved: dict = {"base": {}, "packages": []}
        self.tree: Path | None = None
        self.used_keys: list[str] = []  # the cache keys of this build's layers, for --cache-to
        self.snapshot: dict[str, _tree.Node] | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="repro-build-"))
        self.executor = ""
        self.policy = Policy()

    # --- base ---------------------------------------------------------------------------
    def _base(self, reports: list[StepReport], total: int) -> None:
        kind, value = self.spec.base
        started = time.monotonic()
        if kind == "scratch":
            self.resolved["base"] = {"scratch": True}
            return
        if kind == "image":
            try:
                image = open_image(value, Options())
                from converters.oci_layout import copy_into

                with self.store.transaction():
                    copy_into(self.store, image)
            except ReproError as exc:
                raise self.spec.error("base.image", f"cannot read {value!r}: {exc}", "check the reference") from None
            config = parse_json(image.raw_config, f"{value}: config")
            self.base_config = config.get("config") or {}
            self.history = list(config.get("history") or [])
            self.platform = image.config.platform
            self.layers = [NewLayer(layer.descriptor, layer.diff_id) for layer in image.layers]
            self.resolved["base"] = {"image": value, "digest": image.digest}
            reports.append(
                StepReport(
                    0,
                    total,
                    f"base {value}",
                    False,
                    time.monotonic() - started,
                    sum(x.descriptor.size for x in self.layers),
                )
            )
            return
        options = dict(value)
        definition = {"debian": options, "epoch": self.epoch}
        cache_key = _cache.key([], definition, {})
        self.used_keys.append(cache_key)
        entry = self.cache.get(cache_key)
        if entry is None:
            from builders.debian import bootstrap

            packages: list[dict] = []

            def produce(tar: TarWriter) -> None:
                packages.extend(bootstrap(options, self.epoch, tar, f"{self.spec.path}: base.debian"))

            layer = write_layer(self.store, produce, "gzip")
            history = {
                "created": self.created,
                "created_by": f"repro base: mmdebstrap {options.get('variant', 'minbase')}"
                f" {options['suite']} {' '.join(options.get('packages') or [])}".rstrip(),
            }
            self.cache.put(cache_key, layer.descriptor, layer.diff_id, history, {"packages": packages})
            entry = {
                "descriptor": layer.descriptor,
                "diff_id": layer.diff_id,
                "history": history,
                "packages": packages,
                "hit": False,
            }
        self.layers.append(NewLayer(entry["descriptor"], entry["diff_id"]))
        self.history.append(entry["history"])
        self.resolved["base"] = {"debian": options}
        self.resolved["packages"] = entry.get("packages", [])
        self.base_config = {"Env": [f"PATH={DEFAULT_ENV_PATH}"]}
        reports.append(
            StepReport(
                0,
                total,
                f"base debian {options['suite']}",
                entry.get("hit", True),
                time.monotonic() - started,
                entry["descriptor"].size,
            )
        )

    # --- the working tree ---------------------------------------------------------------
    def _materialize(self) -> Path:
        if self.tree is not None:
            return self.tree
        self.executor = executors.choose(self.executor_name)
        self.policy = Policy(id_offset=executors.id_offset(self.executor))
        tree = executors.new_root(self._tmp, self.executor)
        if self.layers:
            image = self._commit(tag="")
            stats = extract(image, tree, self.policy)
            if stats.skipped_devices and self.log:
                self.log(f"left {stats.skipped_devices} device nodes out of the working tree (runs get a minimal /dev)")
        self.tree = tree
        self.snapshot = _tree.snapshot(tree, id_offset=self.policy.id_offset)
        return tree

    def _apply_to_tree(self, layer: NewLayer) -> None:
        """Keep the working tree current after a copy/file step (or a cached step): the layer's
        entries and whiteouts go through the one extractor, confined to the tree."""
        if self.tree is None:
            return
        blob_layer = BlobLayer(LayoutBlobs(self.store, self.store.name), layer.descriptor, layer.diff_id)
        what = f"{self.store.name}: layer {layer.descriptor.digest}"
        extractor = Extractor(self.tree, what, self.policy)
        try:
            with blob_layer.open_uncompressed(read_ahead=True) as stream:
                tar = TarStream(stream, what)
                for info in tar:
                    path = clean_path(info.name)
                    kind = whiteout_target(path)
                    if kind is None:
                        extractor.add(path, info, tar.content() if info.isreg() else None)
                    elif kind[0] == "whiteout":
                        extractor.whiteout(kind[1])
                    elif kind[0] == "opaque":
                        extractor.opaque(kind[1])
                    else:
                        raise ReproError(f"{what}: {info.name!r} is not a valid whiteout",
                                         "the layer is damaged or hostile")
                stream.finish()
            extractor.finish()
        finally:
            extractor.close()
        self.snapshot = _tree.snapshot(self.tree, self.snapshot, self.policy.id_offset)

    def _run_step(self, step: Step) -> tuple[NewLayer, list[str], list[dict]]:
        tree = self._materialize()
        before = self.snapshot or {}
        env = dict(e.partition("=")[::2] for e in _container_config(self.base_config, self.spec).get("Env", []))
        env.setdefault("PATH", DEFAULT_ENV_PATH)
        env.update({"HOME": "/root", "SOURCE_DATE_EPOCH": str(self.epoch), "LC_ALL": "C.UTF-8"})
        if step.kind == "packages":
            env["DEBIAN_FRONTEND"] = "noninteractive"
            # apt drops to its _apt user for downloads; in a plain user's namespace (bwrap) there is no
            # such id, and as root the step is confined already: download as root inside, everywhere, so
            # that the files apt leaves are owned alike as root and as a plain user.
            apt = "apt-get -o APT::Sandbox::User=root"
            packages = " ".join(step.value)
            script = f"{apt} update -qq && {apt} install -y -qq --no-install-recommends {packages} > /dev/null"
        else:
            script = step.value
        argv = list(script) if isinstance(script, list) else ["/bin/sh", "-c", script]
        result = executors.run(self.executor, tree, executors.Command(argv, env, "/", step.network))
        if result.exit_code != 0:
            failure = CheckFailed(
                f"{self.spec.path}:{step.line}: steps[{step.index}] ({_title(step)}) exited {result.exit_code}; "
                f"last lines:\n{result.tail.rstrip()}",
                "nothing was written; fix the command and build again",
            )
            raise failure
        packages = _installed_packages(tree) if step.kind == "packages" else []
        normalized = _tree.apply_hygiene(tree, before)
        after = _tree.snapshot(tree, before, self.policy.id_offset)
        changed, deleted = _tree.changes(before, after)
        layer = write_layer(
            self.store, lambda tar: _tree.write_changes(tar, tree, after, changed, deleted, self.epoch), "gzip"
        )
        self.snapshot = after
        return layer, normalized, packages

    # --- the whole build -----------------------------------------------------------------
    def _commit(self, tag: str) -> BlobImage:
        config = new_config(
            self.platform,
            self.created,
            [x.diff_id for x in self.layers],
            self.history,
            _container_config(self.base_config, self.spec),
        )
        image = commit(self.store, config, self.layers, self.spec.annotations, name=f"oci:{self.store.path}:{tag}")
        if tag:
            self.store.add_manifest(manifest_descriptor(image, {"org.opencontainers.image.ref.name": tag}), tag)
        return image

    def build(self) -> BuildResult:
        with reaper(remove_command(str(self._tmp))):  # the working tree goes even if repro is killed
            return self._build()

    def _build(self) -> BuildResult:
        steps = self.spec.steps
        total = len(steps)
        reports: list[StepReport] = []
        try:
            self._base(reports, total)
            for report in reports:
                self.report(report)
            for step in steps:
                started = time.monotonic()
                parent = [x.diff_id for x in self.layers]
                inputs = {}
                if step.kind == "copy":
                    inputs = _cache.hash_inputs([check_copy_source(self.spec, step)])
                definition = {**step.definition(), "epoch": self.epoch}
                if step.kind in ("run", "packages"):
                    definition["env"] = _container_config(self.base_config, self.spec).get("Env")
                cache_key = _cache.key(parent, definition, inputs)
                self.used_keys.append(cache_key)
                entry = self.cache.get(cache_key)
                cached = entry is not None
                if entry is not None:
                    layer = NewLayer(entry["descriptor"], entry["diff_id"])
                    history = entry["history"]
                    self.resolved["packages"] = sorted(
                        {p["name"]: p for p in [*self.resolved["packages"], *entry.get("packages", [])]}.values(),
                        key=lambda p: p["name"],
                    )
                    self._apply_to_tree(layer)
                elif step.kind in ("copy", "file"):
                    produce = (
                        _copy_entries(self.spec, step, self.epoch)
                        if step.kind == "copy"
                        else _file_entry(self.spec, step, self.epoch)
                    )
                    layer = write_layer(self.store, produce, "gzip")
                    history = {"created": self.created, "created_by": f"repro {_title(step)}"}
                    self.cache.put(cache_key, layer.descriptor, layer.diff_id, history)
                    self._apply_to_tree(layer)
                else:
                    layer, normalized, packages = self._run_step(step)
                    history = {"created": self.created, "created_by": f"repro {_title(step)}"}
                    if normalized:
                        history["comment"] = (
                            "normalized: "
                            + ", ".join(sorted(normalized)[:50])
                            + (f" and {len(normalized) - 50} more" if len(normalized) > 50 else "")
                        )
                    if packages:
                        known = {p["name"]: p for p in self.resolved["packages"]}
                        new = [p for p in packages if p["name"] not in known]
                        self.resolved["packages"] = sorted([*known.values(), *new], key=lambda p: p["name"])
                    self.cache.put(
                        cache_key,
                        layer.descriptor,
                        layer.diff_id,
                        history,
                        {"packages": packages} if packages else None,
                    )
                self.layers.append(layer)
                self.history.append(history)
                report = StepReport(
                    step.index + 1, total, _title(step), cached, time.monotonic() - started, layer.descriptor.size
                )
                reports.append(report)
                self.report(report)
            image = self._commit(self.spec.tag)
            return BuildResult(image, image.digest, self.spec.tag, reports)
        finally:
            remove_tree(self._tmp)


def build(
    spec: Spec,
    store: Layout,
    *,
    executor: str | None = None,
    use_cache: bool = True,
    locked: bool = False,
    report=None,
    log=None,
    cache_from: list[str] | None = None,
    cache_to: list[str] | None = None,
) -> BuildResult:
    builder = Builder(spec, store, executor, use_cache, report, log)
    for ref in cache_from or []:
        imported = _cache.import_from(builder.cache, ref)
        if log:
            log(f"cache from {ref}: {imported} entries")
    result = builder.build()
    for ref in cache_to or []:
        _cache.export_to(builder.cache, result.image, builder.used_keys, ref)
    resolved = _lock.new_lock(builder.resolved["base"], builder.resolved["packages"])
    existing = _lock.read(spec.path)
    if locked:
        if existing is None:
            raise ReproError(f"{_lock.lock_path(spec.path)}: no lock file", "build once without --locked to create it")
        _lock.compare(spec.path, existing, resolved)
    if existing != resolved:
        result.lock_file = _lock.write(spec.path, resolved)
    else:
        result.lock_file = _lock.lock_path(spec.path)
    _attach_provenance(spec, store, result)
    return result


def _attach_provenance(spec: Spec, store: Layout, result: BuildResult) -> None:
    """The build's provenance (spec, lock, SOURCE_DATE_EPOCH) as a referrer of the image in the store, so
    it travels with `convert --referrers` and into `repro archive`. Same build, same statement bytes."""
    from repro import provenance, referrers
    from repro.mutate import document_time

    statement = provenance.for_spec(result.image, str(spec.path))
    referrers.attach(f"oci:{store.path}:{result.tag}", result.image, statement, provenance.MEDIA_TYPE,
                     provenance.MEDIA_TYPE, document_time(result.image))


def run_tests(spec: Spec, image: Image, executor: str | None = None) -> list[tuple[dict, executors.Result, bool]]:
    """Run the spec's tests in the flattened image; returns (test, result, passed) for each."""
    results = []
    name = executors.choose(executor)
    tmp = Path(tempfile.mkdtemp(prefix="repro-test-"))
    try:
        root = executors.new_root(tmp, name)
        extract(image, root, Policy(id_offset=executors.id_offset(name)))
        config = image.config
        env = dict(e.partition("=")[::2] for e in config.env)
        env.setdefault("PATH", DEFAULT_ENV_PATH)
        for test in spec.tests:
            result = executors.run(
                name, root, executors.Command(["/bin/sh", "-c", test["run"]], env, config.workdir or "/", False)
            )
            passed = result.exit_code == test.get("exit", 0) and test.get("output", "") in result.output
            results.append((test, result, passed))
    finally:
        remove_tree(tmp)
    return results
