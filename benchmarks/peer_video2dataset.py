"""The peer baseline: the same download → normalise → clip → shard work done by video2dataset
and by CNAS on the same inputs, served over HTTP from 127.0.0.1 to both.

    .venv/bin/python benchmarks/peer_video2dataset.py --videos 12 [--venv /tmp/v2d-venv]

video2dataset 1.3.0 is installed in a throwaway venv (created when missing; it pins numpy<2, so
pyarrow is held below 16). Its job: download over HTTP, ClippingSubsampler (the same 2 s windows
CNAS cuts, ``precision: exact``, i.e. re-encoded), WebDataset shards; 2 processes × 4 threads
(this machine has 2 cores). Its per-modality subsamplers do not work in 1.3.0 — with
ResolutionSubsampler/FrameSubsampler/AudioRateSubsampler configured every sample fails
(``'ResolutionSubsampler' object has no attribute 'encode_formats'``; with that attribute added,
``dictionary keys changed during iteration`` in the download worker) and 1.2.0's wheel lacks its
config files — so video2dataset does *less* work here than CNAS: no resize to 360 p, no 25 fps
CFR, no separate 16 kHz wav.
CNAS: `cnas ingest` with shots/pose/speech/FLAME off and fixed 2 s clips, embedded Ray on 2 CPUs,
``normalize.max_height`` 480 by default (the sources' size: both tools then cut clips of the same
size; the 2026-11-24 run used 360, a resize video2dataset did not do).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

V2D_JOB = r'''
import json, sys, time
import pandas as pd
from video2dataset import video2dataset

if __name__ == "__main__":  # video2dataset's workers are spawned: they re-import this file
  rows = json.load(open(sys.argv[1]))
  pd.DataFrame(rows).to_parquet(sys.argv[2])
  config = {
      "subsampling": {
          "ClippingSubsampler": {"args": {"min_length": 0.5, "max_length": 2.0, "max_length_strategy": "all",
                                          "precision": "exact"}},
      },
      "reading": {"yt_args": {"download_size": 360, "download_audio_rate": 16000, "yt_metadata_args": None},
                  "timeout": 60, "sampler": None},
      "storage": {"number_sample_per_shard": 100, "oom_shard_count": 5, "captions_are_subtitles": False},
      "distribution": {"processes_count": 2, "thread_count": 4, "subjob_size": 1000, "distributor": "multiprocessing"},
  }
  t0 = time.perf_counter()
  video2dataset(url_list=sys.argv[2], input_format="parquet", url_col="url", clip_col="clips", output_folder=sys.argv[3],
                output_format="webdataset", encode_formats={"video": "mp4"}, config=config)
  print(json.dumps({"wall_s": time.perf_counter() - t0}))
'''


def ensure_venv(venv: Path) -> float:
    """Create the throwaway venv with video2dataset; returns the seconds it took (0 when present)."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import video2dataset"], capture_output=True).returncode == 0:
        return 0.0
    t0 = time.perf_counter()
    base_python = os.path.join(sys.base_prefix, "bin", "python3")  # not this project's venv
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    subprocess.run([py, "-m", "pip", "install", "--quiet", "video2dataset==1.3.0", "pyarrow<16"], check=True)
    return time.perf_counter() - t0


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one line per request would drown the results
        pass


def serve(folder: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return float(out)


def shard_stats(folder: Path) -> tuple[int, int]:
    import tarfile

    samples, size = 0, 0
    for tar in folder.rglob("*.tar"):
        size += tar.stat().st_size
        with tarfile.open(tar) as t:
            samples += len({m.name.split(".", 1)[0] for m in t.getmembers() if m.name.endswith(".mp4")})
    return samples, size


def main() -> None:
    from pipeline.demo.inputs import DEMO_VIDEOS, make_talking_video

    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--venv", default="/tmp/v2d-venv")
    ap.add_argument("--max-height", type=int, default=480,
                    help="CNAS normalize.max_height: 480 keeps the sources' size, as video2dataset's clips do (360 resizes: more work than the peer)")
    args = ap.parse_args()
    install_s = ensure_venv(Path(args.venv))
    root = Path(tempfile.mkdtemp(prefix="cnas-peer-"))
    media = root / "media"
    media.mkdir()
    for v in DEMO_VIDEOS:
        make_talking_video(str(root / f"{v.name}.mp4"), v)
    names = []
    for i in range(args.videos):  # distinct files and URLs: nothing is cached by either tool
        name = f"v{i:04d}.mp4"
        shutil.copy(root / f"{DEMO_VIDEOS[i % len(DEMO_VIDEOS)].name}.mp4", media / name)
        names.append(name)
    base, server = serve(media)
    try:
        rows = []
        for n in names:
            d = duration(media / n)
            rows.append({"url": f"{base}/{n}", "clips": [[s, min(s + 2.0, d)] for s in [x * 2.0 for x in range(int(d // 2))]]})
        (root / "rows.json").write_text(json.dumps(rows))
        (root / "v2d_job.py").write_text(V2D_JOB)
        t0 = time.perf_counter()
        v2d = subprocess.run([str(Path(args.venv) / "bin" / "python"), str(root / "v2d_job.py"), str(root / "rows.json"),
                              str(root / "urls.parquet"), str(root / "v2d")], capture_output=True, text=True)
        if v2d.returncode != 0 or not list((root / "v2d").glob("*.tar")):
            raise SystemExit(f"video2dataset failed:\n{v2d.stderr[-3000:]}")
        v2d_wall = time.perf_counter() - t0
        v2d_inner = json.loads(v2d.stdout.strip().splitlines()[-1])["wall_s"]
        (root / "s.txt").write_text("\n".join(r["url"] for r in rows) + "\n")
        sets = ["shots.enabled=false", "pose.enabled=false", "speech.enabled=false", "curate.enabled=false", "flame.enabled=false",
                "clips.mode=fixed", "clips.window_s=2", f"normalize.max_height={args.max_height}"]
        t0 = time.perf_counter()
        ours = subprocess.run([sys.executable, "-m", "cnas", "ingest", "--sources", str(root / "s.txt"), "--out",
                               str(root / "cnas"), "--num-cpus", "2", *sum((["--set", s] for s in sets), [])],
                              capture_output=True, text=True)
        cnas_wall = time.perf_counter() - t0
        if ours.returncode != 0:
            raise SystemExit(f"cnas ingest failed:\n{ours.stderr[-3000:]}")
    finally:
        server.shutdown()
    hours = sum(duration(media / n) for n in names) / 3600
    v2d_n, v2d_b = shard_stats(root / "v2d")
    c_n, c_b = shard_stats(root / "cnas" / "shards")
    print(f"{args.videos} videos, {hours * 3600:.0f} source-seconds; video2dataset venv install: "
          f"{'present' if not install_s else f'{install_s:.0f} s'}")
    print("| tool | wall s | source-hours per wall-hour | clips in shards | shard MB |")
    print("|---|---|---|---|---|")
    print(f"| video2dataset 1.3.0 (download + exact clips; process start included, {v2d_inner:.1f} s inside) | {v2d_wall:.1f} | {hours / (v2d_wall / 3600):.2f} | {v2d_n} | {v2d_b / 1e6:.1f} |")
    print(f"| CNAS (cnas ingest, process start included) | {cnas_wall:.1f} | {hours / (cnas_wall / 3600):.2f} | {c_n} | {c_b / 1e6:.1f} |")
    print(f"CNAS / video2dataset throughput: {v2d_wall / cnas_wall:.2f}x")


if __name__ == "__main__":
    main()
