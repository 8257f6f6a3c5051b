"""Detect faces in photos with an SCRFD model (TFLite through LiteRT, or ONNX through ONNX Runtime).

Writes each photo with its faces drawn (box, score, five landmarks in distinct colours), or
with the faces blurred (--blur), one JSON line per photo with the boxes, scores and landmarks
in original-image pixels, and optionally one aligned 112x112 crop per face (--crops).

    python scrfd.py                                   # data/friends.jpg -> results/friends.jpg
    python scrfd.py --image photos/ "more/*.png" --out /tmp/o --json /tmp/o/faces.jsonl
    python scrfd.py --image photos/ --blur --out /tmp/anonymised   # tiled: small faces too
    python scrfd.py --image photos/ --blur --verify --out /tmp/anonymised  # any face left? exit 1
    python scrfd.py --image crowd.jpg --tile          # + tiles at the photo's own resolution
    python scrfd.py --image phone/ --blur solid --keep-metadata --out /tmp/a  # black, EXIF kept
    python scrfd.py --image photos/ --crops /tmp/crops   # ArcFace-aligned faces for recognition
    python scrfd.py --image @archive.txt --blur --out /shared/anonymised --ray --threads 1

--verify looks for faces again in every blurred image as written, with the run's model and a
stronger one (--verify-model, default models/det_2.5g.onnx when present, at each image's full
resolution), at the photo default score 0.5. It reports, per image, each face still detectable
under a blur (the blur did not hide it) or never hidden (the run's detector missed it), and
exits 1 if there is one; the images are written either way.

--blur hides faces by a gaussian blur, or as `pixelate` (a mosaic, --blur-blocks), `solid`
(black) or `image` (--blur-image). Written photos carry no EXIF, XMP or ICC profile (OpenCV
writes pixels only): no GPS position, camera or thumbnail; the summary names what the sources
had, and --keep-metadata copies EXIF and ICC (orientation reset, thumbnail left out).

Unreadable images are skipped with a warning and counted in the summary; the exit code is 0
as long as at least one image was read (2, with a one-line error, when none could be).
Outputs are written under temporary names and renamed into place together at the end: an
interrupted or failed run leaves earlier results untouched. Every output path is checked
against every input and every other output before any work: none is ever overwritten. A
JSON lines file already there (an earlier run into the same --out) is merged into, by photo
path, never replaced (--json says how).

--ray runs the same job on a Ray cluster (pip install -r requirements-scale.txt), as in the
last example: a pool of actors, one model each, reads, detects and writes; the outputs and
JSON lines are those of a single-process run. With no ADDRESS it joins the cluster that
RAY_ADDRESS names, else the one `ray start --head` started on this machine, else starts one
here. Inputs may then also be URIs of any filesystem pyarrow reads (s3://bucket/photos/,
gs://..., file:///...); outputs, the model and the working folder must be at the same path
on every node.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from scrfdkit.cli import (DEFAULT_IMAGE, DEFAULT_MODEL, MODELS_DIR, RESULTS_DIR, ArgumentParser,
                          add_detector_arguments, add_face_output_arguments, add_tile_argument,
                          add_verify_arguments,
                          check_face_output_options, check_model, cli, detector_options,
                          display, open_detector, positive_int, score_threshold, tile_setting)
from scrfdkit.detector import SCRFD
from scrfdkit.errors import UserError
from scrfdkit.files import (STDOUT, Output, StagedOutputs, check_output_file, check_output_folder,
                            check_outputs, find_images)
from scrfdkit.metadata import metadata_path
from scrfdkit.photos import (JSON_MERGE, JSON_NAME, NAMING, Photo, PhotoOutputs, commit_photos,
                             earlier_lines, image_format, output_paths, planned_outputs,
                             run_photos)
from scrfdkit.privacy import (DEFAULT_VERIFY_MODEL, VERIFY_SCORE, Verifier,
                              report_verification, verifiers_for, verify_photos)
from scrfdkit.scale.reach import CONNECT_TIMEOUT, check_reachable
from scrfdkit.tiles import largest_tile_face

PROGRESS_FROM = 4  # a progress bar from this many images on; one line per image below it
TILE_HINT_RATIO = 4  # a photo more than this many times the model's input on a side with no
# face in one pass gets a note suggesting --tile: its faces may be lost in the shrunken photo
STAGES = ("read", "preprocess", "inference", "postprocess", "write")


def parse_args(argv: list[str] | None = None):
    parser = ArgumentParser(__doc__, fromfile_prefix_chars="@")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=".tflite or .onnx SCRFD model (default: "
                             "models/scrfd500m_480x640_float32.tflite, made by the export scripts)")
    parser.add_argument("--image", nargs="+", default=[DEFAULT_IMAGE], metavar="PATH",
                        help="image files, folders (searched recursively) or glob patterns; "
                             "@LIST reads more of them from a text file, one a line "
                             "(default: data/friends.jpg)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help=f"folder for the annotated images (default: results/); {NAMING}")
    parser.add_argument("--format", default=None, metavar="EXT",
                        help="write annotated images in this format, e.g. png or jpg (default: "
                             "the input's own format, PNG where OpenCV cannot write that)")
    parser.add_argument("--json", type=Path, default=None,
                        help=f"JSON lines file: one line per image with path, size and faces "
                             f"(default: <out>/{JSON_NAME}); {JSON_MERGE}; - writes them to "
                             "standard output (and the messages to standard error)")
    add_face_output_arguments(parser, crop_name="<image>_face<N>.png")
    parser.add_argument("--keep-metadata", action="store_true",
                        help="copy each photo's EXIF (GPS position, camera, dates...) and ICC "
                             "colour profile into what is written, orientation reset and "
                             "thumbnail left out (JPEG, PNG, WebP, TIFF); by default none is "
                             "written, and the summary says what was dropped")
    parser.add_argument("--verbose", action="store_true",
                        help="one line per image instead of a progress bar")
    add_detector_arguments(parser, per="image")
    add_tile_argument(parser, per="photo", blur=True)
    add_verify_arguments(parser, "image", DEFAULT_VERIFY_MODEL, VERIFY_SCORE)
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run on a Ray cluster: no ADDRESS joins or starts one as Ray does "
                             "(RAY_ADDRESS, then a local `ray start` cluster, else a new one); "
                             "'auto', host:port or ray://host:10001 name one, 'local' always "
                             f"starts a new one here; a named address that takes no connection "
                             f"within {CONNECT_TIMEOUT:g} s is an error")
    parser.add_argument("--ray-actors", type=positive_int, default=None, metavar="N",
                        help="with --ray: N detector actors of --threads threads each "
                             "(default: as many as the cluster's CPUs hold; one thread per "
                             "actor, one actor per core, was fastest in our measurements)")
    parser.convert_arg_line_to_args = list_file_line
    return parser.parse_args(argv)


def list_file_line(line: str) -> list[str]:
    """One path per line of an @LIST file; blank lines are skipped, not read as '.'."""
    return [line.strip()] if line.strip() else []


def detect_here(detector: SCRFD, images: list[Path], outputs: list[Path], json_path: Path,
                settings: PhotoOutputs, verbose: bool, report=sys.stdout, dropped=None
                ) -> tuple[list[Path], int, float, dict]:
    """The single-process run: (unreadable images, faces, seconds, seconds per stage).
    Messages go to `report`; JSON lines to json_path, or to standard output for `-`;
    `dropped` (a Counter) counts the photos per kind of identifying metadata not written."""
    failed: list[str] = []
    lines: list[str] = []
    faces = 0
    totals = dict.fromkeys(STAGES, 0.0)
    started = time.perf_counter()
    bar = tqdm(total=len(images), unit="img", disable=verbose)

    def done(photo: Photo) -> None:
        nonlocal faces
        faces += photo.faces
        lines.append(photo.line)
        if dropped is not None:
            dropped.update(photo.dropped)
        for stage, seconds in photo.seconds.items():
            totals[stage] += seconds
        bar.update()
        bar.set_postfix(faces=faces, refresh=False)
        if photo.note:
            tqdm.write(f"warning: {photo.note}", file=sys.stderr)
        if hint := tile_hint(photo, detector):
            tqdm.write(f"note: {hint}", file=sys.stderr)
        if photo.error:
            tqdm.write(f"warning: {photo.error}; skipped", file=sys.stderr)
            failed.append(photo.source)
        elif verbose:
            print(f"{display(photo.source)}: {photo.faces} face{'s' * (photo.faces != 1)} "
                  f"({photo.seconds['inference'] * 1000:.0f} ms"
                  + (f", {photo.passes} model passes)" if photo.passes > 1 else ")"), file=report)

    with StagedOutputs() as staged, bar:
        try:
            run_photos(detector, images, outputs, settings, staged, done)
        except KeyboardInterrupt:
            print(f"stopped after {bar.n} of {len(images)} image(s): nothing written; earlier "
                  f"results in {display(settings.out_dir)} are as they were", file=sys.stderr)
            raise
        if len(failed) == len(images):
            raise UserError(f"none of the {len(images)} image(s) could be read")
        if str(json_path) != STDOUT:
            commit_photos(staged, json_path, lines, settings.crops)  # merged with earlier lines
        else:
            staged.commit()
    if str(json_path) == STDOUT:
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
    return failed, faces, time.perf_counter() - started, totals


def tile_hint(photo: Photo, detector: SCRFD) -> str | None:
    """A photo far larger than the model's input where one pass found no face: say --tile."""
    if photo.error or photo.faces or detector.tile or photo.size is None:
        return None
    (height, width), (input_h, input_w) = photo.size, detector.input_hw
    if max(height / input_h, width / input_w) <= TILE_HINT_RATIO:
        return None
    return (f"{display(photo.source)}: no face found in one pass of this {width}x{height} photo, "
            f"more than {TILE_HINT_RATIO}x the model's {input_w}x{input_h} input on a side, "
            "where faces shrink with it; --tile also looks at it at its own resolution")


