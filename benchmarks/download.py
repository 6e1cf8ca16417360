"""Download stage cost on a local HTTP server: the direct GET and the yt-dlp path, N times each.

    .venv/bin/python benchmarks/download.py [--mb 64] [--repeat 5]

Serves one mp4 of about ``--mb`` MiB (lossless x264 test pattern; the stage checks the container)
from 127.0.0.1 and downloads it with ``stages.download.download``
(``direct_media`` on: one GET; off: through yt-dlp's generic extractor), fresh folder each time.
Prints the median seconds of each path and the MiB/s. Run it from an old checkout too
(``PYTHONPATH=OLD python OLD/benchmarks/download.py``) to compare versions in one command.
"""

from __future__ import annotations

import argparse
import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from schemas import SourceItem  # noqa: E402
from stages.download import DownloadOptions, download  # noqa: E402


def _serve(folder: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=folder, **k)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a probe that reads the first bytes and hangs up is not an error worth a traceback

    server = Server(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        served = os.path.join(tmp, "served")
        os.makedirs(served)
        clip = os.path.join(served, "clip.mp4")
        # noise keeps lossless x264 near its raw size: ~2.9 MiB a second at 320x240, 25 fps
        seconds = max(1, round(args.mb / 2.9))
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"nullsrc=s=320x240:r=25:d={seconds},geq=random(1)*255:128:128",
                        "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", clip], check=True)
        size = os.path.getsize(clip)
        print(f"served: {size / 2**20:.1f} MiB mp4")
        server, base = _serve(served)
        try:
            for label, direct in (("direct GET", True), ("yt-dlp", False)):
                times = []
                for i in range(args.repeat):
                    dest = os.path.join(tmp, f"{label[:3]}{i}")
                    t0 = time.perf_counter()
                    got = download(SourceItem(video_id="v", uri=f"{base}/clip.mp4", kind="url"), dest,
                                   DownloadOptions(direct_media=direct, retries=0))
                    times.append(time.perf_counter() - t0)
                    assert os.path.getsize(got.media_path) == size
                med = statistics.median(times)
                print(f"{label}: median {med:.3f} s over {args.repeat} ({size / 2**20 / med:.0f} MiB/s); all: "
                      + " ".join(f"{t:.3f}" for t in times))
        finally:
            server.shutdown()


if __name__ == "__main__":
    main()
