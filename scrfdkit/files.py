"""Files in and out: finding images, atomic writes, output-path checks, checksums.

Every result is written to a temporary file beside its destination and renamed into place,
so an interrupted run never leaves a half-written file where a good one was.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from .errors import UserError
from .images import (opencv_quiet, read_image, to_bgr8, unsupported_format,  # noqa: F401 (kept here)
                     with_article)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".webp", ".tif",
                  ".tiff", ".jp2", ".pbm", ".pgm", ".ppm", ".pnm", ".pfm", ".sr", ".ras", ".hdr",
                  ".pic"}  # every format OpenCV reads, so a folder scan finds every photo
UNREADABLE_SUFFIXES = {".gif": "GIF", ".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF"}  # photos
# OpenCV cannot read: a folder scan names each one (a counted warning) instead of passing over it
VIDEO_FILE_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg",
                       ".mpeg", ".ts", ".mts", ".m2ts", ".3gp", ".ogv", ".mxf", ".dv",
                       ".vob"}  # what a folder scan for videos takes (FFmpeg reads more)
NAME_MAX = 255  # bytes in one file name, where the filesystem does not say (ext4, XFS, tmpfs...)
STDOUT = "-"  # an output option given as "-": write to standard output (where the script allows)


def find_images(patterns: Sequence[str | os.PathLike], exclude: Sequence[str | os.PathLike] = (),
                skipped: list[str] | None = None, suffixes: set[str] = IMAGE_SUFFIXES,
                unreadable: Mapping[str, str] = UNREADABLE_SUFFIXES) -> list[Path]:
    """Expand files, folders (recursively, through symbolic links) and glob patterns into a
    sorted list of images, each file once however often or under whatever name it is given.
    (`suffixes`: what a folder scan takes, VIDEO_FILE_SUFFIXES for videos; `unreadable`: the
    formats it names as skipped.)

    Folders under `exclude` (a run's own output folder, say) are never searched, so results
    written inside the input folder are not read back as inputs on the next run. What a folder
    scan passes over (a broken link, a link loop, a GIF) is printed as a warning and added to
    `skipped`, so a batch can count it: no photo in a folder is skipped silently.
    """
    skip = [Path(os.path.abspath(p)) for p in exclude]

    def wanted(p: Path) -> bool:
        absolute = Path(os.path.abspath(p))
        return not any(absolute.is_relative_to(folder) for folder in skip)

    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)
        if skipped is not None:
            skipped.append(message)

    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found += scan_folder(path, wanted, warn, suffixes, unreadable)
        elif path.is_file():
            found.append(path)
        elif any(ch in str(pattern) for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True))
            if not matches:
                raise UserError(f"no files match {pattern}")
            found += [p for p in matches if p.is_file() and wanted(p)]
        elif path.is_symlink():
            raise UserError(f"{pattern} is a broken symbolic link (to {os.readlink(path)})")
        elif path.exists():
            raise UserError(f"not a file or folder: {pattern}")
        else:
            raise UserError(f"no such file or folder: {pattern}")
    return unique_files(found)


def unique_files(paths: Iterable[Path]) -> list[Path]:
    """Each file once, under the first name it was given (sub/../x.jpg and x.jpg are one)."""
    first: dict[object, Path] = {}
    for path in paths:
        try:
            info = os.stat(path)
            key: object = (info.st_dev, info.st_ino)
        except OSError:
            key = os.path.realpath(path)
        if key in first:
            if str(first[key]) != str(path):
                print(f"note: {path} is the same file as {first[key]}; it is read once",
                      file=sys.stderr)
            continue
        first[key] = path
    return list(first.values())


def scan_folder(folder: Path, wanted, warn, suffixes: set[str] = IMAGE_SUFFIXES,
                unreadable: Mapping[str, str] = UNREADABLE_SUFFIXES) -> list[Path]:
    """The images under `folder`, sorted; symbolic links are followed, each folder searched
    once, and broken links, link loops and unreadable formats passed to warn()."""
    found: list[Path] = []
    searched: set[tuple[int, int]] = set()

    def walk(directory: Path, above: tuple[tuple[int, int], ...]) -> None:
        info = os.stat(directory)
        key = (info.st_dev, info.st_ino)
        if key in above:
            warn(f"{directory} is a symbolic link to {os.path.realpath(directory)}, a folder it "
                 "is inside of (a loop); not searched again")
            return
        if key in searched or not wanted(directory):
            return  # reached again through another link: its photos are listed already
        searched.add(key)
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as err:
            warn(f"cannot list the folder {directory} ({err.strerror or err}); skipped")
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink() and not os.path.exists(path):
                try:
                    os.stat(path)
                except OSError as err:
                    kind = "a symbolic link loop" if err.errno == errno.ELOOP else \
                        f"a broken symbolic link (to {os.readlink(path)})"
                    warn(f"{path} is {kind}; skipped")
                continue
            if entry.is_dir():
                walk(path, above + (key,))
            elif path.suffix.lower() in suffixes and entry.is_file() and wanted(path):
                found.append(path)
            elif path.suffix.lower() in unreadable and wanted(path):
                warn(f"{path} is {with_article(unreadable[path.suffix.lower()])} file, which "
                     "OpenCV cannot read; skipped (convert it to JPEG or PNG)")

    walk(folder, ())
    return sorted(found)


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name, in bytes, the filesystem holding `folder` takes."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return int(os.pathconf(existing, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


class NameTooLong(UserError, ValueError):
    """A result's file name is longer than its filesystem allows: the photo (or the option) is
    refused before anything is written; a batch counts it and goes on (a ValueError there)."""


def check_name_length(path: str | os.PathLike) -> None:
    """NameTooLong when the last part of `path` is longer than its filesystem takes."""
    name = os.fsencode(Path(path).name)
    limit = name_max(Path(path).parent)
    if len(name) > limit:
        raise NameTooLong(f"the file name {Path(path).name[:40]}... is {len(name)} bytes long, "
                          f"more than the {limit} its filesystem allows")


def temporary_affixes(final: Path, tag: str = "", suffix: str = ".part") -> tuple[str, str]:
    """mkstemp's prefix and suffix for a hidden temporary file beside `final`: its stem cut
    short where needed, so the temporary name is never longer than the filesystem allows."""
    fixed = f".{tag}." if tag else "."
    suffix += final.suffix  # the real suffix last: writers such as cv2.VideoWriter go by it
    room = name_max(final.parent) - len(os.fsencode(fixed + "." + suffix)) - 8  # 8: mkstemp's
    stem = os.fsencode(final.stem)[:max(room, 0)].decode(errors="ignore")
    return f"{fixed}{stem}.", suffix


def disk_full(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


def no_space(path: str | os.PathLike, replaced: str) -> UserError:
    return UserError(f"no space left on the device to write {display(path)}; {replaced}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Write to a temporary file beside `path` and rename it into place only on success."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Like atomic_write, for libraries that want a file name: yields a temporary path.
    A full disk is one UserError naming `path`, which keeps its earlier content."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        check_name_length(final)
        prefix, suffix = temporary_affixes(final, suffix="")
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=prefix, suffix=suffix)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are ordinary files
        os.replace(tmp, final)
        tmp = None
    except OSError as err:
        if disk_full(err):
            raise no_space(final, "it was not replaced (its earlier content is as it was)") \
                from None
        raise
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class StagedOutputs:
    """A run's output files, written under temporary names and renamed into place together.

    Until commit() nothing the user had is touched. Leaving the `with` block without a
    commit (an error, Ctrl-C, SIGTERM) removes the temporary files, so an earlier complete
    set of results stays as it was: never a mix of old and new files. A full disk is one
    UserError naming the file, and nothing is replaced.
    """

    def __init__(self, tag: str = "") -> None:
        self.tag = tag  # in every temporary name: a run's leftovers can be found by it
        self._staged: dict[Path, Path] = {}

    def __enter__(self) -> "StagedOutputs":
        return self

    def path(self, final: str | os.PathLike) -> Path:
        """The temporary path to write `final` to (hidden, beside it, same suffix).
        NameTooLong when `final` itself could not be written."""
        final = Path(final)
        check_name_length(final)
        with self._space_for(final):
            final.parent.mkdir(parents=True, exist_ok=True)
            prefix, suffix = temporary_affixes(final, self.tag)
            fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=prefix, suffix=suffix)
        os.close(fd)
        self._staged[final] = Path(tmp)
        return Path(tmp)

    def write_bytes(self, final: str | os.PathLike, data: bytes) -> None:
        temporary = self.path(final)
        with self._space_for(final):
            temporary.write_bytes(data)

    def write_text(self, final: str | os.PathLike, text: str) -> None:
        self.write_bytes(final, text.encode())

    @contextlib.contextmanager
    def _space_for(self, final: str | os.PathLike) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            if disk_full(err):
                raise no_space(final, "nothing was replaced (earlier results are as they "
                                      "were)") from None
            raise

    def adopt(self, final: str | os.PathLike, temporary: str | os.PathLike) -> None:
        """Take over a file another process staged for `final`: commit() renames it too."""
        self._staged[Path(final)] = Path(temporary)

    def commit(self) -> None:
        """Rename every staged file into place (each rename is atomic)."""
        for final, tmp in list(self._staged.items()):
            os.chmod(tmp, 0o644)  # mkstemp makes files private; results are ordinary files
            os.replace(tmp, final)
            del self._staged[final]

    def discard(self) -> None:
        for tmp in self._staged.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._staged.clear()

    def __exit__(self, *exc) -> None:
        self.discard()


def display(path: str | os.PathLike) -> str:
    """Paths relative to the working folder when they are inside it: shorter to read."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_folder(path: Path, option: str) -> Path:
    """Fail before any work when `path` cannot be a folder we write into (a file, /proc...)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file; give a folder")
    check_writable_folder(path, f"{option} {path}")
    return path


NODE_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))


def special_file(path: str | os.PathLike) -> str | None:
    """What `path` is when it is neither a regular file nor a new path (writing there would
    replace the node or write through it): a symbolic link, a folder, a device, a pipe..."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        return f"a symbolic link (to {os.readlink(path)})"
    if stat.S_ISDIR(mode):
        return "a folder"
    return next((kind for test, kind in NODE_KINDS if test(mode)), None)


def check_output_file(path: Path, option: str, inputs: Sequence[Path] = (),
                      stdout: bool = False) -> Path:
    """Fail before any work when `path` cannot be written as a file or would replace an input.

    Only a regular file or a new path is taken: never a link, device or pipe (`-` means
    standard output, where the script allows it with stdout=True)."""
    if str(path) == STDOUT:
        if stdout:
            return path
        raise UserError(f"{option} -: this option cannot write to standard output; give a file "
                        "name")
    kind = special_file(path)
    if kind == "a folder":
        raise UserError(f"{option} {path} is a folder; give a file name")
    if kind:
        raise UserError(f"{option} {path} is {kind}, not a regular file; give a regular file "
                        f"or a new path{' (- writes to standard output)' if stdout else ''}")
    for source in inputs:
        if same_file(path, source):
            raise UserError(f"{option} {path} would overwrite the input {source}; choose "
                            f"another {option}")
    check_writable_folder(path.parent, f"{option} {path}")
    try:
        check_name_length(path)
    except NameTooLong as err:
        raise UserError(f"{option} {str(path)[:60]}...: {err}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option} {path} is not writable")
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name one file (through links, `..` and relative paths alike)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


@dataclass(frozen=True)
class Output:
    """One output of a run, for check_outputs(): a file, or a family of files in one folder
    named <stem><tail> (the crops of one photo: x_face0.png, x_face1.png, ...)."""

    option: str  # the option that names it: "--json", "--crops"
    path: Path  # the file; for a family, its folder
    label: str = ""  # how messages name it (default: "<option> <path>")
    stem: str | None = None  # a family's names: this stem, then a match of `tail` (a regex)
    tail: str = ""

    def __str__(self) -> str:
        return self.label or f"{self.option} {display(self.path)}"


def check_outputs(outputs: Mapping[str, Path | None] | Iterable[Output],
                  inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Before any work: no output of a run lands on an input (through links and `..` alike),
    on another output of the run, or on a link, device or pipe. `outputs` maps options to
    files (None and `-` are skipped), or lists Output entries (files and families of files).
    """
    if isinstance(outputs, Mapping):
        outputs = [Output(option, Path(path)) for option, path in outputs.items()
                   if path is not None and str(path) != STDOUT]
    outputs = list(outputs)
    by_key: dict[object, tuple[str, object]] = {}  # identity: ("input", path) / ("output", Output)
    by_folder: dict[str, list[tuple[str, tuple[str, object]]]] = {}  # folder -> [(name, owner)]

    def keys(path: Path) -> list[object]:
        found: list[object] = [os.path.realpath(path)]
        with contextlib.suppress(OSError):
            info = os.stat(path)
            found.append((info.st_dev, info.st_ino))
        return found

    def clash(owner: tuple[str, object], output: Output, where: Path) -> UserError:
        kind, other = owner
        if kind == "input":
            return UserError(f"{output} would overwrite the input {display(other)}; choose "
                             f"another {output.option}")
        return UserError(f"{other} and {output} would be the same file ({display(where)}); give "
                         "each output its own name")

    def add(path: Path, owner: tuple[str, object], output: Output | None) -> None:
        for key in keys(path):
            if output is not None and key in by_key:
                raise clash(by_key[key], output, path)
            by_key.setdefault(key, owner)
        folder = os.path.realpath(path.parent)
        by_folder.setdefault(folder, []).append((path.name, owner))

    for source in inputs:
        if "://" not in str(source):
            add(Path(source), ("input", source), None)
    families: dict[tuple[str, str, str], Output] = {}
    for output in outputs:
        if output.stem is None:
            kind = special_file(output.path)
            if kind:
                raise UserError(f"{output} is {kind}, not a regular file; give a regular file or "
                                "a new path")
            add(output.path, ("output", output), output)
            continue
        family = (os.path.realpath(output.path), output.tail, output.stem)
        if family in families:
            raise clash(("output", families[family]), output, output.path)
        families[family] = output
    for folder, tail in {(folder, tail) for folder, tail, _ in families}:
        for name, owner in by_folder.get(folder, []):
            match = re.fullmatch(f"(.*)(?:{tail})", name)
            family = families.get((folder, tail, match.group(1))) if match else None
            if family is not None:
                raise clash(owner, family, Path(folder) / name)


def check_writable_folder(folder: Path, what: str) -> None:
    """Refuse a folder that is a file, lies under a file, or may not be written to; the
    nearest existing ancestor must take a real file (permission bits say little for root or
    read-only mounts). `what` names the option and value in the message ("--out results")."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what}: {existing} is a file, not a folder")
    if str(existing).startswith(("/proc", "/sys")):
        raise UserError(f"{what}: cannot write in {existing}: it is not writable (a kernel "
                        "filesystem)")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise UserError(f"{what}: cannot write in {existing} ({err.strerror or err})") from None


def photos_to_time(image: Path | None, folder: Path, count: int, fallbacks: tuple = ()
                   ) -> list[tuple[Path, np.ndarray]]:
    """The photos a speed measurement runs on: --image (a file or folder), else `count`
    photos spread evenly over `folder` (WIDER val: every event), else the first fallback that
    exists. Unreadable ones are noted and left out; none at all is a UserError."""
    if image is not None:
        paths = find_images([image])
    else:
        paths = find_images([folder]) if folder.is_dir() else []
        if paths:
            picks = np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)
            paths = [paths[i] for i in dict.fromkeys(picks)]
        else:
            paths = [p for p in fallbacks if Path(p).is_file()][:1]
    photos = []
    for path in paths:
        try:
            photos.append((path, read_image(path)))
        except UserError as err:
            print(f"skipped photo: {err}")
    if not photos:
        raise UserError(f"no readable photo to time on (none in {folder}): give --image")
    return photos
