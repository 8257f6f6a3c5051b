"""scrfdkit: the library behind the scrFDOnlyInference scripts.

    from scrfdkit import SCRFD, read_image
    faces = SCRFD("models/scrfd500m_480x640_float32.tflite").detect(read_image("photo.jpg"))
    # videos: video_faces() (each frame's faces) and anonymise_video() (a blurred copy)

TensorFlow is never imported here, so inference starts fast and small.
"""
import os

# Refuse images whose header claims more than 2^28 pixels (16384 x 16384) before OpenCV
# allocates them; its own limit, 2^30, lets a damaged header ask for gigabytes. Set before
# cv2 is first imported, which is when OpenCV reads it.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 28))

from .detections import Detections, draw_detections  # noqa: E402
from .detector import SCRFD  # noqa: E402
from .errors import UserError  # noqa: E402
from .files import read_image  # noqa: E402

__all__ = ["SCRFD", "Detections", "UserError", "anonymise_video", "draw_detections", "read_image",
           "video_faces"]
VIDEO_API = ("anonymise_video", "video_faces")  # scrfdkit/video_api.py: PyAV is imported when used


def __getattr__(name: str):
    """The video API on first use, so `import scrfdkit` for photos does not load PyAV."""
    if name in VIDEO_API:
        from .video_api import anonymise_video, video_faces

        return {"anonymise_video": anonymise_video, "video_faces": video_faces}[name]
    raise AttributeError(f"module 'scrfdkit' has no attribute {name!r}")
