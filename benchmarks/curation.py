"""The curation benchmark: every broadcast-curation detector on fixtures with known answers, and what
the curation gates cost the untouched real recordings.

    .venv/bin/python benchmarks/curation.py [--out /tmp/cnas-curation] [--set K=V ...]
    .venv/bin/python benchmarks/curation.py --run /tmp/cnas-curation/run     # score an existing run

One ``cnas ingest`` of the 13 real recordings of ``media/real/`` and the fixtures of
``tests/curation_media.py`` (subtitles over and under the mouth, a ticker, a logo, zoom / pan /
shake, a real hand over the mouth, blur, compression, darkening, letterbox, picture-in-picture, a
segment rebroadcast in a second episode, two segments of one anchor), as an *audit* run
(``curate.reject=false``, ``curate.duplicates=keep``): every clip keeps its scores. The default gates
(``stages.curate.gates`` with ``CurateOptions()``) and the default duplicate grouping
(``stages.curate.group``) are then applied to those scores, so the figures are those of the defaults
while nothing an earlier detector took is hidden from a later one. Printed:

* per detector, clip-level true / false positives and misses, precision and recall;
* duplicates: clip pairs found / missed / false (pairs whose picture was re-framed are not scored);
* OCR against the drawn subtitle text: CER of what was read, and the share of drawn lines read;
* the real recordings' clip seconds lost to the default curation gates, calibration and held-out
  files apart (the thresholds were set on the calibration files: docs/curation.md);
* fixture stretches that gave no clip at all (an earlier gate took them) with that gate.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tarfile
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from curation_media import DETECTORS, Fixture, build_fixtures, real_fixtures, same_segment  # noqa: E402
from real_media import CALIBRATION, HELD_OUT  # noqa: E402

from schemas import ClipRecord  # noqa: E402
from stages.curate import CurateOptions, Fingerprinted, gates, group  # noqa: E402
from stages.curate.text import normalise_text, subtitle_cer  # noqa: E402

AUDIT = ["curate.reject=false", "curate.duplicates=keep"]


def clips_of(run: str) -> list[ClipRecord]:
    out = []
    for tar in sorted(glob.glob(os.path.join(run, "shards", "*.tar"))):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".json"):
                    out.append(ClipRecord.model_validate_json(t.extractfile(m).read()))
    return out


def fired(clip: ClipRecord, opts: CurateOptions) -> set[str]:
    """The detectors that fire on a clip at ``opts`` (rejects from its scores, flags, text read)."""
    q = clip.quality
    out = {c.reason for c in gates(q, opts).values() if c.verdict == "fail"}
    cur = clip.curation
    if cur and cur.text_boxes:
        out.add("text")
    if cur and cur.subtitle_cer is not None and cur.subtitle_cer > opts.max_subtitle_cer:
        out.add("subtitle_mismatch")
    if q.get("picture_in_picture", 0) > 0:
        out.add("picture_in_picture")
    return out


def score(run: str, fixtures: list[Fixture]) -> dict:
    opts = CurateOptions()
    by_name = {f.name: f for f in fixtures}
    clips = clips_of(run)
    placed = []  # (clip, fixture, part)
    for c in clips:
        f = by_name.get(c.video_id.rsplit("-", 1)[0])
        if f and (part := f.part_of(c.start_s, c.end_s)):
            placed.append((c, f, part))
    counts = {d: {"tp": 0, "fp": 0, "fn": 0} for d in (*DETECTORS, "head_motion")}
    wrong = []
    for c, f, part in placed:
        got, want = fired(c, opts), set(part.expect)
        for d in counts:
            if d == "duplicate":
                continue
            if d in got and d in want:
                counts[d]["tp"] += 1
            elif d in got:
                counts[d]["fp"] += 1
                wrong.append(f"{c.key}: {d} fired ({f.note})")
            elif d in want:
                counts[d]["fn"] += 1
                wrong.append(f"{c.key}: {d} missed ({f.note})")
    # duplicates: the default grouping over every clip's fingerprint
    items = [Fingerprinted(c.key, (c.video_id, c.start_s), c.curation.fingerprint) for c, _, _ in placed
             if c.curation and c.curation.fingerprint]
    groups = group(items, opts.max_audio_ber, opts.max_video_hamming, opts.min_overlap)
    where = {c.key: (f, c.start_s, c.end_s) for c, f, _ in placed}
    keys = {c.key: c.key for c, _, _ in placed}
    uids = [i.uid for i in items]
    dup = {"tp": 0, "fp": 0, "fn": 0, "not_scored": 0}
    for i, a in enumerate(uids):
        for b in uids[i + 1:]:
            truth = same_segment(where[a], where[b])
            found = a in groups.group_of and groups.group_of.get(a) == groups.group_of.get(b)
            if truth is None:
                dup["not_scored"] += 1
            elif truth and found:
                dup["tp"] += 1
            elif found:
                dup["fp"] += 1
                wrong.append(f"{keys[a]} ~ {keys[b]}: grouped as copies, are not")
            elif truth:
                dup["fn"] += 1
                wrong.append(f"{keys[a]} ~ {keys[b]}: copies, not grouped")
    counts["duplicate"] = dup
    # OCR against the drawn subtitles
    ocr = []
    for c, f, part in placed:
        if part.drawn_text and c.curation:
            read = []  # every line read, consecutive repeats once (a subtitle across the face is not a subtitle line)
            for b in c.curation.text_boxes:
                if not read or read[-1] != b.text:
                    read.append(b.text)
            cer = subtitle_cer(read, part.drawn_text) if read else None
            ocr.append({"clip": c.key, "read": " / ".join(read), "subtitle_text": c.curation.subtitle_text,
                        "cer_of_read": None if cer is None else round(cer, 4),
                        "read_share": round(len(normalise_text("".join(read))) / len(normalise_text(part.drawn_text)), 3)})
    # real recordings: clip seconds lost to the default gates (and to copies among themselves)
    real = {n for n in (*CALIBRATION, *HELD_OUT)}
    loss = {}
    for grp, names in (("calibration", CALIBRATION), ("held_out", HELD_OUT)):
        total = lost = 0.0
        reasons: dict[str, float] = defaultdict(float)
        for c, f, part in placed:
            if f.name in names and f.name in real:
                d = c.end_s - c.start_s
                total += d
                why = [g.reason for g in gates(c.quality, opts).values() if g.verdict == "fail"]
                if why:
                    lost += d
                    reasons[why[0]] += d
        loss[grp] = {"clip_s": round(total, 2), "lost_s": round(lost, 2), "lost_share": round(lost / total, 4) if total else None,
                     "by_reason": dict(reasons)}
    # fixture stretches without a clip: which earlier gate took them
    gone = []
    for f in fixtures:
        for part in f.parts:
            if part.expect and not any(ff is f and pp is part for _, ff, pp in placed):
                gone.append(f"{f.name} [{part.start_s:.1f}-{part.end_s:.1f}] expects {sorted(part.expect)}: no clip ({_rejects(run, f.name)})")
    return {"detectors": counts, "ocr": ocr, "real_loss": loss, "no_clip": gone, "wrong": wrong}


def _rejects(run: str, name: str) -> str:
    for path in glob.glob(os.path.join(run, "work", "ledger", f"{name}-*", "clips.json")):
        out = json.load(open(path)).get("output") or {}
        return ", ".join(f"{k} {v:.1f} s" for k, v in (out.get("rejected_s") or {}).items()) or "no speech stretch selected"
    return "not ingested"


def report(s: dict) -> None:
    print("| detector | TP | FP | FN | precision | recall |")
    print("|---|---|---|---|---|---|")
    for d, c in s["detectors"].items():
        p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else None
        r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else None
        extra = f" (pairs; {c['not_scored']} re-framed pairs not scored)" if "not_scored" in c else ""
        print(f"| {d}{extra} | {c['tp']} | {c['fp']} | {c['fn']} | {'-' if p is None else f'{p:.2f}'} | {'-' if r is None else f'{r:.2f}'} |")
    print("\nOCR of the drawn subtitles:")
    for o in s["ocr"]:
        print(f"  {o['clip']}: read {o['read']!r} ({o['read_share']:.0%} of the drawn characters); CER of what was read "
              f"against the drawn text {o['cer_of_read']}; as subtitle text: {o['subtitle_text']!r}")
    print("\nReal recordings, clip seconds lost to the default curation gates:")
    for grp, v in s["real_loss"].items():
        print(f"  {grp}: {v['lost_s']} of {v['clip_s']} s ({(v['lost_share'] or 0):.1%}) {v['by_reason'] or ''}")
    if s["no_clip"]:
        print("\nFixture stretches that gave no clip (an earlier gate):")
        for line in s["no_clip"]:
            print("  " + line)
    if s["wrong"]:
        print("\nEvery miss and false alarm:")
        for line in s["wrong"]:
            print("  " + line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/cnas-curation")
    ap.add_argument("--run", help="score this existing audit run instead of ingesting")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override for the ingest")
    args = ap.parse_args()
    fixtures = real_fixtures()
    fx_dir = os.path.join(args.out, "fixtures")
    transcripts = {"retalking_2": "and the heart of my California congressional district, where I chase my own dreams growing up."}
    fixtures += build_fixtures(fx_dir, transcripts)
    run = args.run or os.path.join(args.out, "run")
    if not args.run:
        sources = os.path.join(args.out, "sources.csv")
        with open(sources, "w") as f:
            f.write("path,language\n" + "".join(f"{x.path},en\n" for x in fixtures))
        cmd = [sys.executable, "-m", "cnas", "ingest", "--sources", sources, "--out", run]
        for o in AUDIT + args.overrides:
            cmd += ["--set", o]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    s = score(run, fixtures)
    report(s)
    with open(os.path.join(args.out, "scores.json"), "w") as f:
        json.dump(s, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
