"""The README's step-by-step block, run as written, in order, in a fresh clone beside ../shared:
every command exits 0 and leaves its outputs where the README says. Only the variables the
README offers for sizes are made small (a 128x160 model, 8 calibration photos, 20 WIDER
images). Slow (a few minutes): `make test-readme`, and CI, run it; `make test` does not."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED

pytestmark = pytest.mark.readme
pytest.importorskip("onnx2tf", reason="the steps export models: needs the full environment")

SMALL = {"HW": "128,160", "CALIB": "8", "IMAGES": "data/readme_images.txt"}


def readme_steps() -> list[str]:
    """The commands of the first bash block under '## Step by step', comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Step by step", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].rstrip() for line in block.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_block_sets_the_variables_it_uses():
    steps = readme_steps()
    assigned = {line.split("=", 1)[0] for line in steps if re.fullmatch(r"[A-Z]+=\S+", line)}
    used = set(re.findall(r"\$\{?([A-Z]+)", "\n".join(steps)))
    assert used <= assigned, used - assigned
    assert set(SMALL) <= assigned  # the sizes this test makes small are the README's own


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone beside a `shared` folder (a link to ../shared), after `make demo`."""
    if shutil.which("make") is None or not (REPO / ".git").exists():
        pytest.skip("needs make and a git checkout")
    if not (SHARED / "widerface").is_dir() or not (SHARED / "samples").is_dir():
        pytest.skip(f"needs {SHARED} (models, widerface, samples)")
    root = tmp_path_factory.mktemp("readme")
    (root / "shared").symlink_to(SHARED)
    clone = root / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    venv = Path(sys.prefix)  # this environment stands in for the clone's `make setup`
    make = subprocess.run(["make", "demo", f"VENV={venv}", "-o", f"{venv}/.installed",
                           f"HW={SMALL['HW']}"], cwd=clone, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    return clone


def test_the_step_by_step_block_runs_as_written(clone):
    steps = readme_steps()
    script = []
    for line in steps:
        name = line.split("=", 1)[0]
        if name in SMALL and re.fullmatch(r"[A-Z]+=\S+", line):
            line = f"{name}={SMALL[name]}"
        elif line.startswith("source .venv/bin/activate"):
            line = f"export PATH={Path(sys.executable).parent}:$PATH"
        elif line.startswith("make data"):
            script.append(line)
            # the README's IMAGES list, made small: 20 images of the development split
            images = (SHARED / "widerface" / "dev_images.txt").read_text().split()[::64][:20]
            script.append(f"printf '%s\\n' {' '.join(images)} > {SMALL['IMAGES']}")
            continue
        script.append(line)
    bash = "set -euo pipefail\n" + "\n".join(
        f"echo '+ {line}' >&2\n{line}" for line in script) + "\n"
    proc = subprocess.run(["bash", "-c", bash], cwd=clone, capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    n = SMALL["HW"].replace(",", "x")
    results = clone / "results"
    for path in (f"models/det_500m_{n}.onnx", f"models/scrfd500m_{n}_float32.tflite",
                 f"models/scrfd500m_{n}_int8.tflite", "results/crowd_selfie.jpg",
                 "results/anonymised/faces.jsonl", "results/crops",
                 "results/hamilton_360p_fdlm.mp4", "results/hamilton_360p_fdlm.jsonl",
                 "results/widerface/int8/results.json", "results/widerface/int8/report.md",
                 "results/speed.md", "results/compare/yunet/results.json",
                 "results/compare/compare.md"):
        assert (clone / path).exists(), f"{path} missing\n{proc.stdout[-2000:]}"
    blurred = [json.loads(line) for line in (results / "anonymised" / "faces.jsonl").open()]
    assert len(blurred) == len(list((SHARED / "samples").glob("*.jpg")))
    assert any(results.glob("crops/*_face0.png"))
    assert json.loads((results / "widerface/int8/results.json").read_text())["images"] == 20
