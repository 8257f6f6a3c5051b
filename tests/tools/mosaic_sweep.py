"""The measurement behind --blur-blocks' limit (faces.MAX_PIXELATE_BLOCKS): how many faces
det_500m finds again in mosaics of N blocks across each face, at 480x640 and at the photo's
full resolution, score 0.5. The faces are those --blur finds (det_500m 480x640, default tiles).

    python tests/tools/mosaic_sweep.py ../shared/samples/{friends,multiface,fans_crowd}.jpg \\
        --model ../shared/models/det_500m.onnx --blocks 2 4 6 8 9 10 12 16 24
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scrfdkit import SCRFD, read_image  # noqa: E402
from scrfdkit.defaults import BLUR_SCORE_THRESHOLD, SCORE_THRESHOLD  # noqa: E402
from scrfdkit.faces import Replacement, anonymize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 6, 8, 9, 10, 12, 16, 24])
    args = parser.parse_args()
    find = SCRFD(args.model, (480, 640), score_threshold=BLUR_SCORE_THRESHOLD, threads=1,
                 tile=True)
    print("photo, faces hidden, then per N: faces found at 480x640 / at full resolution")
    for path in args.photos:
        image = read_image(path)
        dets = find.detect(image)
        full = (math.ceil(image.shape[0] / 32) * 32, math.ceil(image.shape[1] / 32) * 32)
        judges = [SCRFD(args.model, hw, score_threshold=SCORE_THRESHOLD, threads=1)
                  for hw in ((480, 640), full)]
        found = []
        for blocks in args.blocks:
            hidden = anonymize(image, dets, Replacement("pixelate", blocks))
            found.append(f"{blocks}: " + " / ".join(str(len(j.detect(hidden))) for j in judges))
        print(f"{path.name}, {len(dets)}, " + ", ".join(found), flush=True)


if __name__ == "__main__":
    main()
