"""Files in and out: finding and reading images, atomic writes, JSON lines, checksums.

Every result is written to a temporary file beside its destination and renamed into place,
so an interrupted run never leaves a half-written file where a good one was.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from .errors import UserError

FLOAT_UNIT_PEAK = 1.5  # float images peaking below this hold [0, 1] samples, above it [0, 255]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


UNSUPPORTED_SIGNATURES = {  # formats OpenCV cannot decode: named instead of called corrupt
    b"GIF87a": "GIF", b"GIF89a": "GIF", b"%PDF": "PDF", b"8BPS": "Photoshop (PSD)",
    b"<svg": "SVG", b"<?xml": "SVG/XML",
}
ISO_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}  # at offset 8


def find_images(patterns: Sequence[str | os.PathLike],
                exclude: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted list of images.

    Folders under `exclude` (a run's own output folder, say) are never searched, so results
    written inside the input folder are not read back as inputs on the next run.
    """
    skip = [Path(os.path.abspath(p)) for p in exclude]

    def wanted(p: Path) -> bool:
        absolute = Path(os.path.abspath(p))
        return not any(absolute.is_relative_to(folder) for folder in skip)

    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*")
                            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and wanted(p))
        elif path.is_file():
            found.append(path)
        elif any(ch in str(pattern) for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True))
            if not matches:
                raise UserError(f"no files match {pattern}")
            found += [p for p in matches if p.is_file() and wanted(p)]
        elif path.exists():
            raise UserError(f"not a file or folder: {pattern}")
        else:
            raise UserError(f"no such file or folder: {pattern}")
    return list(dict.fromkeys(found))


@contextlib.contextmanager
def opencv_quiet() -> Iterator[None]:
    """Silence OpenCV's own log lines for a moment (OpenCV 4 and 5 keep the switch apart)."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    get_level = getattr(logging, "getLogLevel", None) or cv2.getLogLevel
    set_level = getattr(logging, "setLogLevel", None) or cv2.setLogLevel
    level = get_level()
    set_level(0)
    try:
        yield
    finally:
        set_level(level)


def unsupported_format(data: np.ndarray) -> str | None:
    """The name of a known image format OpenCV cannot read, from the file's first bytes."""
    head = data[:16].tobytes()
    for signature, name in UNSUPPORTED_SIGNATURES.items():
        if head.lstrip().startswith(signature):
            return name
    return ISO_BRANDS.get(head[8:12]) if head[4:8] == b"ftyp" else None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any image OpenCV decodes as 8-bit BGR; UserError (one line) for what it cannot.

    Grayscale, palette, CMYK, alpha, 16-bit and float samples are converted to 8-bit BGR at
    their true brightness. Unsupported formats are named (GIF, HEIC...), not called corrupt.
    """
    try:
        data = np.fromfile(str(path), np.uint8)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    if not data.size:
        raise UserError(f"cannot decode image {path}: the file is empty")
    image = None
    try:
        with opencv_quiet():  # OpenCV's own decoder complaints: we say what went wrong in one line
            image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
            if image is None:  # single-channel float or 32-bit TIFFs only decode unchanged
                image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        if "pixels" in str(err).lower() or "size" in str(err).lower():
            raise UserError(f"cannot decode image {path}: its header claims more pixels than "
                            "OpenCV accepts (damaged, or too large)") from None
        raise UserError(f"cannot decode image {path}: {str(err).strip().splitlines()[-1]}") from None
    if image is None:
        name = unsupported_format(data)
        if name:
            raise UserError(f"{path} is a {name} file, not a supported image format; convert it "
                            "to JPEG or PNG")
        raise UserError(f"cannot decode image {path} (corrupt or not an image)")
    try:
        return to_bgr8(image)
    except ValueError as err:
        raise UserError(f"cannot use image {path}: {err}") from None


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Bring an array from any common image format to contiguous uint8 BGR.

    16-bit samples keep their full-range meaning (>> 8). Float samples in [0, 1] (rounding
    may reach a little past 1) are scaled by 255, float samples in [0, 255] kept, brighter (HDR) ones scaled to their peak. Other
    integer depths are refused rather than guessed.
    """
    if image.size == 0:
        raise ValueError("the image has no pixels")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype.kind == "f":
        finite = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(finite.max(initial=0))
        scale = 255.0 if peak <= FLOAT_UNIT_PEAK else (1.0 if peak <= 255.0 else 255.0 / peak)
        image = np.clip(finite * scale, 0, 255).astype(np.uint8)
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        if image.dtype.kind in "iu" and image.min(initial=0) >= 0 and image.max(initial=0) <= 255:
            image = image.astype(np.uint8)
        else:
            raise ValueError(f"{image.dtype} samples are not supported; save it with 8- or "
                             "16-bit samples")
    if image.ndim == 2 or image.shape[-1] == 1:
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif image.shape[-1] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"an image of shape {image.shape} is not grayscale, BGR or BGRA")
    return np.ascontiguousarray(image)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Write to a temporary file beside `path` and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_path(path: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """Like atomic_write, for libraries that want a file name: yields a temporary path."""
    @contextlib.contextmanager
    def _manager() -> Iterator[Path]:
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=final.suffix)
        os.close(fd)
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return _manager()


class StagedOutputs:
    """A run's output files, written under temporary names and renamed into place together.

    Until commit() nothing the user had is touched. Leaving the `with` block without a
    commit (an error, Ctrl-C, SIGTERM) removes the temporary files, so an earlier complete
    set of results stays as it was: never a mix of old and new files.
    """

    def __init__(self, tag: str = "") -> None:
        self.tag = tag  # in every temporary name: a run's leftovers can be found by it
        self._staged: dict[Path, Path] = {}

    def __enter__(self) -> "StagedOutputs":
        return self

    def path(self, final: str | os.PathLike) -> Path:
        """The temporary path to write `final` to (hidden, beside it, same suffix)."""
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{self.tag}.{final.stem}." if self.tag else f".{final.stem}."
        # the real suffix last: writers such as cv2.VideoWriter pick the format by it
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=prefix, suffix=f".part{final.suffix}")
        os.close(fd)
        self._staged[final] = Path(tmp)
        return Path(tmp)

    def write_bytes(self, final: str | os.PathLike, data: bytes) -> None:
        self.path(final).write_bytes(data)

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


def check_output_file(path: Path, option: str, inputs: Sequence[Path] = ()) -> Path:
    """Fail before any work when `path` cannot be written as a file or would replace an input."""
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name")
    for source in inputs:
        if same_file(path, source):
            raise UserError(f"{option} {path} is one of the inputs; it would be overwritten")
    check_writable_folder(path.parent, f"{option} {path}")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option} {path} is not writable")
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name one file (through links and relative paths alike)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


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
        raise UserError(f"{what}: {existing} is not writable")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise UserError(f"{what}: cannot write in {existing} ({err.strerror or err})") from None
