"""scrfd.py --ray: the per-photo job of scrfd.py on a Ray cluster, for whole photo archives.

The driver (scrfd.py) checks every option and lists the inputs; Ray Data hands the photos in
small batches to a pool of actors, each holding one detector (the model loads once per actor)
with a fixed number of threads. An actor reads each photo (a path, or a URI of any filesystem
pyarrow reads: s3://, gs://, hdfs://, file://), detects the faces, and writes the outputs of
scrfd.py under temporary names marked with the run's tag. Only when every photo is done does
the driver rename them into place and write the JSON lines, in input order: the files and
lines of a single-process run, and an interrupted run leaves earlier results as they were.

The output folders, the model and the driver's working folder must be at the same path on
every node (a shared filesystem); the photos may instead come from an object store.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence
from urllib.parse import urlparse

import numpy as np
from tqdm import tqdm

from ..detector import SCRFD
from ..errors import UserError, one_line
from ..files import IMAGE_SUFFIXES, StagedOutputs, display, find_images, read_image
from ..photos import Photo, PhotoOutputs, commit_photos, run_photos
from .reach import check_reachable

try:
    import pyarrow
    import pyarrow.fs
    import ray
    import ray.data
except ModuleNotFoundError as missing:  # scrfd.py imports this module only for --ray
    raise UserError(f"--ray needs {missing.name}: python -m pip install -r "
                    "requirements-scale.txt") from None

STAGES = ("read", "preprocess", "inference", "postprocess", "write")
MAX_BATCH = 32  # photos per actor call: enough to hide a call's overhead, few enough to balance
BATCHES_PER_ACTOR = 4  # small runs: at least this many calls per actor, so none waits idle
GLOB_CHARS = "*?["


# ----------------------------------------------------------------------------- inputs
def is_uri(text: str) -> bool:
    """s3://bucket/key, gs://..., file:///abs/path: read through pyarrow.fs, not open()."""
    return "://" in text


class Filesystems:
    """pyarrow filesystems, one per URI scheme and host (an S3 or GCS client is costly to make)."""

    def __init__(self) -> None:
        self._made: dict[str, tuple[pyarrow.fs.FileSystem, str]] = {}

    def resolve(self, uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
        """The filesystem holding `uri` and the path pyarrow knows it by there."""
        parsed = urlparse(uri)
        key = f"{parsed.scheme}://{parsed.netloc}"
        if key in self._made and "%" not in uri:
            filesystem, prefix = self._made[key]
            if uri.startswith(prefix):
                return filesystem, uri[len(prefix):]
        try:
            filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot open {uri}: {one_line(err)}") from None
        if uri.endswith(path):  # the prefix that turns this filesystem's paths back into URIs
            self._made[key] = (filesystem, uri[:len(uri) - len(path)])
        return filesystem, path

    def uri(self, like: str, path: str) -> str:
        """The URI of `path` on the filesystem that resolved `like`."""
        parsed = urlparse(like)
        _, prefix = self._made[f"{parsed.scheme}://{parsed.netloc}"]
        return prefix + path

    def read(self, uri: str) -> bytes:
        filesystem, path = self.resolve(uri)
        try:
            with filesystem.open_input_stream(path) as stream:
                return stream.read()
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {uri}: {one_line(err)}") from None


def glob_match(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Path segments against glob segments; '**' spans any number of folders, as in glob()."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(glob_match(parts[start:], pattern[1:]) for start in range(len(parts) + 1))
    return (bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0])
            and glob_match(parts[1:], pattern[1:]))


