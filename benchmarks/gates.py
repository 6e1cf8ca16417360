"""The gate benchmark: every accept/reject gate of the ingest on labelled real media.

    .venv/bin/python benchmarks/gates.py run [--out /tmp/cnas-gates] [--set K=V ...]
    .venv/bin/python benchmarks/gates.py fit --run RUN_DIR

``run`` makes the cases of ``tests/real_media.py`` (the vendored real recordings of
``media/real/`` — calibration and held-out files — and the negatives made from each group's own
files: dubs, audio shifted by ±3/5/10 frames, a still frame, a voice-over on faceless B-roll, a
two-shot with alternating audio), ingests them all in one ``cnas ingest`` with default settings
(plus ``--set`` overrides), and prints one table per group:

* per kind, the speech seconds (the transcript's words), the clip seconds and, per reject reason,
  the seconds rejected: on genuine material these are false rejects, on negatives true rejects;
* the yield of the genuine files (clip seconds / speech seconds) and the files that gave no clip;
* the measured offset of every shifted file against its applied shift;
* the share of the two-shots' clip seconds whose crop holds the face whose voice is heard.

It also draws a contact sheet of every stretch a genuine file lost (``OUT/sheets/``), to judge each
false reject by eye.

``fit`` refits the ``lips`` sync backend's regression (``geometry/lip_audio.py``) on the
calibration files of an ingest run (their pose meshes and wavs) and writes
``geometry/data/lip_audio.npz``; the held-out files never reach it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from real_media import CALIBRATION, HELD_OUT, Case, build_cases, speech_seconds  # noqa: E402


def _video_dirs(run: str) -> dict[str, str]:
    """Case name (the file stem) -> video id of an ingest run."""
    ids = os.listdir(os.path.join(run, "work", "ledger"))
    return {vid.rsplit("-", 1)[0]: vid for vid in ids}


def _ledger(run: str, vid: str, stage: str) -> dict | None:
    path = os.path.join(run, "work", "ledger", vid, f"{stage}.json")
    if not os.path.exists(path):
        return None
    entry = json.load(open(path))
    return entry["output"] if entry.get("status") == "ok" else {"failed": entry.get("failure")}


def fit_lips(run: str) -> None:
    """Refit ``geometry/data/lip_audio.npz`` on the calibration files of ``run``."""
    import soundfile as sf

    from geometry.lip_audio import MODEL_PATH, fit, lip_features, log_mel

    vids = _video_dirs(run)
    pairs, used = [], []
    for name in CALIBRATION:
        vid = vids[name]
        media = os.path.join(run, "work", "media", vid)
        with np.load(os.path.join(media, "pose.npz")) as z:
            w, h = (int(v) for v in z["frame_size"])
            lips = lip_features(z["faces"][:, 0], w, h)
        audio, sr = sf.read(os.path.join(media, "audio.wav"), dtype="float32")
        pairs.append((lips, log_mel(audio, sr, 25.0, len(lips))))
        used.append(name)
    model = fit(pairs, info={"fitted_on": used, "source": "media/real (benchmarks/gates.py fit)"})
    model.save(MODEL_PATH)
    print(f"wrote {MODEL_PATH}: {model.weights.shape}, {model.info['frames']} frames of {', '.join(used)}")


def ingest(cases: list[Case], out: str, overrides: list[str], language: str) -> float:
    """One ``cnas ingest`` of every case; the sources file gives each the recordings' language (the
    column a data engineer fills for a corpus; Whisper base's own guess on 5-s clips was Welsh twice)."""
    os.makedirs(out, exist_ok=True)
    sources = os.path.join(out, "sources.csv")
    with open(sources, "w") as f:
        f.write("path,language\n" + "".join(f"{c.path},{language}\n" for c in cases))
    cmd = [sys.executable, "-m", "cnas", "ingest", "--sources", sources, "--out", os.path.join(out, "run")]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=False, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def speech_in_clips(transcript: dict | None, clips: list[dict]) -> float:
    """Seconds of the transcript's words that lie inside the clips (overlaps once)."""
    if not transcript or "segments" not in transcript:
        return 0.0
    spans = sorted((w["start_s"], w["end_s"]) for s in transcript["segments"] for w in s["words"])
    cuts = sorted((c["start_s"], c["end_s"]) for c in clips)
    total, end = 0.0, -1.0
    for a, b in spans:
        a = max(a, end)
        if b <= a:
            continue
        end = b
        total += sum(max(0.0, min(b, y) - max(a, x)) for x, y in cuts)
    return total


def two_shot_share(clips: list[dict], case: Case, width: int) -> tuple[float, float]:
    """(clip seconds, of which the crop holds the face whose voice is heard): the crop's centre is on
    the side (left/right half of the frame) of the file whose audio plays at the clip's middle."""
    total = right = 0.0
    for c in clips:
        mid = (c["start_s"] + c["end_s"]) / 2
        side = next(s for a, b, s in case.halves if a <= mid < b or (s == case.halves[-1][2] and mid >= a))
        box = c.get("crop_box")
        centre = (box[0] + box[2] / 2) if box else width / 2
        got = "left" if centre < width / 2 else "right"
        dur = c["end_s"] - c["start_s"]
        total += dur
        right += dur if got == side else 0.0
    return total, right


