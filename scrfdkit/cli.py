"""What the entry scripts share, and only they use: the exit-code contract, argparse with one-line
errors, the scripts' default paths (relative to the repository, wherever it is run from), and
the detector options."""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Callable, NoReturn

from .defaults import (BLUR_SCORE_THRESHOLD, DEFAULT_THREADS, MAX_INPUT_SIDE,
                       NEVER_HIDDEN_SCORE, NMS_THRESHOLD, SCORE_THRESHOLD, TILE_FACE)
from .devices import DEVICE_PROVIDERS, check_started, device_providers
from .errors import Terminated, UserError, one_line
from .files import display

REPO = Path(__file__).resolve().parents[1]  # the scripts' folder: their defaults live there
MODELS_DIR = REPO / "models"
DATA_DIR = REPO / "data"
RESULTS_DIR = REPO / "results"

DEFAULT_MODEL = MODELS_DIR / "scrfd500m_480x640_float32.tflite"  # the original quick start
DEFAULT_IMAGE = DATA_DIR / "friends.jpg"
DEFAULT_WIDER = DATA_DIR  # `make data` links WIDER_val/, ground_truth/, wider_face_split/ here
PEERS_DIR = MODELS_DIR / "peers"  # `make data` links the peer detectors' models here
DEBUG_ENV = "SCRFD_DEBUG"  # set to 1 to see the traceback behind an unexpected error

EXPORT_HINT = ("`python export_modified_onnx.py --model models/det_500m.onnx --hw 480,640` then "
               "`python export_tflite.py --onnx models/det_500m_480x640.onnx`")
DOWNLOAD_HINT = "`python export_modified_onnx.py --download buffalo_sc`"


def _raise_terminated(signum, frame) -> NoReturn:
    raise Terminated()