def list_uri(uri: str, filesystems: Filesystems) -> list[str]:
    """find_images for a URI: a file, a folder (recursively, image suffixes only) or a glob.

    A URI that names an image file is taken without asking the store (a list of a million
    object URIs costs no million requests); if it is missing, that photo is reported as
    unreadable like a corrupt one.
    """
    glob_at = min((uri.index(c) for c in GLOB_CHARS if c in uri), default=-1)
    if glob_at < 0 and Path(urlparse(uri).path).suffix.lower() in IMAGE_SUFFIXES:
        return [uri]
    base = uri if glob_at < 0 else uri[:uri.rindex("/", 0, glob_at)]
    filesystem, path = filesystems.resolve(base)
    try:
        info = filesystem.get_file_info(path)
        if glob_at < 0 and info.type == pyarrow.fs.FileType.File:
            return [uri]
        if info.type != pyarrow.fs.FileType.Directory:
            raise UserError(f"no such file or folder: {uri}")
        listed = filesystem.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot list {base}: {one_line(err)}") from None
    files = sorted(filesystems.uri(base, item.path) for item in listed
                   if item.type == pyarrow.fs.FileType.File)
    if glob_at < 0:
        return [f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    pattern = uri.split("/")
    found = [f for f in files if glob_match(f.split("/"), pattern)]
    if not found:
        raise UserError(f"no files match {uri}")
    return found


def find_sources(patterns: Sequence[str], exclude: Sequence[Path],
                 skipped: list[str] | None = None) -> list[str]:
    """find_images, with URIs too: every photo once, in the order a single-process run takes."""
    filesystems = Filesystems()
    found: list[str] = []
    for pattern in map(str, patterns):
        if is_uri(pattern):
            found += list_uri(pattern, filesystems)
        else:
            found += map(str, find_images([pattern], exclude=exclude, skipped=skipped))
    return list(dict.fromkeys(found))


def local_name(source: str) -> Path:
    """The path that names a photo's outputs: the path itself, or a URI's host and path."""
    if not is_uri(source):
        return Path(source)
    parsed = urlparse(source)
    return Path(parsed.netloc + parsed.path)


# ----------------------------------------------------------------------------- outputs
class SharedStaging(StagedOutputs):
    """StagedOutputs across processes: actors stage the files, the driver renames them.

    Temporary names carry the run's tag, so files staged by a batch whose result never
    reached the driver (an interrupted run, a task Ray retried) are found by sweep().
    """

    def __init__(self, tag: str) -> None:
        super().__init__(tag)
        self.pairs: list[tuple[str, str]] = []  # (final, temporary), in the order staged

    def path(self, final: str | os.PathLike) -> Path:
        temporary = super().path(final)
        self.pairs.append((str(final), str(temporary)))
        return temporary

    def adopt_all(self, pairs: Iterable[Sequence[str]]) -> None:
        """Take over files an actor staged: commit() renames them, leaving unsaid removes them."""
        for final, temporary in pairs:
            self.adopt(final, temporary)

    def sweep(self, folders: Iterable[Path]) -> None:
        """Remove what is left of this run's temporary files in `folders`."""
        for folder in folders:
            for leftover in folder.glob(f".{self.tag}.*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()


def output_folders(outputs: Sequence[Path], json_path: Path, settings: PhotoOutputs) -> set[Path]:
    folders = {output.parent for output in outputs} | {json_path.parent}
    if settings.crops is not None:
        folders |= {settings.crops / output.relative_to(settings.out_dir).parent
                    for output in outputs}
    return folders


# ----------------------------------------------------------------------------- actors
class PhotoWorker:
    """A Ray actor: one detector, loaded once, running scrfd.py's per-photo job on batches.

    Reading runs ahead of the model and writing behind it on their own threads, as in a
    single-process run; the model has `threads` threads of its own.
    """

    def __init__(self, workdir: str, detector_options: dict, settings: PhotoOutputs,
                 tag: str) -> None:
        try:  # relative paths then mean on every node what they mean to the driver
            os.chdir(workdir)
        except OSError:
            raise UserError(f"the working folder {workdir} is not on node "
                            f"{ray.util.get_node_ip_address()}; run from a folder every node "
                            "shares") from None
        self.detector = SCRFD(**detector_options)
        self.settings = settings
        self.tag = tag
        self.filesystems = Filesystems()

    def read(self, source: str, notes: list[str] | None = None) -> np.ndarray:
        if not is_uri(source):
            return read_image(source, notes)
        data = self.filesystems.read(source)
        suffix = Path(urlparse(source).path).suffix
        with tempfile.NamedTemporaryFile(suffix=suffix) as copy:  # read_image decodes files
            copy.write(data)
            copy.flush()
            try:
                found: list[str] = []
                image = read_image(copy.name, found)
                if notes is not None:
                    notes += [note.replace(copy.name, source) for note in found]
                return image
            except UserError as err:
                raise UserError(str(err).replace(copy.name, source)) from None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        staging, began = SharedStaging(self.tag), time.time()  # wall clock: compared across nodes
        rows: list[dict] = []

        def done(photo: Photo) -> None:  # the files staged since the last photo are this one's
            staged = staging.pairs[sum(row["files"] for row in rows):]
            rows.append({"line": photo.line, "error": photo.error or "", "note": photo.note or "",
                         "faces": photo.faces,
                         "staged": json.dumps(staged), "files": len(staged),
                         "passes": photo.passes, **photo.seconds,
                         "finished": time.time()})

        try:
            run_photos(self.detector, batch["source"], batch["output"], self.settings, staging,
                       done, read=self.read)
        except BaseException:
            staging.discard()
            raise
        columns = {"index": batch["index"]}
        for key in ("line", "error", "note", "staged"):
            columns[key] = np.array([row[key] for row in rows], dtype=object)
        columns["faces"] = np.array([row["faces"] for row in rows], dtype=np.int64)
        columns["passes"] = np.array([row.get("passes", 0) for row in rows], dtype=np.int64)
        for stage in STAGES:
            columns[stage] = np.array([row.get(stage, 0.0) for row in rows], dtype=np.float64)
        columns["began"] = np.full(len(rows), began)
        columns["finished"] = np.array([row["finished"] for row in rows], dtype=np.float64)
        return columns


# ----------------------------------------------------------------------------- driver
@dataclass
class Cluster:
    address: str  # of its head node
    cpus: int


def connect(address: str | None) -> Cluster:
    """Start or join a cluster: ray.init's own rules (RAY_ADDRESS, 'auto', ray://...).

    Ray's INFO chatter, progress bars and the actors' output stay in its log files; warnings
    and errors still show. The SIGTERM handler ray.init installs is put back, so cleanup
    still runs.
    """
    if "RAY_DATA_LOG_LEVEL" not in os.environ:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False  # scrfd.py has its own
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "...disabled"
    package = str(Path(__file__).resolve().parents[1])  # workers run this scrfdkit, not another
    options = {"runtime_env": {"py_modules": [package]}, "logging_level": logging.ERROR,
               "log_to_driver": False}  # actors' own logs: /tmp/ray/session_latest/logs
    if not (address or os.environ.get("RAY_ADDRESS", "")).startswith("ray://"):
        options["include_dashboard"] = False
    check_reachable(address)  # in seconds, where ray.init would retry for minutes
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address or None, **options)
    except (ConnectionError, ValueError, RuntimeError) as err:
        shown = address or os.environ.get("RAY_ADDRESS") or "local"
        hint = ("" if os.environ.get("RAY_AUTH_MODE") else "; a cluster with token "
                "authentication also needs RAY_AUTH_MODE=token and its token")
        raise UserError(f"cannot start or join the Ray cluster ({shown}): "
                        f"{one_line(err)}{hint}") from None
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    return Cluster(ray.get_runtime_context().gcs_address,
                   int(ray.cluster_resources().get("CPU", 0)))


def pool_size(actors: int | None, threads: int, cluster: Cluster) -> int:
    """--ray-actors, or as many actors of `threads` CPUs as the cluster holds now."""
    if actors is None:
        return max(1, cluster.cpus // threads)
    if actors * threads > cluster.cpus:
        raise UserError(f"--ray-actors {actors} x --threads {threads} needs {actors * threads} "
                        f"CPUs; the Ray cluster has {cluster.cpus}")
    return actors


def batch_size(count: int, actors: int) -> int:
    return max(1, min(MAX_BATCH, count // (actors * BATCHES_PER_ACTOR)))


@dataclass
class RayRun:
    """The tally of a run as the actors' rows arrive; what scrfd.py's summary prints."""

    sources: Sequence[str]
    lines: list[str | None] = field(default_factory=list)  # by input index
    failed_at: list[int] = field(default_factory=list)
    faces: int = 0
    passes: int = 0  # model passes (more than one per photo when tiled)
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    started: float = field(default_factory=time.time)
    working: tuple[float, float] = (math.inf, -math.inf)  # first batch begun, last photo done
    elapsed: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [self.sources[index] for index in sorted(self.failed_at)]

    def working_rate(self) -> float:
        """Images per second while the actors worked: their start-up left out, Ray's
        per-batch overhead (scheduling, moving rows, calls between batches) kept in."""
        done = len(self.sources) - len(self.failed_at)
        return done / max(self.working[1] - self.working[0], 1e-9)


def detect_on_ray(sources: Sequence[str], outputs: Sequence[Path], json_path: Path,
                  settings: PhotoOutputs, detector_options: dict, address: str | None,
                  actors: int | None, verbose: bool) -> RayRun:
    """Run scrfd.py's per-photo job over `sources` on a Ray actor pool; commit all or nothing."""
    connecting = time.perf_counter()
    cluster = connect(address)
    staging = SharedStaging(f"scrfd-{uuid.uuid4().hex[:8]}")
    try:
        threads = detector_options["threads"]
        actors = pool_size(actors, threads, cluster)
        batch = batch_size(len(sources), actors)
        print(f"ray: cluster at {cluster.address} with {cluster.cpus} CPU(s), ready in "
              f"{time.perf_counter() - connecting:.1f} s; {actors} actor(s) x {threads} "
              f"thread(s), {batch} image(s) per call")
        run = RayRun(sources, [None] * len(sources))
        rows = [{"index": i, "source": s, "output": str(o)}
                for i, (s, o) in enumerate(zip(sources, outputs))]
        dataset = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / batch))
        results = dataset.map_batches(
            PhotoWorker, batch_size=batch, batch_format="numpy", num_cpus=threads,
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"workdir": os.getcwd(), "detector_options": detector_options,
                                   "settings": settings, "tag": staging.tag})
        with staging:
            collect(results, run, staging, verbose)
            if len(run.failed_at) == len(sources):
                raise UserError(f"none of the {len(sources)} image(s) could be read")
            commit_photos(staging, json_path, run.lines, settings.crops)
        run.elapsed = time.time() - run.started
        print(f"ray: actors at work after {run.working[0] - run.started:.1f} s (start-up, one "
              f"model load each), then {run.working_rate():.1f} images/s")
        return run
    finally:
        ray.shutdown()  # first: no actor writes once the leftovers are swept
        staging.sweep(output_folders(outputs, json_path, settings))


def collect(results: "ray.data.Dataset", run: RayRun, staging: SharedStaging,
            verbose: bool) -> None:
    """Tally the actors' rows as they come; warnings as they arrive, JSON lines by input index."""
    bar = tqdm(total=len(run.sources), unit="img", disable=verbose)
    try:
        for columns in results.iter_batches(batch_size=None, batch_format="numpy"):
            run.working = (min(run.working[0], float(columns["began"].min())),
                           max(run.working[1], float(columns["finished"].max())))
            for row in range(len(columns["index"])):
                index = int(columns["index"][row])
                run.lines[index] = columns["line"][row]
                staging.adopt_all(json.loads(columns["staged"][row]))
                run.faces += int(columns["faces"][row])
                run.passes += int(columns["passes"][row])
                for stage in STAGES:
                    run.stages[stage] += float(columns[stage][row])
                if columns["note"][row]:
                    tqdm.write(f"warning: {columns['note'][row]}", file=sys.stderr)
                if columns["error"][row]:
                    tqdm.write(f"warning: {columns['error'][row]}; skipped", file=sys.stderr)
                    run.failed_at.append(index)
                elif verbose:
                    found = int(columns["faces"][row])
                    print(f"{display(run.sources[index])}: {found} face{'s' * (found != 1)} "
                          f"({columns['inference'][row] * 1000:.0f} ms)")
            bar.update(len(columns["index"]))
            bar.set_postfix(faces=run.faces, refresh=False)
    except KeyboardInterrupt:
        print(f"stopped after {bar.n} of {len(run.sources)} image(s): nothing written; earlier "
              "results are as they were", file=sys.stderr)
        raise
    except ray.exceptions.RayError as err:  # an actor could not start, or a bug: one line
        cause = one_line(err).removeprefix(f"{UserError.__module__}.{UserError.__name__}: ")
        raise UserError(f"the Ray job failed: {cause}") from None
    finally:
        bar.close()
    missing = sum(line is None for line in run.lines)
    if missing:  # never expected: Ray Data hands back every row it was given
        raise UserError(f"the Ray job lost {missing} of {len(run.sources)} image(s)")


# ----------------------------------------------------------------------------- any tasks
def map_tasks(address: str | None, function: Callable, items: Sequence, *, cpus: int,
              titles: Sequence[str], logs: Sequence[Path], summary: Callable[[dict], str],
              keep_going: bool = False) -> list[dict | None]:
    """function(item) for every item, each a Ray task of `cpus` CPUs; results in item order.

    The driver prints one line per finished task (summary(result)); each task writes its own
    output to its log. A UserError in a task stops the run (others are cancelled), or with
    keep_going is noted and gives None; a task whose worker died is a UserError naming its log.
    """
    connecting = time.perf_counter()
    cluster = connect(address or None)
    try:
        largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]),
                      default=0)
        if cpus > largest:
            raise UserError(f"--threads {cpus} needs {cpus} CPUs on one node; the Ray cluster's "
                            f"largest node has {largest:g}")
        print(f"ray: cluster at {cluster.address} with {cluster.cpus} CPU(s), ready in "
              f"{time.perf_counter() - connecting:.1f} s; {len(items)} task(s) of {cpus} "
              f"thread(s) each, each one's output in its log", flush=True)
        def run(item):  # ray.remote takes functions and classes, not partial objects
            return function(item)

        task = ray.remote(run).options(num_cpus=cpus, max_retries=0)
        started = time.perf_counter()
        pending = {task.remote(item): index for index, item in enumerate(items)}
        results: list[dict | None] = [None] * len(items)
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready)
            log = display(logs[index])
            try:
                results[index] = found = ray.get(ready)
            except ray.exceptions.RayError as err:
                cause = getattr(err, "cause", None)  # what the task raised, as it raised it
                if not isinstance(cause, Exception):  # the worker died (memory, a signal)
                    cause = UserError(f"the Ray task for {titles[index]} failed: "
                                      f"{one_line(err)} (log: {log})")
                if not keep_going or not isinstance(cause, UserError):
                    for other in pending:
                        ray.cancel(other, force=True)
                    raise cause from None
                print(f"note: {titles[index]} could not be evaluated: {cause} (log: {log})",
                      flush=True)
                continue
            done = len(items) - len(pending)
            print(f"done {done}/{len(items)} after {time.perf_counter() - started:.1f} s: "
                  f"{titles[index]}: {summary(found)} (log: {log})", flush=True)
        return results
    finally:
        ray.shutdown()