def refuse_output_folders_as_inputs(args) -> None:
    """An --image folder inside --out or --crops is never searched (results are not read
    back as photos): say so, rather than 'no images found'."""
    for option, folder in (("--out", args.out), ("--crops", args.crops)):
        for pattern in args.image:
            path = Path(pattern)
            if folder is None or "://" in str(pattern) or not path.is_dir():
                continue
            given, output = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
            if given.is_relative_to(output):
                where = "is" if given == output else "is inside"
                raise UserError(f"--image {pattern} {where} the output folder {option} "
                                f"{folder}, which is never searched for photos (its results "
                                f"would be read back as inputs); give {option} another folder")


def find_inputs(args, skipped: list[str]) -> tuple[list, list[Path]]:
    """The photos, and the paths that name their outputs (a URI's host and path, with --ray);
    what folder scans passed over (broken links...) is warned about and added to `skipped`."""
    refuse_output_folders_as_inputs(args)
    exclude = [args.out] + ([args.crops] if args.crops else [])
    if args.keep_metadata and any("://" in str(p) for p in args.image):
        raise UserError("--keep-metadata reads the metadata of local files; give paths, not "
                        "URIs")
    if args.ray is not None:
        from scrfdkit.scale import ray_jobs as distributed  # Ray only when asked for
        images = distributed.find_sources(args.image, exclude, skipped)
        names = [distributed.local_name(source) for source in images]
    else:
        remote = [str(p) for p in args.image if "://" in str(p)]
        if remote:
            raise UserError(f"--image {remote[0]}: URIs are read by --ray runs only")
        images = names = find_images(args.image, exclude=exclude, skipped=skipped)
    if not images:
        raise UserError(f"no images found in {' '.join(map(str, args.image))}")
    return images, names