def report(cases: list[Case], run: str) -> dict:
    """The table (printed) and its numbers (returned)."""
    vids = _video_dirs(run)
    rows: dict[tuple[str, str], dict] = defaultdict(lambda: {"files": 0, "speech_s": 0.0, "kept_s": 0.0, "clip_s": 0.0, "rejected": defaultdict(float), "no_clip": []})
    shifts, two_shots, failures = [], [], []
    for case in cases:
        vid = vids.get(case.name)
        clips_out = _ledger(run, vid, "clips") if vid else None
        if not clips_out or "failed" in clips_out:
            failures.append((case.name, (clips_out or {}).get("failed")))
            continue
        row = rows[(case.group, case.kind)]
        row["files"] += 1
        transcript = _ledger(run, vid, "speech")
        row["speech_s"] += speech_seconds(transcript)
        row["kept_s"] += speech_in_clips(transcript, clips_out["clips"])
        clip_s = sum(c["end_s"] - c["start_s"] for c in clips_out["clips"])
        row["clip_s"] += clip_s
        for why, s in clips_out["rejected_s"].items():
            row["rejected"][why] += s
        if not clips_out["clips"]:
            row["no_clip"].append(case.name)
        if case.kind == "shift":
            offs = [c["sync"]["offset_frames"] for c in clips_out["clips"] if c.get("sync")]
            shifts.append((case, offs, clips_out["rejected_s"]))
        if case.kind == "two_shot":
            width = _ledger(run, vid, "normalize")["width"]
            two_shots.append((case, *two_shot_share(clips_out["clips"], case, width)))
    numbers = {}
    for group in ("calibration", "held_out"):
        print(f"\n== {group} ({', '.join(CALIBRATION if group == 'calibration' else HELD_OUT)}) ==")
        print(f"{'kind':<11} {'files':>5} {'speech s':>9} {'in clips':>8} {'yield':>6} {'clip s':>7}  rejected seconds by reason")
        for kind in ("genuine", "two_shot", "dub", "shift", "still", "blur", "voice_over"):
            row = rows.get((group, kind))
            if not row:
                continue
            y = row["kept_s"] / row["speech_s"] if row["speech_s"] else float("nan")
            rej = ", ".join(f"{k} {v:.1f}" for k, v in sorted(row["rejected"].items(), key=lambda kv: -kv[1]))
            print(f"{kind:<11} {row['files']:>5} {row['speech_s']:>9.1f} {row['kept_s']:>8.1f} {y:>6.0%} {row['clip_s']:>7.1f}  {rej}")
            if kind in ("genuine", "two_shot") and row["no_clip"]:
                print(f"{'':<11} no clip: {', '.join(row['no_clip'])}")
            numbers[f"{group}/{kind}"] = {"files": row["files"], "speech_s": round(row["speech_s"], 2), "speech_in_clips_s": round(row["kept_s"], 2),
                                          "clip_s": round(row["clip_s"], 2),
                                          "rejected_s": {k: round(v, 2) for k, v in row["rejected"].items()}, "no_clip": row["no_clip"]}
    wide = {}
    for case, _, _, off in clip_scores([c for c, _, _ in shifts], run):
        wide.setdefault(case.name, []).append(off)
    print("\nshifted audio (applied → offsets measured on every candidate clip with the gate opened wide; of the kept clips; rejects):")
    for case, offs, rej in shifts:
        print(f"  {case.name:<28} {case.shift_frames:+d} → measured {wide.get(case.name, '-')}, kept {offs or '-'}  {dict(rej) or ''}")
    print("\ntwo-shots (clip seconds, of which cropped to the voice's face):")
    for case, total, right in two_shots:
        print(f"  {case.name:<40} {total:5.1f} s, {right:5.1f} s right ({right / total if total else float('nan'):.0%})")
    if failures:
        print("\nfailed videos:", failures)
    numbers["shifts"] = [(c.name, c.shift_frames, wide.get(c.name), o) for c, o, _ in shifts]
    numbers["two_shots"] = [(c.name, t, r) for c, t, r in two_shots]
    return numbers


def clip_scores(cases: list[Case], run: str) -> list[tuple[Case, float, float, int]]:
    """Every candidate clip of every case with the sync gate opened wide (no confidence or offset
    limit): (case, seconds, confidence, offset). What the sync thresholds are chosen from."""
    from pipeline.engine.config import load_config
    from schemas import ShotList, Transcript
    from stages.pose import load_pose
    from stages.select import select_clips

    cfg = load_config(None, [])
    clip_opts = cfg.clips
    wide = cfg.sync.model_copy(update={"min_confidence": 0.0, "fail_below": 0.0, "max_offset_frames": 99})
    vids, out = _video_dirs(run), []
    for case in cases:
        vid = vids.get(case.name)
        media = _ledger(run, vid, "normalize") if vid else None
        sync_path = os.path.join(run, "work", "media", vid or "", "sync.npz")
        if not media or "failed" in media or not os.path.exists(sync_path):
            continue
        with np.load(sync_path) as z:
            sync = {k: z[k] for k in z.files}
        pose = load_pose(os.path.join(run, "work", "media", vid, "pose.npz"))
        speech, shots = _ledger(run, vid, "speech"), _ledger(run, vid, "shots")
        sel = select_clips(media["num_frames"], media["fps"], media["width"], media["height"], ShotList.model_validate(shots),
                           Transcript.model_validate(speech), pose, clip_opts, sync, wide)
        out += [(case, n / media["fps"], s.confidence, s.offset_frames) for (_, n), s in zip(sel.windows, sel.syncs)]
    return out


