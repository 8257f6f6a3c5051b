"""WIDER FACE results files (OUT/results.json): written by the evaluation, read back by a
resumed evaluation, the speed test's accuracy plot and the detector comparison."""
from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

from .errors import UserError
from .files import atomic_write

RESULTS_NAME = "results.json"


def write_results(out: Path, results: dict) -> Path:
    """OUT/results.json, written whole."""
    path = out / RESULTS_NAME
    with atomic_write(path) as handle:
        json.dump(results, handle, indent=2)
    return path


def read_results(out: Path) -> dict:
    """The results.json an earlier run wrote into OUT; UserError when there is none."""
    path = out / RESULTS_NAME
    if not path.is_file():
        raise UserError(f"{path} not found: give --model or --predictions, or --out a folder an "
                        "earlier run wrote")
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(results, dict):
        raise UserError(f"{path} is not an evaluate_widerface.py results file")
    return results


def result_files(pattern: str) -> list[Path]:
    """The results.json files under a folder, or matching a glob."""
    path = Path(pattern)
    return sorted(path.rglob(RESULTS_NAME)) if path.is_dir() else \
        sorted(Path(p) for p in glob.glob(pattern, recursive=True))


def find_results(pattern: str) -> list[dict]:
    """Every readable results.json under a folder or matching a glob, each with its path
    under "file"; unreadable ones are noted on stderr and skipped."""
    results = []
    for file in result_files(pattern):
        try:
            result = json.loads(file.read_text())
        except (OSError, ValueError):
            print(f"note: {file} is not readable JSON; skipped", file=sys.stderr)
            continue
        if isinstance(result, dict):
            results.append({**result, "file": str(file)})
    return results