def check_run_outputs(args, images: list, outputs: list[Path], settings: PhotoOutputs,
                      model_path: Path) -> Path:
    """Every output (annotated images, crops, JSON lines) against every input (photos, the
    model and its sidecar) and against each other, before any work; returns the JSON path."""
    json_path = check_output_file(args.json or args.out / JSON_NAME, "--json", stdout=True)
    if str(json_path) == STDOUT and args.ray is not None:
        raise UserError("--json -: JSON lines go to standard output in single-process runs; "
                        "with --ray give a file")
    if str(json_path) == STDOUT and args.verify:
        raise UserError("--json -: --verify reads the JSON lines back from their file; give "
                        "--json a file")
    planned = planned_outputs(images, outputs, settings)
    if str(json_path) != STDOUT:
        planned.append(Output("--json", json_path))
    check_outputs(planned, [*images, model_path, metadata_path(model_path)])
    if str(json_path) != STDOUT:
        earlier_lines(json_path)  # a file that is not JSON lines of ours: refused now
    return json_path


def metadata_line(dropped: Counter, keep: bool, ray: bool) -> str:
    """What the written photos lack of their sources' metadata, and how to keep it."""
    kinds = ", ".join(f"{kind} ({count} photo{'s' * (count != 1)})"
                      for kind, count in dropped.most_common())
    if keep:
        return ("metadata: EXIF and ICC profiles copied" + (f"; not copied: {kinds}" if kinds
                                                             else ""))
    found = f"; dropped: {kinds}" if kinds else "" if ray else "; the photos had none"
    return f"metadata: none written (privacy first){found}; --keep-metadata copies EXIF and ICC"


