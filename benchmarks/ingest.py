"""Ingestion throughput on N generated talking-person videos (embedded local Ray).

    .venv/bin/python benchmarks/ingest.py --videos 8 [--num-cpus 2] [--window-s 2] [--max-height 480]
    .venv/bin/python benchmarks/ingest.py --mix news [--episodes 3] [--episode-s 60] [--set K=V ...]

``--mix news``: broadcast-like episodes of real anchors (benchmarks/news_mix.py: anchor, B-roll, wide shot,
two-shot, silence in stated shares), every stage on, selected clips; the exhaustive configuration
(``pose.cascade=false``) and the cascade run side by side on the same files in this one command.
Reported: source-hours per wall-hour of each, the seconds the dense models looked at, the share of
the exhaustive run's accepted clip seconds the cascade keeps (time overlap per video), and the
mean distance between the two runs' face landmarks on the cascade's clips. ``--runs nocurate,cascade``
measures what the broadcast curation stage costs (the cascade run without and with it).

Prints source-hours per wall-hour (whole run, including Ray start-up, and DAG only) and the
seconds each stage spent, summed over videos; appends nothing by itself — copy the printed table
into docs/BENCHMARKS.md with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.engine.config import load_config
from pipeline.demo.inputs import DEMO_VIDEOS, make_talking_video
from pipeline.engine.runner import run_ingest


def _clip_spans(run: str) -> dict[str, list[tuple[float, float]]]:
    """Accepted clips of a run: video id -> (start_s, end_s) in the normalised source."""
    from pipeline.release.files import iter_tar_samples
    from schemas import ClipRecord

    spans: dict[str, list[tuple[float, float]]] = {}
    shards = os.path.join(run, "shards")
    for name in sorted(os.listdir(shards)) if os.path.isdir(shards) else []:
        for _, members in iter_tar_samples(os.path.join(shards, name)):
            c = ClipRecord.model_validate_json(members["json"])
            spans.setdefault(c.video_id, []).append((c.start_s, c.end_s))
    return spans


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(y, q) - max(x, p)) for x, y in a for p, q in b)


def _landmark_error(exhaustive: str, cascade: str, spans: dict[str, list[tuple[float, float]]], key: str = "face") -> tuple[float, int]:
    """Mean pixel distance between the two runs' landmarks (``face``: the primary face mesh, 478
    points; ``body``: the 33 pose points the exhaustive pass saw; x and y) over the frames of the
    cascade's clips where both found them; (mean px per landmark, landmarks compared)."""
    from stages.pose import load_pose

    total, frames = 0.0, 0
    for vid, clips in spans.items():
        a = load_pose(os.path.join(exhaustive, "work", "media", vid, "pose.npz"))
        b = load_pose(os.path.join(cascade, "work", "media", vid, "pose.npz"))
        w, h = (float(x) for x in a["frame_size"])
        fps = float(a["fps"])
        for s, e in clips:
            f0, f1 = round(s * fps), round(e * fps)
            if key == "face":
                fa, fb = np.asarray(a["faces"][f0:f1, 0, :, :2]), np.asarray(b["faces"][f0:f1, 0, :, :2])
                seen = np.ones(fa.shape[:2], bool)
            else:  # body: the landmarks the exhaustive pass saw (visibility > 0.5), not legs guessed off screen
                fa, fb = np.asarray(a[key][f0:f1, :, :2]), np.asarray(b[key][f0:f1, :, :2])
                seen = np.asarray(a["body_visibility"][f0:f1]) > 0.5
            d = np.linalg.norm((fa - fb) * [w, h], axis=-1)
            ok = np.isfinite(d) & seen
            total += float(d[ok].sum())
            frames += int(ok.sum())
    return (total / frames if frames else float("nan")), frames


