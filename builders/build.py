"""`repro build`: a spec becomes an image, one layer per step, the same digest for the same inputs.

Steps that only add files (copy, file) are written straight into a layer. Steps that run commands
(run, packages) need the image as a directory: it is materialized once, on the first such step that
misses the cache, and kept current as later steps change it. Every step's layer goes through the
cache, keyed by the parent chain of diff_ids, the step, and the content of its inputs. Each step
kind's own rules (what a copy or file layer holds, what a run or packages step runs) are in
builders/steps.py; the provenance of a build is attached by the caller (builders/definition.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from builders import apt_sandbox, steps
from builders import cache as _cache
from builders import hygiene as _hygiene
from builders import lock as _lock
from builders import sources as _sources
from builders import tree as _tree
from builders.cache import CacheEntry
from builders.debian import bootstrap, debian_architecture
from builders.listing import Listing
from builders.spec import Spec, Step
from repro.blobs import BlobImage, BlobLayer, IndexImage
from repro.clock import rfc3339
from repro.confined import Tree, clean_path, remove_tree, resolve_listed
from repro.errors import CheckFailed, ReproError
from repro.extract import Extractor, Policy
from repro.flatten import apply_layer, extract
from repro.image import OCI_INDEX, REF_NAME, Descriptor, Image, Index, Platform, canonical_json, parse_json
from repro.layers import GZIP_STREAM, TarWriter
from repro.mutate import NewLayer, commit, new_config, write_layer
from repro.refs import Options, open_image
from repro.run import executors
from repro.run.executors import subids
from repro.run.reaper import reaper, remove_command
from repro.store import Layout, LayoutBlobs, copy_into
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

    @property
    def images(self) -> list[Image]:
        """The image of each platform built (an index's children): what the build's provenance is about."""
        return list(self.image.children) if isinstance(self.image, IndexImage) else [self.image]


def _container_config(base: dict, spec: Spec) -> dict:
    """The base's config with the spec's on top (docker's rules: ENTRYPOINT resets CMD)."""
    out = {k: v for k, v in base.items() if k != "OnBuild"}  # a base's triggers are not the child's (docker)
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


def _left_out_parts(record: dict) -> tuple[NewLayer | None, list[str]]:
    """A cached step's left-out record: the layer of the files its run left out, if any, and the
    paths its run removed."""
    descriptor = record.get("descriptor")
    layer = NewLayer(Descriptor.from_json(descriptor, "cache"), record["diff_id"]) if descriptor else None
    return layer, list(record.get("removed") or [])


class Builder:
    def __init__(
        self,
        spec: Spec,
        store: Layout,
        executor: str | None = None,
        use_cache: bool = True,
        report: Callable[[StepReport], None] | None = None,
        log: Callable[[str], None] | None = None,
        platform: Platform | None = None,
        compressor: str = _lock.DEFAULT_COMPRESSOR,
    ):
        self.spec = spec
        self.store = store
        self.compressor = compressor  # the gzip compressor of every layer this build writes (the lock's)
        self.executor_name = executor
        self.cache = _cache.Cache(store, use_cache)
        self.report = report or (lambda r: None)
        self.log = log
        self.epoch = spec.epoch
        self.created = rfc3339(self.epoch)
        self.layers: list[NewLayer] = []
        self.history: list[dict] = []
        self.base_config: dict = {}
        self.tag = "" if spec.prefix else spec.tag  # stages and the platforms of an index stay untagged
        self.target = platform  # --platform: what the build is for, and so its stages without a platform of their own
        own = Platform.parse(spec.platform) if spec.platform else None  # FROM --platform: this one is for that
        self.requested = own or platform  # the image is for it, built under emulation if foreign
        self.platform = self.requested or Platform.host()
        self.resolved: dict = {"base": {}, "packages": []}
        self.tree: Path | None = None
        self.used_keys: list[str] = []  # the cache keys of this build's layers, for --cache-to
        self.snapshot: dict[str, _tree.Node] | None = None
        self.left_out = _hygiene.LeftOut()  # what the tree holds and the image does not (apt lists, /tmp)
        self.left_record: dict | None = None  # the last step's account of it, for the cache
        # cached steps' left-out files while there is no tree: (the layers under them, the cache's record);
        # put back when a step needs the tree, so that a build of cache hits never makes one
        self.pending_left: list[tuple[int, dict]] = []
        self.listing: Listing | None = None  # the names of the layers so far, while there is no tree
        self._tmp = Path()  # the working directory, made when the build starts (see build)
        self.executor = ""
        self.policy = Policy()
        self.stage_images: dict[str, tuple[BlobImage, dict]] = {}  # built stages: image, container config
        self.stages: dict[str, Spec] = spec.stages
        self.building: tuple[str, ...] = ()  # the stages being built, to refuse a cycle
        # a plain user's tree is the user's on disk: the image's other owners (see _claim)
        self.claimed: dict[str, tuple[int, int]] = {}
        self.subids = False  # a plain user's root steps run with the user's subordinate ids (executors/subids.py)
        self.sources: dict[tuple[str, str], Image] = {}  # images copy steps read from: reference, platform

    # --- base ---------------------------------------------------------------------------
    def _base(self, reports: list[StepReport], total: int) -> None:
        kind, value = self.spec.base
        started = time.monotonic()
        if kind == "scratch":
            self.resolved["base"] = {"scratch": True}
            return
        if kind == "stage":
            image, config = self._stage(value)
            self.base_config = dict(config)
            self.history = list(parse_json(image.raw_config, f"stage {value}: config").get("history") or [])
            self.platform = image.config.platform
            self.layers = [NewLayer(layer.descriptor, layer.diff_id) for layer in image.layers]
            self.resolved["base"] = {"stage": value}
            reports.append(StepReport(0, total, f"base stage {value}", True, time.monotonic() - started,
                                      sum(x.descriptor.size for x in self.layers)))
            return
        if kind == "image":
            try:
                image = open_image(value, Options(platform=self.requested))
                with self.store.transaction():
                    copy_into(self.store, image)
            except ReproError as exc:
                raise self.spec.error("base.image", f"cannot read {value!r}: {exc}", "check the reference") from None
            config = parse_json(image.raw_config, f"{value}: config")
            self.base_config = config.get("config") or {}
            self.history = list(config.get("history") or [])
            self.platform = image.config.platform
            if self.requested and not self.platform.matches(self.requested):
                raise self.spec.error("base.image", f"{value} is for {self.platform}, not {self.requested}",
                                      "give a base with that platform (or an index that has it)")
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
        if self.foreign:
            options["arch"] = debian_architecture(self.platform)
        definition = {"debian": options, "epoch": self.epoch}
        cache_key = self._cache_key([], definition, {})
        self.used_keys.append(cache_key)
        entry = self.cache.get(cache_key)
        cached = entry is not None
        if entry is None:
            packages: list[dict] = []

            def produce(tar: TarWriter) -> None:
                packages.extend(bootstrap(options, self.epoch, tar, f"{self.spec.path}: base.debian"))

            layer = self._write_layer(produce)
            history = {
                "created": self.created,
                "created_by": f"repro base: mmdebstrap {options.get('variant', 'minbase')}"
                f" {options['suite']} {' '.join(options.get('packages') or [])}".rstrip(),
            }
            entry = CacheEntry(layer.descriptor, layer.diff_id, history, packages)
            self.cache.put(cache_key, entry)
        self.layers.append(NewLayer(entry.descriptor, entry.diff_id))
        self.history.append(entry.history)
        self.resolved["base"] = {"debian": options}
        self.resolved["packages"] = entry.packages or []
        self.base_config = {"Env": [f"PATH={DEFAULT_ENV_PATH}"]}
        reports.append(
            StepReport(
                0,
                total,
                f"base debian {options['suite']}",
                cached,
                time.monotonic() - started,
                entry.descriptor.size,
            )
        )

    # --- the working tree ---------------------------------------------------------------
    @property
    def foreign(self) -> bool:
        """Built for another platform than the host's (asked for, or its base's): its steps run under emulation."""
        platform = self.platform
        return bool(platform.architecture) and not Platform.host().matches(
            Platform(platform.os or "linux", platform.architecture, platform.variant))

    def _materialize(self) -> Path:
        if self.tree is not None:
            return self.tree
        self.executor = (executors.choose(self.executor_name, platform=self.platform) if self.foreign
                         else executors.choose(self.executor_name))
        self.policy = Policy(id_offset=executors.id_offset(self.executor))
        self.subids = self.executor == "bwrap" and subids.available()
        tree = executors.new_root(self._tmp, self.executor)
        pending = dict(self.pending_left)
        self.pending_left = []
        under = min(pending, default=len(self.layers))  # the layers flattened at once, below any left-out files
        hashes: dict[str, str] = {}
        if under:
            image = self._commit(tag="", count=under)
            stats = extract(image, tree, self.policy, self._owners(), hashes)
            if stats.skipped_devices and self.log:
                self.log(f"left {stats.skipped_devices} device nodes out of the working tree (runs get a minimal /dev)")
        self.tree = tree
        for change in self._stack(pending, under):
            if isinstance(change, NewLayer):
                self._extract_layer(change)
            else:
                self._put_back_left_out(change)
        self.listing = None  # the snapshot names the tree from now on
        # the files' hashes as extracted, unless a layer or left-out files went on top since
        self.snapshot = self._snapshot(None, hashes if under == len(self.layers) and not pending else None)
        return tree

    def _stack(self, pending: dict[int, dict], start: int) -> Iterator[NewLayer | dict]:
        """The layers from `start` up, and the left-out records of cached steps (keyed by the number of
        layers under them) in their places between them: the order in which the tree takes them."""
        for index in range(start, len(self.layers) + 1):
            if index in pending:
                yield pending[index]
            if index < len(self.layers):
                yield self.layers[index]

    def _names(self) -> Callable[[str], tuple[str, str] | None]:
        """(kind, link target) of a path of the image being built: from the tree's snapshot, or, while
        no step has needed the tree, from the layers' headers (builders/listing.py), never extracted."""
        if self.tree is not None:
            snapshot = self.snapshot or {}
            return lambda path: (node.kind, node.link) if (node := snapshot.get(path)) is not None else None
        if self.listing is None:
            listing = Listing()
            for change in self._stack(dict(self.pending_left), 0):
                self._list(listing, change)
            self.listing = listing
        return self.listing.get

    def _list(self, listing: Listing, change: NewLayer | dict) -> None:
        """Apply a layer, or a cached step's left-out record, to the listing."""
        if isinstance(change, dict):
            layer, removed = _left_out_parts(change)
            if layer is not None:
                self._list(listing, layer)
            for path in removed:
                listing.remove(path)
            return
        what, opened = self._open_layer(change)
        with opened as stream:
            listing.apply(stream, what)
            stream.finish()

    def _apply_to_tree(self, layer: NewLayer) -> None:
        """Keep the working tree current after a copy/file step (or a cached step): the layer's
        entries and whiteouts go through the one extractor, confined to the tree. Without a tree, the
        listing of its names takes the layer, if there is one."""
        if self.tree is None:
            if self.listing is not None:
                self._list(self.listing, layer)
            return
        before = self.snapshot or {}
        self._extract_layer(layer)
        self.snapshot = self._snapshot(self.snapshot)
        self.left_out.follow(before, self.snapshot)

    def _restore_left_out(self, record: dict | None) -> None:
        """A cached step: the account of what its run left out of its layer (apt's lists for the next
        RUN, /tmp), and those files in the tree; without a tree, they wait for one (see _materialize)."""
        record = record or {}
        if record.get("descriptor") or record.get("removed"):
            if self.tree is None:
                self.pending_left.append((len(self.layers) + 1, record))  # above this step's layer
                if self.listing is not None:
                    self._list(self.listing, record)
            else:
                self._put_back_left_out(record)
                self.snapshot = self._snapshot(self.snapshot)
        self.left_out.restore(record)

    def _put_back_left_out(self, record: dict) -> None:
        assert self.tree is not None
        layer, removed = _left_out_parts(record)
        if layer is not None:
            self._extract_layer(layer)
        with Tree(self.tree, f"{self.store.name}: cache", self.policy.id_offset or None) as tree:
            for path in removed:
                tree.remove(path, follow=False)

    def _extract_layer(self, layer: NewLayer) -> None:
        assert self.tree is not None
        what, opened = self._open_layer(layer)
        extractor = Extractor(self.tree, what, self.policy, owners=self._owners())
        try:
            with opened as stream:
                apply_layer(extractor, stream, what)
                stream.finish()
            extractor.finish()
        finally:
            extractor.close()

    def _open_layer(self, layer: NewLayer) -> tuple[str, BinaryIO]:
        """(its name in errors, the uncompressed stream, checked) of a layer of the store."""
        blob_layer = BlobLayer(LayoutBlobs(self.store, self.store.name), layer.descriptor, layer.diff_id)
        return f"{self.store.name}: layer {layer.descriptor.digest}", blob_layer.open_uncompressed(read_ahead=True)

    def _owners(self) -> dict[str, tuple[int, int]] | None:
        """The table in which a plain user's extractions keep the owners the tree cannot take."""
        return self.claimed if os.geteuid() != 0 else None

    def _user(self, text: str, where: str) -> tuple[int, int]:
        """uid and gid of `user[:group]`: numbers as given, names from the tree's passwd and group
        (read inside the tree), and a user's own group when only the user is given, as docker does."""
        name, _, group = text.partition(":")
        passwd = steps.accounts(self._materialize(), "etc/passwd") if not (name.isdigit() and group.isdigit()) else {}
        if name.isdigit():
            uid = int(name)
            gid = next((int(f[3]) for f in passwd.values() if f[2] == name), 0)
        elif name in passwd:
            uid, gid = int(passwd[name][2]), int(passwd[name][3])
        else:
            raise self.spec.error(where, f"user {name!r} is not in the image's /etc/passwd",
                                  "create the user in an earlier step, or give a numeric uid")
        if group.isdigit():
            gid = int(group)
        elif group:
            groups = steps.accounts(self._materialize(), "etc/group")
            if group not in groups:
                raise self.spec.error(where, f"group {group!r} is not in the image's /etc/group",
                                      "create the group in an earlier step, or give a numeric gid")
            gid = int(groups[group][2])
        return uid, gid

    def _destinations(self) -> Callable[..., str]:
        """Where a copy or file step's entries land: as docker does, each entry's directory is looked up
        through the image's own links (a merged-/usr base's bin -> usr/bin), inside the working tree, so
        that a file copied to /bin/x goes to usr/bin/x and never replaces the link by a directory. A
        directory entry is looked up whole (a copied bin/ merges into usr/bin)."""
        if not self.layers:
            return lambda name, whole=False: name
        names = self._names()
        found: dict[str, str] = {}

        def directory(path: str) -> str:
            if path not in found:
                resolved = resolve_listed(path, names)
                found[path] = path if resolved is None else resolved  # a loop, a file on the way: as given
            return found[path]

        def resolve(name: str, whole: bool = False) -> str:
            if whole:
                return directory(name) or name
            parent, _, base = name.rpartition("/")
            if not parent:
                return name
            return f"{directory(parent)}/{base}".lstrip("/")

        return resolve

    def _directories(self) -> Callable[[str], bool]:
        """Whether a path (resolved, as _destinations gives it) is a directory of the image being built."""
        if not self.layers:
            return lambda path: False
        names = self._names()
        return lambda path: (names(path) or ("", ""))[0] == "dir"

    def _cache_mount(self, path: str) -> str:
        """The store's directory kept for a step-local cache at `path` (docker's default id: the path),
        owned by root inside the tree."""
        directory = self.store.path / "cache-mounts" / hashlib.sha256(clean_path(path).encode()).hexdigest()[:32]
        directory.mkdir(parents=True, exist_ok=True)
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode):  # a planted link would bind (and chown) a host directory
            raise ReproError(f"{directory}: the step cache for {path} is not a directory",
                             "the store is damaged or hostile; remove that entry")
        offset = self.policy.id_offset
        if offset and st.st_uid != offset:
            os.chown(directory, offset, offset, follow_symlinks=False)
        return str(directory)

    def _run_step(self, step: Step) -> tuple[NewLayer, list[str], list[dict]]:
        tree = self._materialize()
        before = self.snapshot or {}
        if "env" in step.extras:
            env = dict(step.extras["env"])
        else:
            env = dict(e.partition("=")[::2] for e in _container_config(self.base_config, self.spec).get("Env", []))
        env.setdefault("PATH", DEFAULT_ENV_PATH)
        user = self._user(step.extras["user"], f"steps[{step.index}].user") if step.extras.get("user") else (0, 0)
        home = steps.home(tree, user[0]) if user != (0, 0) else "/root"
        if "env" in step.extras:  # a front end's whole environment: add only what it left out
            env.setdefault("HOME", home)
            env.setdefault("LC_ALL", "C.UTF-8")
            env["SOURCE_DATE_EPOCH"] = str(self.epoch)
        else:
            env.update({"HOME": home, "SOURCE_DATE_EPOCH": str(self.epoch), "LC_ALL": "C.UTF-8"})
        workdir = "/"
        binds: list[tuple[str, str]] = []
        owner = self.policy.id_offset or None
        with Tree(tree, f"{self.spec.path}: {step.where}", owner) as confined:
            if step.extras.get("workdir"):
                workdir = "/" + confined.resolve_dir(step.extras["workdir"], create=True)
            for path in step.extras.get("cache") or []:
                binds.append((self._cache_mount(path), confined.resolve_dir(path, create=True)))
        if step.kind == "packages":
            env["DEBIAN_FRONTEND"] = "noninteractive"
        argv = steps.command(step)
        owners = None
        if self.subids and user == (0, 0):  # the image's owners on the tree for the step, and back
            owners = (str(self._tmp / "owners-given.json"), str(self._tmp / "owners-taken.json"))
            subids.write_table(Path(owners[0]), self.claimed)
        with apt_sandbox.during_step(tree, self._tmp) as apt_binds:  # apt downloads as root inside, for any user
            command = executors.Command(argv, env, workdir, step.network, (*binds, *apt_binds), user=user,
                                        owners=owners)
            result = executors.run(self.executor, tree, command)
        if owners is not None:
            self.claimed = subids.read_table(Path(owners[1]))
        if result.exit_code != 0:
            failure = CheckFailed(
                f"{self.spec.path}:{step.line}: {step.where} ({steps.title(step)}) exited {result.exit_code}; "
                f"last lines:\n{result.tail.rstrip()}",
                "nothing was written; fix the command and build again",
            )
            raise failure
        packages = steps.installed_packages(tree) if step.kind == "packages" else []
        layer, normalized = self._tree_layer(before, user, one_id=os.geteuid() != 0 and owners is None)
        return layer, normalized, packages

    def _directory_step(self, step: Step) -> tuple[NewLayer, list[str]]:
        """mkdir -p in the working tree, so that only what is new (and the parent it changed) enters the layer."""
        tree = self._materialize()
        before = self.snapshot or {}
        owner = (self._user(step.value["owner"], f"steps[{step.index}].directory.owner")
                 if step.value.get("owner") else (0, 0))
        mode = int(step.value.get("mode") or "0755", 8)
        offset = self.policy.id_offset
        with Tree(tree, f"{self.spec.path}: {step.where}", offset or None) as confined:
            path = confined.resolve_dir(step.value["dst"], create=True)
            # the parents it made are the owner's too (0755), as buildah makes WORKDIR's for the USER
            parts = path.split("/")
            made = [p for p in ("/".join(parts[:end]) for end in range(1, len(parts)))
                    if not (p in before and before[p].kind == "dir")] if owner != (0, 0) else []
            for directory, directory_mode in [*((p, 0o755) for p in made), (path, mode)]:
                if owner == (0, 0) and directory_mode == 0o755:
                    continue
                fd = confined.open_dir(directory)
                try:
                    os.fchmod(fd, directory_mode)
                    if os.geteuid() == 0:
                        os.fchown(fd, owner[0] + offset, owner[1] + offset)
                finally:
                    os.close(fd)
        if os.geteuid() != 0 and owner != (0, 0):
            for directory in [*made, path]:
                self.claimed[directory] = owner  # a plain user cannot chown: the layer says who owns it
        return self._tree_layer(before, (0, 0))

    def _snapshot(self, previous: dict[str, _tree.Node] | None,
                  known: dict[str, str] | None = None) -> dict[str, _tree.Node]:
        own = (os.getuid(), os.getgid()) if os.geteuid() != 0 else None
        return self._claim(_tree.snapshot(self._materialize(), previous, self.policy.id_offset, own, known))

    def _claim(self, nodes: dict[str, _tree.Node]) -> dict[str, _tree.Node]:
        """A plain user's snapshot (all root's) with the image's other owners, from the table that
        extraction, directory steps, `user` steps and the root steps' subordinate ids keep."""
        if not self.claimed:
            return nodes
        return {p: dataclasses.replace(n, uid=self.claimed[p][0], gid=self.claimed[p][1])
                if p in self.claimed else n for p, n in nodes.items()}

    def _tree_layer(self, before: dict[str, _tree.Node], user: tuple[int, int],
                    one_id: bool = False) -> tuple[NewLayer, list[str]]:
        """The layer of what changed in the working tree since `before`, less what changes on every run
        (builders/hygiene.py), which stays in the tree for the next steps. A plain user cannot give files
        away: what a step run as another user made is recorded as that user's, as root would have it;
        `one_id`: a plain user's root step ran in bwrap's user namespace of one id."""
        tree = self._materialize()
        normalized = _hygiene.empty_machine_id(tree)
        after = self._snapshot(before)
        if os.geteuid() != 0 and user != (0, 0):
            for path in after:
                if path not in before:
                    self.claimed[path] = user
            after = self._claim(after)
        elif one_id:  # root in bwrap's one id made root's files: what it replaced or removed is root's now
            replaced = {p for p in self.claimed if p not in after or p not in before or after[p].ino != before[p].ino}
            for path in replaced:
                del self.claimed[path]
            after = {p: dataclasses.replace(n, uid=0, gid=0) if p in replaced else n for p, n in after.items()}
        changed, deleted = _tree.changes(before, after)
        shaped = self.left_out.shape(before, after, changed, deleted)
        layer = self._write_layer(
            lambda tar: _tree.write_changes(tar, tree, after, shaped.changed, shaped.whiteouts, self.epoch))
        self.left_record = {**self.left_out.record(), "removed": shaped.removed} if (
            self.left_out.paths or shaped.removed) else None
        if shaped.left and self.left_record is not None:
            # never part of an image, only of the cache: zstd, several times faster than deflate on what a
            # step leaves out (apt's lists and .debs, hundreds of MB after a packages step)
            kept = write_layer(self.store, lambda tar: _tree.write_changes(tar, tree, after, shaped.left, [],
                                                                           self.epoch), "zstd")
            self.left_record.update(descriptor=kept.descriptor.to_json(), diff_id=kept.diff_id)
        self.snapshot = after
        return layer, normalized + shaped.left

    def _write_layer(self, produce: Callable[[TarWriter], None]) -> NewLayer:
        return write_layer(self.store, produce, "gzip", self.compressor)

    def _cache_key(self, parent: list[str], definition: dict, inputs: dict[str, str]) -> str:
        """A step's cache key; it names the compressor (other layer bytes) unless that is the single
        stream, so that the entries made before there was a choice keep their keys."""
        if self.compressor != GZIP_STREAM:
            definition = {**definition, "compressor": self.compressor}
        return _cache.key(parent, definition, inputs)

    # --- the whole build -----------------------------------------------------------------
    def _commit(self, tag: str, count: int | None = None) -> BlobImage:
        """The image of the layers so far; `count`: of the first ones only, an untagged image to extract."""
        layers = self.layers if count is None else self.layers[:count]
        config = new_config(
            self.platform,
            self.created,
            [x.diff_id for x in layers],
            self.history if count is None else [],
            _container_config(self.base_config, self.spec),
        )
        image = commit(self.store, config, layers, self.spec.annotations, name=f"oci:{self.store.path}:{tag}")
        if tag:
            self.store.add_manifest(manifest_descriptor(image, {"org.opencontainers.image.ref.name": tag}), tag)
        return image

    def build(self) -> BuildResult:
        # made here, not when the builder is: a builder that never builds (a --cache-from that fails
        # first) leaves nothing behind. The working tree goes even if repro is killed; otherwise
        # _build removes it.
        self._tmp = Path(tempfile.mkdtemp(prefix="repro-build-"))
        with reaper(remove_command(str(self._tmp)), disarm=True):
            return self._build()

    def _stage(self, name: str) -> tuple[BlobImage, dict]:
        """An earlier stage's image and container config, built on first use (only stages the image needs)."""
        if name in self.stage_images:
            return self.stage_images[name]
        if name in self.building:
            raise ReproError(f"{self.spec.path}: stage {name!r} depends on itself "
                             f"({' -> '.join([*self.building, name])})", "break the cycle of stages")
        stage = Builder(self.stages[name], self.store, self.executor_name, self.cache.enabled, self.report, self.log,
                        self.target, self.compressor)
        stage.cache, stage.used_keys, stage.stages = self.cache, self.used_keys, self.stages
        stage.stage_images, stage.building = self.stage_images, (*self.building, name)
        stage.sources = self.sources
        result = stage.build()
        self.resolved.setdefault("stages", {})[name] = stage.resolved["base"]
        self.resolved.setdefault("stages", {}).update(stage.resolved.get("stages", {}))
        self._add_packages(stage.resolved["packages"])
        self.stage_images[name] = (result.image, _container_config(stage.base_config, stage.spec))
        return self.stage_images[name]

    def _copy_origin(self, step: Step) -> Image | None:
        """The image a copy step reads from: an earlier stage or any reference; None for the context."""
        origin = step.value.get("from")
        if origin is None:
            return None
        if origin in self.stages:
            return self._stage(origin)[0]
        wanted = (origin, str(self.requested or ""))  # read for this stage's platform, as BuildKit does
        if wanted not in self.sources:
            try:
                self.sources[wanted] = open_image(origin, Options(platform=self.requested))
            except ReproError as exc:
                raise self.spec.error(f"steps[{step.index}].copy.from", f"cannot read {origin!r}: {exc}",
                                      "check the reference") from None
            self.resolved.setdefault("sources", {})[origin] = self.sources[wanted].digest
        return self.sources[wanted]

    def _add_packages(self, packages: list[dict]) -> None:
        known = {p["name"]: p for p in self.resolved["packages"]}
        new = [p for p in packages if p["name"] not in known]
        self.resolved["packages"] = sorted([*known.values(), *new], key=lambda p: p["name"])

    def _build(self) -> BuildResult:
        total = len(self.spec.steps)
        reports: list[StepReport] = []
        try:
            self._base(reports, total)
            for report in reports:
                self.report(report)
            for step in self.spec.steps:
                started = time.monotonic()
                parent = [x.diff_id for x in self.layers]
                inputs: dict[str, str] = {}
                origin: Image | None = None
                if step.kind == "copy":
                    origin = self._copy_origin(step)
                    if origin is None:
                        found = _sources.context_sources(
                            self.spec.directory, steps.copy_sources(step, self.platform), steps.exclusions(step),
                            lambda m, h, s=step: self.spec.error(f"steps[{s.index}].copy.src", m, h))
                        inputs = _cache.hash_inputs([s.path for s in found])
                    else:
                        inputs = {"from": origin.digest}
                definition = {**step.definition(), "epoch": self.epoch}
                if self.foreign:
                    definition["platform"] = str(self.platform)
                if step.kind in ("run", "packages") and "env" not in step.extras:
                    definition["env"] = _container_config(self.base_config, self.spec).get("Env")
                if self.left_out.state:  # the same layers, other left-out files: another starting point
                    definition["left_out"] = self.left_out.state
                cache_key = self._cache_key(parent, definition, inputs)
                self.used_keys.append(cache_key)
                entry = self.cache.get(cache_key)
                cached = entry is not None
                created_by = step.extras.get("history") or f"repro {steps.title(step)}"
                if entry is not None:
                    layer = NewLayer(entry.descriptor, entry.diff_id)
                    # the cache holds the layer; its history text is this build's (a Containerfile's RUN and a
                    # spec's run step may share a layer, never a history)
                    history = {**entry.history, "created_by": created_by}
                    self._add_packages(entry.packages or [])
                    self._apply_to_tree(layer)
                    self._restore_left_out(entry.left_out)
                elif step.kind in ("copy", "file"):
                    if step.kind == "copy":
                        owner = (self._user(step.value["owner"], f"steps[{step.index}].copy.owner")
                                 if step.value.get("owner") else None)
                        produce = steps.copy_layer(self.spec, step, self.epoch, owner, origin, self.platform,
                                                self._destinations(), self._directories())
                    else:
                        produce = steps.file_layer(self.spec, step, self.epoch, self._destinations(),
                                                   self._directories())
                    layer = self._write_layer(produce)
                    history = {"created": self.created, "created_by": created_by}
                    self._apply_to_tree(layer)
                    self.cache.put(cache_key, CacheEntry(layer.descriptor, layer.diff_id, history, None,
                                                         self.left_out.record() if self.left_out.paths else None))
                else:
                    packages: list[dict] = []
                    if step.kind == "directory":
                        layer, normalized = self._directory_step(step)
                    else:
                        layer, normalized, packages = self._run_step(step)
                    history = {"created": self.created, "created_by": created_by}
                    if normalized:
                        history["comment"] = (
                            "normalized: "
                            + ", ".join(sorted(normalized)[:50])
                            + (f" and {len(normalized) - 50} more" if len(normalized) > 50 else "")
                        )
                    self._add_packages(packages)
                    self.cache.put(cache_key, CacheEntry(layer.descriptor, layer.diff_id, history, packages or None,
                                                         self.left_record or None))
                self.layers.append(layer)
                self.history.append(history)
                report = StepReport(
                    step.index + 1, total, steps.title(step), cached, time.monotonic() - started, layer.descriptor.size
                )
                reports.append(report)
                self.report(report)
            image = self._commit(self.tag)
            return BuildResult(image, image.digest, self.spec.tag, reports)
        finally:
            try:
                remove_tree(self._tmp)
            except PermissionError:
                if not self.subids:
                    raise
                subids.remove(self._tmp)  # a step killed before it gave the tree back to the user


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
    platforms: list[Platform] | None = None,
) -> BuildResult:
    """Build `spec` into `store`: for the host (or the one platform given), or for several platforms as
    one OCI image index whose manifests each name their platform."""
    wanted: list[Platform | None] = list(platforms or [None])
    several = len(wanted) > 1
    if several and len({str(p) for p in wanted}) != len(wanted):
        raise ReproError(f"--platform names a platform twice: {', '.join(map(str, wanted))}", "name each once")
    builders: list[Builder] = []
    results: list[BuildResult] = []
    existing = _lock.read(spec.path)
    compressor = _lock.layer_compressor(spec.path, existing)
    for platform in wanted:
        target = spec.for_platform(platform)  # a Containerfile's TARGETARCH, a def file's labels follow it
        if platform is not None and target.platform and not Platform.parse(target.platform).matches(platform):
            raise target.error("platform", f"the image is for {target.platform} (its own platform), not {platform}",
                               f"build it for {target.platform} only, or leave its platform out")
        builder = Builder(target, store, executor, use_cache, report, log, platform, compressor)
        builder.tag = "" if several else spec.tag
        if not builders:
            for ref in cache_from or []:
                imported = _cache.import_from(builder.cache, ref)
                if log:
                    log(f"cache from {ref}: {imported} entries")
        builders.append(builder)
        results.append(builder.build())
    result = _index(spec, store, results) if several else results[0]
    for ref in cache_to or []:
        _cache.export_to(builders[0].cache, [r.image for r in results], [k for b in builders for k in b.used_keys],
                         ref)
    locks = {str(b.platform): _lock.new_lock(b.resolved["base"], b.resolved["packages"], compressor,
                                             b.resolved.get("stages"), b.resolved.get("sources")) for b in builders}
    resolved = _lock.for_platforms(locks) if several else next(iter(locks.values()))
    if locked:
        if existing is None:
            raise ReproError(f"{_lock.lock_path(spec.path)}: no lock file", "build once without --locked to create it")
        _lock.compare(spec.path, existing, resolved)
    if existing != resolved:
        result.lock_file = _lock.write(spec.path, resolved)
    else:
        result.lock_file = _lock.lock_path(spec.path)
    return result


def _index(spec: Spec, store: Layout, results: list[BuildResult]) -> BuildResult:
    """One OCI image index over the platforms' images, tagged in the store like a single image."""
    manifests = tuple(dataclasses.replace(manifest_descriptor(r.image), platform=r.image.config.platform)
                      for r in results)
    raw = canonical_json(Index(manifests, {}, OCI_INDEX).to_json())
    descriptor = store.put_bytes(raw, OCI_INDEX)
    store.add_manifest(dataclasses.replace(descriptor, annotations={REF_NAME: spec.tag}), spec.tag)
    image = IndexImage(f"oci:{store.path}:{spec.tag}", raw, OCI_INDEX, [r.image for r in results])
    return BuildResult(image, image.digest, spec.tag, [report for r in results for report in r.steps])


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
                name, root, executors.Command(["/bin/sh", "-c", test["run"]], env, config.workdir or "/", False),
                platform=config.platform,
            )
            passed = result.exit_code == test.get("exit", 0) and test.get("output", "") in result.output
            results.append((test, result, passed))
    finally:
        remove_tree(tmp)
    return results