def cli(main: Callable[[], object]) -> None:
    """Run a script's main() with the exit-code contract every script keeps.

    UserError: one `error:` line, exit 2. Ctrl-C: exit 130; SIGTERM: exit 143, both after the
    cleanup in `finally` blocks (no temporary files left). Anything unexpected: one line too,
    exit 1, and the traceback only with SCRFD_DEBUG=1.
    """
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        result = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Terminated:
        print("terminated", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        sys.exit(1)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            unexpected(err)
        where = f" writing {err.filename}" if err.filename else ""
        print(f"error: no space left on the device{where}; the run stopped there, and what "
              "was not yet written is as it was", file=sys.stderr)
        sys.exit(1)
    except Exception as err:  # a bug or an environment problem: still one line by default
        unexpected(err)
    sys.exit(result if isinstance(result, int) else 0)


def unexpected(err: BaseException) -> NoReturn:
    """A bug or an environment problem: one line, exit 1; the traceback with SCRFD_DEBUG=1."""
    if os.environ.get(DEBUG_ENV):
        traceback.print_exception(err)
    detail = one_line(err)
    detail = "" if detail == type(err).__name__ else detail
    print(f"error: unexpected {type(err).__name__}{': ' + detail if detail else ''} "
          f"(set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
    sys.exit(1)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the scripts' error style: one `error:` line and exit 2, no usage dump."""

    def __init__(self, doc: str | None = None, **kwargs) -> None:
        if doc:  # a module docstring: first paragraph describes, the rest is the epilog
            head, _, tail = doc.strip().partition("\n\n")
            kwargs.setdefault("description", head)
            kwargs.setdefault("epilog", tail or None)
            kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

    def _read_args_from_files(self, arg_strings: list[str], reading: tuple[str, ...] = ()
                              ) -> list[str]:
        """argparse's @LIST expansion (lists may name lists), refusing a list that names
        itself, directly or through others, instead of recursing until Python gives up."""
        expanded: list[str] = []
        for text in arg_strings:
            if not text or text[0] not in (self.fromfile_prefix_chars or ""):
                expanded.append(text)
                continue
            name = text[1:]
            if os.path.realpath(name) in reading:
                chain = " -> ".join(f"@{display(p)}" for p in (*reading, name))
                self.error(f"an @LIST file includes itself ({chain}); a list may name "
                           "other lists, never itself")
            try:
                with open(name, encoding=sys.getfilesystemencoding(),
                          errors=sys.getfilesystemencodeerrors()) as handle:
                    lines = [arg for line in handle.read().splitlines()
                             for arg in self.convert_arg_line_to_args(line)]
            except OSError as err:
                self.error(f"cannot read the list @{name}: {err.strerror or err}")
            expanded += self._read_args_from_files(lines, reading + (os.path.realpath(name),))
        return expanded


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1] (scores and IoU thresholds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer of 1 or more (threads, repeats, counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def count(text: str) -> int:
    """An argparse type: an integer of 0 or more (0 usually meaning "no limit")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def check_model(path: Path) -> Path:
    """A missing default model gets the commands that create it instead of a bare 'not found'."""
    if path.exists() or path.resolve() != DEFAULT_MODEL:
        return path  # the runners report a missing or unusable --model themselves
    fetch = "" if (MODELS_DIR / "det_500m.onnx").exists() else \
        f" (first fetch det_500m.onnx with {DOWNLOAD_HINT})"
    raise UserError(f"default model {display(path)} not found; create it with {EXPORT_HINT}"
                    f"{fetch}, or pass --model")


def parse_hw(text: str) -> tuple[int, int]:
    """Parse 'H,W' (or 'HxW'); both must be positive multiples of 32 (SCRFD's largest stride)."""
    try:
        height, width = (int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise UserError(f"size must look like H,W (for example 480,640), got {text!r}") from None
    for name, value in (("height", height), ("width", width)):
        if value > MAX_INPUT_SIDE:
            raise UserError(f"{name} {value} is larger than {MAX_INPUT_SIDE}, the largest input "
                            "size these tools accept")
        if value <= 0:
            raise UserError(f"{name} must be a positive multiple of 32, got {value}")
        if value % 32:
            lower, upper = max(32, value // 32 * 32), min(MAX_INPUT_SIDE, (value // 32 + 1) * 32)
            raise UserError(f"{name} {value} is not a multiple of 32; the nearest valid sizes "
                            f"are {lower} and {upper}" if lower != upper else
                            f"{name} {value} is not a multiple of 32; the nearest valid size "
                            f"is {lower}")
    return height, width


MAX_CAMERA_INDEX = 2**31 - 1  # OpenCV takes a C int; beyond it no camera can exist


def camera_index(text: str) -> int:
    """An argparse type: a camera index, 0 (the first camera) up to what OpenCV takes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a camera number such as 0, got {text!r}")
    if not 0 <= value <= MAX_CAMERA_INDEX:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_CAMERA_INDEX}, got {text}")
    return value


def score_threshold(args: argparse.Namespace, blur_score: float = BLUR_SCORE_THRESHOLD) -> float:
    """--score when given, else the default for the job: lower when anonymising (--blur)."""
    if args.score is not None:
        return args.score
    return blur_score if getattr(args, "blur", None) else SCORE_THRESHOLD


def add_face_output_arguments(parser: argparse.ArgumentParser, crop_name: str) -> None:
    """--blur and how it hides a face (--blur-blocks, --blur-image), --crops and --crop-size,
    which scrfd.py and video_inference_fdlm.py share."""
    from .faces import ARCFACE_SIZE, BLUR_MODES, MAX_PIXELATE_BLOCKS, PIXELATE_BLOCKS

    parser.add_argument("--blur", nargs="?", const="gaussian", choices=BLUR_MODES, default=None,
                        help="anonymise: hide each face (box grown by a margin) instead of "
                             "drawing it, by a gaussian blur (the default when given), "
                             "'pixelate' (a mosaic, --blur-blocks), 'solid' (black) or "
                             "'image' (--blur-image over each face); deface's --replacewith "
                             "blur, mosaic, solid and img")
    parser.add_argument("--blur-blocks", type=positive_int, default=None, metavar="N",
                        help=f"with --blur pixelate: each face is N blocks across, 1 to "
                             f"{MAX_PIXELATE_BLOCKS} (default {PIXELATE_BLOCKS}; finer mosaics "
                             "give faces back to a detector, docs/faces.md); the blocks grow "
                             "with the face, where deface's --mosaicsize fixes their pixels")
    parser.add_argument("--blur-image", type=Path, default=None, metavar="FILE",
                        help="with --blur image: the picture stretched over each face (its "
                             "transparent parts become black, never the face)")
    parser.add_argument("--crops", type=Path, default=None, metavar="DIR",
                        help="also write every face aligned to the ArcFace template as "
                             f"<DIR>/{crop_name} (its file name goes in the JSON line)")
    parser.add_argument("--crop-size", type=crop_side, default=ARCFACE_SIZE, metavar="PX",
                        help=f"side of the aligned crops in pixels, 16 to {MAX_CROP_SIZE} "
                             f"(default {ARCFACE_SIZE}, what ArcFace takes)")


def check_face_output_options(args: argparse.Namespace) -> None:
    """The --blur and --verify options checked before any work; sets args.replacement, the
    faces.Replacement that --blur asks for (None without --blur)."""
    from .faces import MAX_PIXELATE_BLOCKS, PIXELATE_BLOCKS, Replacement, replacement_image
    from .images import read_image

    check_verify_options(args)
    if args.blur_blocks is not None and args.blur != "pixelate":
        raise UserError("--blur-blocks sets the mosaic of --blur pixelate; add --blur pixelate")
    if args.blur_blocks is not None and args.blur_blocks > MAX_PIXELATE_BLOCKS:
        raise UserError(f"--blur-blocks must be 1 to {MAX_PIXELATE_BLOCKS}, got "
                        f"{args.blur_blocks}: finer mosaics leave faces a detector finds")
    if args.blur_image is not None and args.blur != "image":
        raise UserError("--blur-image is the picture of --blur image; add --blur image")
    if args.blur == "image" and args.blur_image is None:
        raise UserError("--blur image needs --blur-image FILE, the picture to put over faces")
    picture = None
    if args.blur == "image":
        import cv2
        import numpy as np

        image = read_image(args.blur_image)  # a one-line error for a missing or bad file
        raw = cv2.imdecode(np.fromfile(str(args.blur_image), np.uint8), cv2.IMREAD_UNCHANGED)
        alpha = raw[:, :, 3] / np.iinfo(raw.dtype).max if raw.ndim == 3 and raw.shape[2] == 4 \
            and raw.dtype.kind == "u" else None
        picture = replacement_image(image, alpha)
    args.replacement = Replacement(args.blur, args.blur_blocks or PIXELATE_BLOCKS, picture) \
        if args.blur else None


def add_tile_argument(parser: argparse.ArgumentParser, per: str = "photo",
                      blur: bool = False) -> None:
    """--tile [PX] (and with blur=True --no-tile, since --blur tiles by default)."""
    parser.add_argument("--tile", nargs="?", type=positive_int, const=TILE_FACE, default=None,
                        metavar="PX",
                        help=f"find small faces too: besides the whole {per} shrunk into the "
                             f"model's input, run tiles of the {per} at its own resolution, each "
                             "the input's size, and merge the faces (more model passes, counted "
                             f"in the summary; a {per} no larger than the input gets no tiles). "
                             "PX: faces up to this tall lie whole in at least one tile, which "
                             f"sets the overlap (default {TILE_FACE}; raised to what the whole-"
                             f"{per} pass needs on large ones)"
                             + ("; on by default with --blur" if blur else ""))
    if blur:
        parser.add_argument("--no-tile", action="store_true",
                            help=f"one pass per {per}, also with --blur (faster, misses more "
                                 "small faces)")
    if per == "frame":
        add_keyframe_argument(parser)


def add_keyframe_argument(parser: argparse.ArgumentParser) -> None:
    """--keyframe-interval: how often a video gets the full (tiled) search (keyframes.py)."""
    from .keyframes import DEFAULT_INTERVAL
    parser.add_argument("--keyframe-interval", type=positive_int, default=DEFAULT_INTERVAL,
                        metavar="K",
                        help="with tiles, the full small-face search runs on the first frame, "
                             "at every shot change and every K frames; the frames between get "
                             "the whole-frame pass, carrying patches of the frame around the "
                             "small faces being followed (more passes when they do not all "
                             "fit), so a small face appearing between keyframes "
                             f"is found within K-1 frames (default {DEFAULT_INTERVAL}; 1: the "
                             "full search on every frame)")


def tile_setting(args: argparse.Namespace) -> int | None:
    """The stated tile face size, or None for one pass: --tile, else on with --blur (where a
    missed face matters more) unless --no-tile."""
    if getattr(args, "no_tile", False):
        if args.tile is not None:
            raise UserError("give either --tile or --no-tile")
        return None
    if args.tile is not None:
        return args.tile
    return TILE_FACE if getattr(args, "blur", None) else None


MIN_CROP_SIZE, MAX_CROP_SIZE = 16, 2048  # a face is upscaled past this: only bigger files


def crop_side(text: str) -> int:
    """An argparse type: the side of aligned face crops, within stated bounds."""
    value = positive_int(text)
    if not MIN_CROP_SIZE <= value <= MAX_CROP_SIZE:
        raise argparse.ArgumentTypeError(f"must be between {MIN_CROP_SIZE} and {MAX_CROP_SIZE} "
                                         f"pixels, got {value}")
    return value


def add_detector_arguments(parser: argparse.ArgumentParser, per: str = "image",
                           blur_score: float = BLUR_SCORE_THRESHOLD) -> None:
    """The detector options scrfd.py and video_inference_fdlm.py share."""
    parser.add_argument("--score", type=fraction, default=None,
                        help=f"minimum face score, 0..1 (default {SCORE_THRESHOLD}; "
                             f"{blur_score} with --blur, where a missed face matters more)")
    parser.add_argument("--nms", type=fraction, default=NMS_THRESHOLD,
                        help=f"IoU above which overlapping boxes are merged, 0..1 "
                             f"(default {NMS_THRESHOLD})")
    parser.add_argument("--max-faces", type=count, default=0,
                        help=f"keep at most this many faces per {per}, best first (default 0: all)")
    parser.add_argument("--size", type=parse_hw, default=None, metavar="H,W",
                        help="input size for dynamic ONNX models, multiples of 32 (default 640,640;"
                             " a .tflite or fixed-size ONNX model has its own size)")
    parser.add_argument("--threads", type=positive_int, default=DEFAULT_THREADS,
                        help=f"CPU threads for inference (default {DEFAULT_THREADS})")
    add_device_argument(parser)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """--device, which every script that runs models shares."""
    parser.add_argument("--device", choices=DEVICE_PROVIDERS, default="cpu",
                        help="where ONNX models run: an ONNX Runtime execution provider by "
                             "name, with the CPU for the operations it lacks (default cpu; "
                             "cuda and tensorrt need onnxruntime-gpu, the others their own "
                             "onnxruntime build); .tflite models run on the CPU (LiteRT)")


def detector_options(args: argparse.Namespace, model_path: Path, score: float,
                     tile: int | None, **settings) -> dict:
    """SCRFD's keyword arguments from add_detector_arguments' options, --device and other
    `settings`: one dict, so a script and each Ray actor make the same detector."""
    providers = device_providers(args.device, [model_path])
    return dict(model_path=model_path, input_hw=args.size, nms_threshold=args.nms,
                score_threshold=score, max_faces=args.max_faces, threads=args.threads,
                tile=tile is not None, tile_face=tile or TILE_FACE,
                runner_options={"providers": providers} if providers else None, **settings)


def open_detector(options: dict, device: str):
    """SCRFD(**options), checked to run on --device."""
    from .detector import SCRFD

    detector = SCRFD(**options)
    check_started(detector.runner, device)
    return detector


def add_verify_arguments(parser: argparse.ArgumentParser, per: str, default_model: str,
                         score: float) -> None:
    """--verify and --verify-model, which scrfd.py and video_inference_fdlm.py share."""
    parser.add_argument("--verify", action="store_true",
                        help=f"with --blur: look for faces again in every written {per}, with the "
                             f"run's model and --verify-model; report each face still "
                             f"detectable, per {per}, and exit 1 if there is one: a blurred face "
                             f"found again at its place from score {score:g}, any other find (a "
                             f"face the run missed) from {NEVER_HIDDEN_SCORE:g}, as hands, hair "
                             "and faces a few pixels tall are found at lower scores")
    parser.add_argument("--verify-model", type=Path, default=None, metavar="MODEL",
                        help="the stronger detector for --verify; a dynamic ONNX model runs at "
                             f"each {per}'s full resolution (default: models/{default_model} "
                             "when it exists, from `export_modified_onnx.py --download "
                             "buffalo_m`; else the run's model checks alone)")


def check_verify_options(args: argparse.Namespace) -> None:
    """--verify-model needs --verify, and --verify needs --blur: refused before any work."""
    if args.verify_model is not None and not args.verify:
        raise UserError("--verify-model needs --verify")
    if args.verify and not args.blur:
        raise UserError("--verify checks what --blur hid; add --blur")
    if args.verify and getattr(args, "webcam", None) is not None:
        raise UserError("--verify reads the written video back: give a --video file")


def add_video_blur_arguments(parser: argparse.ArgumentParser) -> None:
    """The video script's anonymising options: the blurred shape, and how faces are followed."""
    from .faces import BLUR_SHAPES, VIDEO_BLUR_GROW, VIDEO_BLUR_SHAPE
    from .tracker import DEFAULT_HOLD, DEFAULT_TRACK_SCORE

    blur = parser.add_argument_group("anonymising (--blur)")
    blur.add_argument("--blur-shape", choices=BLUR_SHAPES, default=VIDEO_BLUR_SHAPE,
                      help=f"blur the face's grown box or the ellipse inside it (default "
                           f"{VIDEO_BLUR_SHAPE})")
    blur.add_argument("--blur-grow", type=float, default=VIDEO_BLUR_GROW, metavar="F",
                      help=f"each side of a face grows by this fraction of its size before "
                           f"blurring, 0..2 (default {VIDEO_BLUR_GROW})")
    blur.add_argument("--track-score", type=fraction, default=DEFAULT_TRACK_SCORE,
                      help="detections from this score, below --score, may continue a "
                           f"followed face but never start one (default {DEFAULT_TRACK_SCORE})")
    blur.add_argument("--track-hold", type=count, default=DEFAULT_HOLD, metavar="FRAMES",
                      help="a missed face stays blurred at its predicted place for this many "
                           f"frames (default {DEFAULT_HOLD}; 0 and --track-score equal to "
                           "--score: no tracking)")
    blur.add_argument("--two-pass", action="store_true",
                      help="detect the whole video first, then also blur each face for "
                           "--track-hold frames before its first detection (video files only)")


def add_video_encoding_arguments(parser: argparse.ArgumentParser) -> None:
    """--crf and --preset: the quality and speed of the video encoder."""
    from .video_sink import DEFAULT_CRF, DEFAULT_PRESET, PRESET_HELP, PRESETS

    parser.add_argument("--crf", type=int, default=None,
                        help="video quality, 0..51, lower is better and bigger (default "
                             f"{DEFAULT_CRF['libx264']} for H.264, {DEFAULT_CRF['libvpx-vp9']} "
                             "for VP9)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, metavar="NAME",
                        help=f"encoder speed: auto, {', '.join(PRESETS)}; slower gives smaller "
                             f"files at the same quality (default {DEFAULT_PRESET}; "
                             f"{PRESET_HELP})")


def seconds(text: str) -> float:
    """An argparse type: seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def add_video_run_arguments(parser: argparse.ArgumentParser, connect_timeout: float) -> None:
    """--duration, --timeout (live streams) and --ray (a cluster) for the video script."""
    from .video import STREAM_SCHEMES, STREAM_TIMEOUT

    parser.add_argument("--duration", type=seconds, default=0.0, metavar="SECONDS",
                        help="stop after this many seconds of video, counted on its own clock "
                             "from its first frame (default 0: no limit; a stream runs until "
                             "its sender stops, it stalls, or Ctrl-C)")
    parser.add_argument("--timeout", type=seconds, default=STREAM_TIMEOUT, metavar="SECONDS",
                        help="a stream URL (" + ", ".join(f"{s}://" for s in STREAM_SCHEMES)
                             + "): seconds to wait for it to connect and for each read; a "
                             "stream silent that long ends, and keeps what was received "
                             f"(default {STREAM_TIMEOUT:g})")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="one video per task on a Ray cluster (pip install .[scale]): no "
                             "ADDRESS joins or starts one as Ray does (RAY_ADDRESS, then a "
                             "local `ray start` cluster, else a new one); 'auto', host:port or "
                             "ray://host:10001 name one, 'local' always starts a new one here; "
                             "a named address that takes no connection within "
                             f"{connect_timeout:g} s is an error")


WINDOW = "SCRFD faces (q or Esc to stop)"  # the video script's --show window


def open_window(title: str) -> None:
    """Fail early and in one line without a display (OpenCV's Qt would abort the process)."""
    import cv2

    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                         or os.environ.get("WAYLAND_DISPLAY"))
    try:
        if headless:
            raise cv2.error("no display")
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)
    except cv2.error:
        raise UserError("cannot open a window (no display?); run without --show") from None


def show_frame(title: str, stop: Callable[[str], None], image) -> None:
    """--show: each written frame in the window; q or Esc asks the run to stop."""
    import cv2

    cv2.imshow(title, image)
    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
        stop("stopped from the window")