def calibrate(scores: list[tuple[Case, float, float, int]], max_offset: int) -> None:
    """Seconds of genuine clips kept and of dubs rejected for a grid of confidence thresholds (the
    offset limit applied as configured), per group."""
    print(f"\nsync gate: seconds kept of genuine clips / rejected of dubs, by confidence threshold (|offset| <= {max_offset})")
    for group in ("calibration", "held_out"):
        gen = [(s, c, o) for case, s, c, o in scores if case.group == group and case.kind == "genuine"]
        dub = [(s, c, o) for case, s, c, o in scores if case.group == group and case.kind == "dub"]
        if not gen or not dub:
            continue
        cells = []
        for t in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35):
            kept = sum(s for s, c, o in gen if c >= t and abs(o) <= max_offset) / sum(s for s, _, _ in gen)
            rej = sum(s for s, c, o in dub if c < t or abs(o) > max_offset) / sum(s for s, _, _ in dub)
            cells.append(f"{t:.2f}: {kept:.0%}/{rej:.0%}")
        print(f"  {group:<12} " + "  ".join(cells))
        print(f"  {'':<12} genuine conf {np.round(sorted(c for _, c, _ in gen), 2).tolist()} offsets {[o for _, _, o in gen]}")
        print(f"  {'':<12} dub conf (|offset| <= {max_offset}) {np.round(sorted(c for _, c, o in dub if abs(o) <= max_offset), 2).tolist()}")


def false_reject_sheets(cases: list[Case], run: str, out: str) -> list[str]:
    """A contact sheet (``cnas inspect``'s) of every stretch a genuine file lost, to judge each
    false reject by eye: ``OUT/sheets/false-<reason>-<file>-<start ms>.png``."""
    from pipeline.inspect.sheets import draw_sheet, sheet_from_source
    from schemas import Transcript
    from stages.pose import load_pose

    vids, written = _video_dirs(run), []
    os.makedirs(os.path.join(out, "sheets"), exist_ok=True)
    for case in cases:
        vid = vids.get(case.name)
        clips = _ledger(run, vid, "clips") if case.kind == "genuine" and vid else None
        if not clips or "failed" in clips:
            continue
        media, speech = _ledger(run, vid, "normalize"), _ledger(run, vid, "speech")
        work = os.path.join(run, "work", "media", vid)
        pose = load_pose(os.path.join(work, "pose.npz"))
        for span in clips["reject_spans"]:
            name = os.path.join(out, "sheets", f"false-{span['reason']}-{case.name}-{int(span['start_s'] * 1000)}.png")
            facts = [f"genuine {case.name}, rejected {span['reason']}", f"{span['start_s']:.2f}-{span['end_s']:.2f} s"]
            data = sheet_from_source(os.path.join(work, "video.mp4"), os.path.join(work, "audio.wav"), pose,
                                     Transcript.model_validate(speech), media["fps"], span["start_s"], span["end_s"],
                                     f"{case.name} {span['reason']}", facts, media["width"], media["height"], 6)
            draw_sheet(data, name)
            written.append(name)
    return written


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", default="/tmp/cnas-gates")
    r.add_argument("--set", dest="overrides", action="append", default=[])
    r.add_argument("--groups", default="calibration,held_out")
    r.add_argument("--language", default="en", help="the language column of every case (the real set is English talk)")
    r.add_argument("--report-only", action="store_true", help="only print the table of an earlier run in --out")
    f = sub.add_parser("fit")
    f.add_argument("--run", required=True, help="an ingest run folder holding the calibration files")
    args = p.parse_args()
    if args.cmd == "fit":
        fit_lips(args.run)
        return 0
    cases = build_cases(os.path.join(args.out, "inputs"), tuple(args.groups.split(",")))
    if not args.report_only:
        wall = ingest(cases, args.out, args.overrides, args.language)
        print(f"{len(cases)} inputs ingested in {wall:.0f} s ({' '.join('--set ' + o for o in args.overrides) or 'default settings'})")
    numbers = report(cases, os.path.join(args.out, "run"))
    from pipeline.engine.config import load_config

    calibrate(clip_scores(cases, os.path.join(args.out, "run")), load_config(None, args.overrides).sync.max_offset_frames)
    sheets = false_reject_sheets(cases, os.path.join(args.out, "run"), args.out)
    print(f"\ncontact sheets of the genuine files' rejected stretches: {len(sheets)} in {os.path.join(args.out, 'sheets')}")
    with open(os.path.join(args.out, "gates.json"), "w") as fh:
        json.dump(numbers, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
