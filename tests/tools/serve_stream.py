"""Serve a sample video as a live MPEG-TS stream over HTTP on 127.0.0.1, for the stream tests:
`python serve_stream.py VIDEO FRAMES THEN` prints `port N`, then serves one client.

The stream is what a live HTTP source sends: an open-ended chunked response of MPEG-TS,
H.264 encoded as it goes (zero latency: each frame leaves as one packet, flushed to the socket
at once), printing `sent N` after each frame, at FPS frames a second. THEN says what happens
after the last frame: `close` ends the stream cleanly (the last chunk); `hold` keeps the
connection open and silent (a stalled stream, or, killed by the test, one cut off).
"""
from __future__ import annotations

import http.server
import sys
import time
from fractions import Fraction

import av

FPS = 60  # faster than real time: the tests stay short


class Chunked:
    """A write-only file that sends each write as one HTTP/1.1 chunk."""

    def __init__(self, wfile) -> None:
        self.wfile = wfile

    def write(self, data: bytes) -> int:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), bytes(data)))
            self.wfile.flush()
        return len(data)

    def end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def send(wfile, video: str, frames: int, then: str) -> None:
    """FRAMES frames of `video` as MPEG-TS into `wfile`, then close or hold."""
    body = Chunked(wfile)
    with av.open(video) as source:
        decoded = source.decode(video=0)
        out = av.open(body, "w", format="mpegts", container_options={"flush_packets": "1"})
        stream = None
        for index in range(frames):
            frame = next(decoded)
            if stream is None:
                stream = out.add_stream("libx264", rate=FPS)
                stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
                stream.time_base = Fraction(1, FPS)
                stream.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "20"}
            image = frame.reformat(format="yuv420p")
            image.pts, image.time_base = index, Fraction(1, FPS)
            out.mux(stream.encode(image))
            print(f"sent {index + 1}", flush=True)
            time.sleep(1 / FPS)
        if then == "hold":
            time.sleep(3600)  # connected and silent, until killed
        out.mux(stream.encode(None))
        out.close()
    body.end()


def main(video: str, frames: int, then: str) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            send(self.wfile, video, frames, then)
            self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Handler) as server:
        print(f"port {server.server_port}", flush=True)
        server.handle_request()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
