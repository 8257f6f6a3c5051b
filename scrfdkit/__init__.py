"""scrfdkit: the library behind the scrFDOnlyInference scripts.

    from scrfdkit import SCRFD, read_image
    faces = SCRFD("models/scrfd500m_480x640_float32.tflite").detect(read_image("photo.jpg"))

TensorFlow is never imported here, so inference starts fast and small.
"""
from .cli import UserError
from .detections import Detections, draw_detections
from .detector import SCRFD
from .files import read_image

__all__ = ["SCRFD", "Detections", "UserError", "draw_detections", "read_image"]
