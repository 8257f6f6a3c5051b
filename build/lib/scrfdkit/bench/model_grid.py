"""The models the README's speed and comparison tables cover (det_500m and det_2.5g at the
original project's four sizes, float32 / float16 / int8), which of them exist in models/,
and the command that makes each missing one."""
from __future__ import annotations

import glob
import os
import re
import sys
from pathlib import Path

from ..errors import UserError

GRID_FAMILIES = ("500m", "2.5g")  # det_500m / det_2.5g -> scrfd500m / scrfd2.5g exports
GRID_SIZES = ((640, 640), (480, 640), (256, 320), (128, 160))  # the original project's sizes
GRID_PRECISIONS = ("float32", "float16", "int8")
DEFAULT_MODELS = ("det_500m_640x640.onnx", "scrfd500m_640x640_float32.tflite",
                  "scrfd500m_640x640_int8.tflite")  # speed_test.py's default run


def relative_path(path: Path) -> Path:
    """A path as short as it is clear: relative to here unless that climbs more than one level."""
    relative = Path(os.path.relpath(path))
    return path if relative.parts[:2] == ("..", "..") else relative


def export_command(path: Path) -> str:
    """The command that makes a models/ file: det_F_HxW.onnx or scrfdF_HxW_PRECISION.tflite."""
    match = re.fullmatch(r"(?:det_|scrfd)([\w.]+?)_(\d+)x(\d+)(?:_(\w+))?\.(onnx|tflite)", path.name)
    if not match:
        return "see README (export_modified_onnx.py, then export_tflite.py)"
    family, height, width, precision, suffix = match.groups()
    onnx = path.with_name(f"det_{family}_{height}x{width}.onnx")
    if suffix == "onnx":
        source = Path("models") / f"det_{family}.onnx"  # make exports, or --download
        return f"python export_modified_onnx.py --model {source} --hw {height},{width} --out {path}"
    calib = Path("data/WIDER_val/images")  # make data links it
    flag = {"float16": " --fp16", "int8": f" --int8 --calib {calib}",
            "dynamic": " --dynamic"}.get(precision or "", "")
    return f"python export_tflite.py --onnx {onnx}{flag} --out {path}"


def grid_models(models_dir: Path, sizes: list[tuple[int, int]]) -> tuple[list[Path], list[str]]:
    """Every README-table model that exists, and the commands that would make the missing ones."""
    wanted = [relative_path(models_dir / name) for family in GRID_FAMILIES for height, width in sizes
              for name in [f"det_{family}_{height}x{width}.onnx"] +
              [f"scrfd{family}_{height}x{width}_{p}.tflite" for p in GRID_PRECISIONS]]
    optional = [relative_path(models_dir / f"det_{family}_{height}x{width}_{p}.onnx")  # no exporter yet
                for family in GRID_FAMILIES for height, width in sizes for p in ("float16", "int8")]
    return ([p for p in wanted + optional if p.exists()],
            [f"{p}: {export_command(p)}" for p in wanted if not p.exists()])


def expand_models(patterns: list[str]) -> list[Path]:
    """Files and globs as given on the command line, in order, each once."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        paths += [Path(m) for m in matches] or [Path(pattern)]
    return list(dict.fromkeys(paths))


def default_models(models_dir: Path) -> list[Path]:
    """det_500m at 640x640: ONNX, TFLite float32 and int8; notes the export commands of missing ones."""
    paths = [relative_path(models_dir / name) for name in DEFAULT_MODELS]
    missing = [p for p in paths if not p.exists()]
    for path in missing:
        print(f"note: {path} is missing; make it with `{export_command(path)}`", file=sys.stderr)
    if len(missing) == len(paths):
        raise UserError("none of the default models exist (see the commands above), or pass --models")
    return [p for p in paths if p.exists()]