def news_mix(args) -> None:
    from benchmarks.news_mix import MIX, build_episode, build_segments
    from schemas import PoseResult

    root = args.keep or tempfile.mkdtemp(prefix="cnas-news-")
    segments = build_segments(os.path.join(root, "segments"))
    lines, kinds = ["path,id,language"], {k: 0.0 for k in MIX}
    for i in range(args.episodes):
        path = os.path.join(root, f"episode_{i:02d}_{int(args.episode_s)}s.mp4")
        have = build_episode(path, segments, args.episode_s, seed=i)
        for k, v in have.items():
            kinds[k] += v
        lines.append(f"{path},news{i:02d},en")
    sources = os.path.join(root, "sources.csv")
    with open(sources, "w") as f:
        f.write("\n".join(lines) + "\n")
    total = sum(kinds.values())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.episodes} episodes x ~{args.episode_s:.0f} s, "
          f"num_cpus={args.num_cpus}; mix by seconds: " + ", ".join(f"{k} {v / total:.0%}" for k, v in kinds.items()))
    base = [f"ray.num_cpus={args.num_cpus}", f"normalize.max_height={args.max_height}", *args.set]
    runs = {}
    # exhaustive: every graph on every frame (the toolkit before the cascade)
    # nocurate: the cascade without the broadcast curation stage (what curation costs: --runs nocurate,cascade)
    modes = {"exhaustive": ["pose.cascade=false", "pose.body_every=1"], "cascade": ["pose.cascade=true"],
             "nocurate": ["pose.cascade=true", "curate.enabled=false"]}
    for name, extra in ((m, modes[m]) for m in args.runs.split(",")):
        out = os.path.join(root, f"run-{name}-{int(time.time())}")
        t0 = time.perf_counter()
        result = run_ingest(sources, out, load_config(None, [*base, *extra]), echo=lambda m: None)
        wall = time.perf_counter() - t0
        dense = 0.0
        for vid in (f"news{i:02d}" for i in range(args.episodes)):
            from pipeline.engine.ledger import read_entry
            from pipeline.engine.workdir import WorkDir

            e = read_entry(WorkDir(os.path.join(out, "work")), vid, "pose")
            if e and e.status == "ok":
                dense += PoseResult.model_validate(e.output).dense_s or 0.0
        runs[name] = {"out": out, "wall": wall, "stats": result.stats, "dense_s": dense, "clips": _clip_spans(out)}
    print("| run | wall s | source-hours per wall-hour | dense models looked at (s of source) | clips | clip seconds | stage seconds (sum) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        s = r["stats"]
        clip_s = sum(e - b for v in r["clips"].values() for b, e in v)
        stages = ", ".join(f"{k} {t.seconds:.1f}" for k, t in s.stage_timings.items())
        print(f"| {name} | {r['wall']:.1f} | {s.source_hours / (r['wall'] / 3600):.2f} | {r['dense_s']:.1f} of {s.source_hours * 3600:.1f} "
              f"| {s.clips} | {clip_s:.1f} | {stages} |")
    for name, r in runs.items():
        print(f"{name}: accepted clip seconds {sum(e - b for v in r['clips'].values() for b, e in v):.1f}; rejects {dict(r['stats'].rejects_by_reason)}")
    if {"nocurate", "cascade"} <= set(runs):
        off, on = runs["nocurate"], runs["cascade"]
        cur = on["stats"].stage_timings.get("curate")
        total = sum(t.seconds for t in on["stats"].stage_timings.values())
        print(f"curation: wall {on['wall']:.1f} s with, {off['wall']:.1f} s without ({on['wall'] / off['wall'] - 1:+.1%}); curate stage "
              f"{cur.seconds if cur else 0:.1f} s of {total:.1f} stage seconds ({(cur.seconds if cur else 0) / total:.1%})")
    if set(runs) != {"exhaustive", "cascade"}:
        return
    ex, ca = runs["exhaustive"], runs["cascade"]
    ex_s = sum(e - b for v in ex["clips"].values() for b, e in v)
    kept = sum(_overlap(v, ca["clips"].get(vid, [])) for vid, v in ex["clips"].items())
    err, n = _landmark_error(ex["out"], ca["out"], ca["clips"])
    body_err, body_n = _landmark_error(ex["out"], ca["out"], ca["clips"], "body")
    speed = ex["wall"] / ca["wall"]
    print(f"cascade vs exhaustive: {speed:.2f}x wall; keeps {kept:.1f} of {ex_s:.1f} accepted clip seconds "
          f"({kept / ex_s:.1%}); on the cascade's clips the face mesh is {err:.2f} px from the exhaustive one "
          f"(mean over {n} landmarks), the visible body landmarks {body_err:.2f} px ({body_n} landmarks)")
    print("rejects exhaustive:", dict(ex["stats"].rejects_by_reason))
    print("rejects cascade:   ", dict(ca["stats"].rejects_by_reason))
    print(json.dumps({"speedup": speed, "kept": kept / ex_s if ex_s else None, "landmark_px": err, "body_px": body_err,
                      **{f"{k}_source_h_per_h": r["stats"].source_hours / (r["wall"] / 3600) for k, r in runs.items()}}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mix", choices=["demo", "news"], default="demo", help="demo: the demo anchors; news: broadcast-like episodes (real anchors, B-roll, wide shots, two-shots, silence)")
    ap.add_argument("--episodes", type=int, default=3, help="--mix news: episodes")
    ap.add_argument("--episode-s", type=float, default=60.0, help="--mix news: seconds per episode")
    ap.add_argument("--set", action="append", default=[], help="--mix news: config override for both runs")
    ap.add_argument("--runs", default="exhaustive,cascade", help="--mix news: which runs (comma-separated; both to compare them)")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--window-s", type=float, default=2.0)
    ap.add_argument("--max-height", type=int, default=480)
    ap.add_argument("--keep", help="keep inputs/outputs in this folder")
    args = ap.parse_args()
    if args.mix == "news":
        return news_mix(args)
    root = args.keep or tempfile.mkdtemp(prefix="cnas-bench-")
    inputs = os.path.join(root, "inputs")
    os.makedirs(inputs, exist_ok=True)
    lines = ["path,id"]
    for v in DEMO_VIDEOS:
        path = os.path.join(inputs, f"{v.name}.mp4")
        if not os.path.exists(path):
            make_talking_video(path, v)
    for i in range(args.videos):  # the demo videos under distinct ids: every one is processed in full
        lines.append(f"{os.path.join(inputs, DEMO_VIDEOS[i % len(DEMO_VIDEOS)].name)}.mp4,bench{i:04d}")
    sources = os.path.join(root, "sources.csv")
    with open(sources, "w") as f:
        f.write("\n".join(lines) + "\n")
    cfg = load_config(None, [f"ray.num_cpus={args.num_cpus}", f"clips.window_s={args.window_s}", f"normalize.max_height={args.max_height}"])
    out = os.path.join(root, f"run-{int(time.time())}")
    t0 = time.perf_counter()
    result = run_ingest(sources, out, cfg, echo=lambda m: None)
    wall = time.perf_counter() - t0
    s = result.stats
    hours_in = s.source_hours
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; videos={args.videos} num_cpus={args.num_cpus} "
          f"window_s={args.window_s} max_height={args.max_height}")
    print(f"source audio/video: {hours_in * 3600:.1f} s in {s.clips} clips, {s.shards} shards")
    print(f"wall (incl. Ray start): {wall:.1f} s -> {hours_in / (wall / 3600):.2f} source-hours per wall-hour")
    print("| stage | videos | seconds (sum) | seconds per source-second |")
    print("|---|---|---|---|")
    for name, t in s.stage_timings.items():
        print(f"| {name} | {t.videos} | {t.seconds:.2f} | {t.seconds / max(hours_in * 3600, 1e-9):.3f} |")
    print(json.dumps({"wall_s": wall, "source_s": hours_in * 3600, "clips": s.clips}))


if __name__ == "__main__":
    main()