def verify(verifiers: list[Verifier], images: list, outputs: list[Path], json_path: Path) -> int:
    """--verify after the run: each image with a face still detectable, and 1 if there is one.
    The photos' lines are read back from the file, which may hold other runs' lines too."""
    by_path = {record["path"]: record for record in
               map(json.loads, filter(str.strip, json_path.read_text().splitlines()))}
    records = [by_path[str(image)] for image in images]
    return report_verification(verifiers, verify_photos(verifiers, outputs, records),
                               len(records), "image")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_path = check_model(args.model)
    if args.image == [DEFAULT_IMAGE] and not DEFAULT_IMAGE.exists():
        raise UserError(f"example photo {display(DEFAULT_IMAGE)} not found; pass --image with "
                        "image files, folders or glob patterns")
    if args.ray_actors is not None and args.ray is None:
        raise UserError("--ray-actors needs --ray")
    check_face_output_options(args)
    if args.ray is not None:
        check_reachable(args.ray)
    check_output_folder(args.out, "--out")
    if args.crops is not None:
        check_output_folder(args.crops, "--crops")
    skipped: list[str] = []
    images, names = find_inputs(args, skipped)
    outputs = output_paths(names, args.out, image_format(args.format))
    settings = PhotoOutputs(args.out, args.replacement, args.crops, args.crop_size,
                            args.keep_metadata)
    json_path = check_run_outputs(args, names, outputs, settings, model_path)
    report = sys.stderr if str(json_path) == STDOUT else sys.stdout

    tile = tile_setting(args)
    # the same detector here and in every Ray actor
    options = detector_options(args, model_path, score_threshold(args), tile)
    detector = open_detector(options, args.device)
    if args.crops and not detector.has_landmarks:
        raise UserError(f"--crops needs landmarks, and {display(model_path)} has none")
    verifiers = verifiers_for(detector.model_path, detector.input_hw, args.verify_model,
                              MODELS_DIR / DEFAULT_VERIFY_MODEL, args.threads) if args.verify else []
    print(f"model {display(model_path)}: {detector.runner.backend}, input "
          f"{detector.input_hw[0]}x{detector.input_hw[1]}, score >= {detector.score_threshold:g}"
          + (f", tiled (faces up to {min(tile, largest_tile_face(detector.input_hw))} px whole "
             "in a tile)" if tile else "")
          + f"; {len(images)} image(s)", file=report)
    verbose = args.verbose or len(images) < PROGRESS_FROM
    dropped: Counter = Counter()  # photos per kind of identifying metadata not written
    if args.ray is not None:
        from scrfdkit.scale import ray_jobs as distributed
        run = distributed.detect_on_ray(images, outputs, json_path, settings, options,
                                        args.ray or None, args.ray_actors, verbose)
        failed, faces, elapsed, stages = run.failed, run.faces, run.elapsed, run.stages
        overlap = "summed over the actors; in each, reading and writing overlap inference"
        passes = run.passes
    else:
        failed, faces, elapsed, stages = detect_here(detector, images, outputs, json_path,
                                                     settings, verbose, report, dropped)
        overlap = "reading and writing overlap inference"
        passes = detector.total_passes

    done = len(images) - len(failed)
    per_image = ", ".join(f"{key} {spent / done * 1000:.1f} ms" for key, spent in stages.items())
    unreadable = f", {len(failed)} unreadable (skipped)" if failed else ""
    passed = f", {len(skipped)} more passed over in folders (see the warnings)" if skipped else ""
    print(f"summary: {len(images)} image(s): {done} {'anonymised' if args.blur else 'annotated'}"
          f"{unreadable}{passed}; {faces} face(s); {passes} model pass(es), "
          f"{passes / done:.2f} per image{' (tiled; --no-tile: one each)' if tile and args.blur else ''}"
          f"; {done / elapsed:.1f} images/s overall", file=report)
    print(f"mean per image: {per_image} ({overlap})", file=report)
    print(f"{'blurred' if args.blur else 'annotated'} images: {display(args.out)}/", file=report)
    if args.blur or args.keep_metadata or dropped:  # an anonymised photo says what it lost
        print(metadata_line(dropped, args.keep_metadata, args.ray is not None), file=report)
    if args.crops is not None:
        print(f"aligned crops ({args.crop_size}x{args.crop_size}): {display(args.crops)}/",
              file=report)
    where = "standard output" if str(json_path) == STDOUT else display(json_path)
    print(f"faces (JSON lines): {where}", file=report)
    return verify(verifiers, images, outputs, json_path) if verifiers else 0


if __name__ == "__main__":
    cli(main)
