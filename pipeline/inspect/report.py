"""``cnas inspect``: contact sheets of clips and an HTML report of a run or a release.

The report is a self-contained folder (``index.html``, ``sheets/``, ``plots/``) with no script and
no outside resource, so it opens from disk, from a web server or from an archive:

- run: summary, the card's plots (drawn from the run's clips), time per stage, failed videos,
  clip rejects by reason with example sheets of the rejected stretches (from the ledger's
  ``reject_spans`` and the work dir's normalised media), then sheets of the first clips;
- release: the card's plots and split table, rejection reasons, sheets of the first clips of each
  split (a metadata-only release has no media: plots and tables only). ``run=`` adds the run's
  timings and reject examples.
"""

from __future__ import annotations

import html
import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from schemas import ClipRecord, ClipSet, FailureRecord, ManifestRow, NormalizedMedia, PoseResult, RunStats, Transcript
from stages.files import write_bytes

from pipeline.engine.dag import DAG
from pipeline.engine.run_folder import RunFolder
from pipeline.release.files import INDEX_SUFFIX, PLOTS_DIR, RECIPE, STATS, iter_tar_samples
from pipeline.release.card import make_plots
from pipeline.inspect.sheets import draw_sheet, sheet_from_sample, sheet_from_source



@dataclass
class Section:
    title: str
    body: list[str] = field(default_factory=list)  # HTML fragments


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(src: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><a href="{_e(src)}"><img src="{_e(src)}" alt="{_e(alt)}"></a>{cap}</figure>'


def is_run(folder: Path) -> bool:
    return RunFolder(str(folder)).is_run()


def is_release(folder: Path) -> bool:
    return any(folder.glob(f"*{INDEX_SUFFIX}")) or (folder / RECIPE).exists()


def clip_sheets(shard_paths: list[Path], out: Path, limit: int, count: int,
                every_clip: dict[str, ClipRecord] | None = None) -> tuple[list[str], list[ClipRecord]]:
    """Sheets of the first ``limit`` samples of the shards, in order; (HTML figures, their clips).
    ``every_clip``: also collect every sample's record there, in the same pass over the tars."""
    figures, clips = [], []
    for shard in shard_paths:
        for key, members in iter_tar_samples(str(shard)):
            if every_clip is not None:
                every_clip[key] = ClipRecord.model_validate_json(members["json"])
            if len(clips) >= limit:
                if every_clip is None:
                    return figures, clips
                continue
            clip = ClipRecord.model_validate_json(members["json"])
            name = f"sheets/{key}.png"
            draw_sheet(sheet_from_sample(members, count), str(out / name))
            words = " ".join(w.text.strip() for s in (clip.transcript.segments if clip.transcript else []) for w in s.words)
            figures.append(_img(name, f"contact sheet of {key}", f"{key}: {words}" if words else key))
            clips.append(clip)
    return figures, clips


def _timings(stats: RunStats, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [[k, round(v.seconds, 1), v.videos, round(v.seconds / v.videos, 2) if v.videos else ""]
            for k, v in stats.stage_timings.items()]
    if not rows:
        return ["<p>No stage ran in this invocation (everything came from the ledger).</p>"]
    fig, ax = plt.subplots(figsize=(5, 0.3 * len(rows) + 1))
    ax.barh([r[0] for r in rows], [r[1] for r in rows], color="#4477aa")
    ax.invert_yaxis()
    ax.set(xlabel="seconds (summed over videos and workers)", title="Time per stage")
    fig.tight_layout(), fig.savefig(out / "plots" / "stage_timings.png", dpi=100), plt.close(fig)
    return [_table(["stage", "seconds", "videos", "seconds per video"], rows),
            f"<p>Wall time {stats.wall_s:.1f} s for {stats.source_hours * 3600:.1f} s of source "
            f"({stats.source_hours / (stats.wall_s / 3600):.2f} source-hours per wall-hour).</p>" if stats.wall_s else "",
            _img("plots/stage_timings.png", "time per stage")]


def _run_work(run: Path):
    """The work dir and the source items of an ingest run folder."""
    folder = RunFolder(str(run))
    return folder.work(), folder.sources()


def speech_seconds(t: Transcript | None) -> float:
    """Seconds covered by a transcript's words, overlaps once."""
    spans = sorted((w.start_s, w.end_s) for s in t.segments for w in s.words) if t else []
    total, end = 0.0, 0.0
    for a, b in spans:
        a = max(a, end)
        if b > a:
            total, end = total + b - a, b
    return total


def seconds_section(run: Path) -> Section:
    """Where each video's seconds went: its length, its speech, its clip seconds (and how many of them
    the sync gate left unverified), and the seconds each reject reason took."""
    from pipeline.engine.ledger import read_entry

    work, items = _run_work(run)
    rows = []
    for item in items:
        media = read_entry(work, item.video_id, "normalize")
        clips = next((e for s in DAG.clip_set_stages() if (e := read_entry(work, item.video_id, s)) and e.status == "ok"), None)
        if media is None or media.status != "ok" or clips is None:
            continue
        speech = read_entry(work, item.video_id, "speech")
        transcript = Transcript.model_validate(speech.output) if speech and speech.status == "ok" and speech.output else None
        cs = ClipSet.model_validate(clips.output)
        clip_s = sum(c.end_s - c.start_s for c in cs.clips)
        unverified = sum(c.end_s - c.start_s for c in cs.clips if c.sync and c.sync.verdict == "unverified")
        rejected = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cs.rejected_s.items(), key=lambda kv: -kv[1]))
        rows.append([item.video_id, round(NormalizedMedia.model_validate(media.output).duration_s, 2),
                     round(speech_seconds(transcript), 2) if transcript else "-", round(clip_s, 2), round(unverified, 2), rejected or "-"])
    sec = Section("Where each video's seconds went")
    sec.body.append(_table(["video", "length s", "speech s", "clip s", "of which sync unverified", "rejected s by reason"], rows)
                    if rows else "<p>No video has reached the clip stage.</p>")
    return sec


def reject_sheets(run: Path, out: Path, per_reason: int, count: int) -> dict[str, list[str]]:
    """Reason → HTML figures of up to ``per_reason`` rejected stretches, drawn from the run's work dir."""
    from stages.pose import load_pose

    from pipeline.engine.ledger import read_entry

    work, items = _run_work(run)
    figures: dict[str, list[str]] = defaultdict(list)
    for item in items:
        entry = next((e for s in DAG.clip_set_stages() if (e := read_entry(work, item.video_id, s)) and e.status == "ok"), None)
        if entry is None:
            continue
        spans = [s for s in ClipSet.model_validate(entry.output).reject_spans if len(figures[s.reason]) < per_reason]
        if not spans:
            continue
        media = read_entry(work, item.video_id, "normalize")
        if media is None or media.status != "ok":
            continue
        media = NormalizedMedia.model_validate(media.output)
        speech = read_entry(work, item.video_id, "speech")
        transcript = Transcript.model_validate(speech.output) if speech and speech.status == "ok" and speech.output else None
        pose_entry = read_entry(work, item.video_id, "pose")
        pose_path = PoseResult.model_validate(pose_entry.output).path if pose_entry and pose_entry.status == "ok" else None
        if not work.fs.exists(media.video_path):
            continue  # the work dir was cleaned: counts only
        with work.fetch(media.video_path) as video, work.fetch(media.audio_path) as audio:
            pose = None
            if pose_path and work.fs.exists(pose_path):
                with work.fetch(pose_path) as p:
                    pose = load_pose(p)  # memory maps stay valid after a fetched copy is removed
            for s in spans:
                if len(figures[s.reason]) >= per_reason:
                    continue
                name = f"sheets/reject-{s.reason}-{item.video_id}-{int(s.start_s * 1000)}.png"
                track = f", face track {s.face_track}" if s.face_track is not None else ""
                facts = [f"rejected: {s.reason}{track}", f"{item.video_id} {s.start_s:.2f}-{s.end_s:.2f} s of the normalised source"]
                data = sheet_from_source(video, audio, pose, transcript, media.fps, s.start_s, s.end_s,
                                         f"{item.video_id} {s.reason}", facts, media.width, media.height, count)
                draw_sheet(data, str(out / name))
                figures[s.reason].append(_img(name, f"{s.reason} example", f"{item.video_id} {s.start_s:.2f}-{s.end_s:.2f} s"))
    return figures


def _rejects_section(counts: dict[str, int], seconds: dict[str, float], examples: dict[str, list[str]]) -> Section:
    sec = Section("Clip rejects by reason")
    if not counts:
        sec.body.append("<p>No candidate clip was rejected.</p>")
        return sec
    sec.body.append(_table(["reason", "rejected clips or stretches", "seconds"],
                           [[k, v, round(seconds.get(k, 0.0), 2)] for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]))
    for reason in sorted(counts):
        figs = examples.get(reason, [])
        note = "" if figs else "<p class='note'>no example: the run predates recorded spans, or its work dir was cleaned</p>"
        sec.body.append(f"<h3>{_e(reason)}</h3>{note}<div class='sheets'>{''.join(figs)}</div>")
    return sec


def _failures_section(path: Path) -> Section:
    sec = Section("Failed videos")
    rows = [FailureRecord.model_validate_json(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []
    sec.body.append(_table(["video", "stage", "reason", "message"], [[f.video_id, f.stage, f.reason, f.message] for f in rows])
                    if rows else "<p>None.</p>")
    return sec


def _plots_section(folder: Path, names: list[str]) -> Section:
    sec = Section("Card plots")
    sec.body.append("<div class='plots'>" + "".join(_img(f"plots/{n}", n[:-4].replace("_", " ")) for n in names if (folder / n).exists()) + "</div>")
    return sec


def run_report(run: Path, out: Path, max_clips: int, per_reason: int, count: int) -> list[Section]:
    folder = RunFolder(str(run))
    release_cfg = folder.config().release  # speakers as the release would count them
    stats = folder.stats()
    manifest = folder.manifest()
    summary = Section("Summary")
    if stats:
        summary.body.append(_table(["videos in", "ok", "failed", "source hours", "clip hours", "clips", "shards", "wall (s)"],
                                   [[stats.videos_in, stats.videos_ok, stats.videos_failed, round(stats.source_hours, 4),
                                     round(stats.clip_hours, 4), stats.clips, stats.shards, round(stats.wall_s, 1)]]))
        if stats.skipped_stages:
            summary.body.append(_table(["skipped stage", "why"], [[k, v] for k, v in stats.skipped_stages.items()]))
    else:
        summary.body.append("<p>The run has not finished (no stats.json): figures below are what is on disk now.</p>")
    shards = [Path(p) for p in folder.shard_paths()]
    all_clips: dict[str, ClipRecord] = {}
    clips_fig, clips = clip_sheets(shards, out, max_clips, count, all_clips)
    sections = [summary]
    if all_clips:
        make_plots(all_clips, None, release_cfg, out / "plots")
        sections.append(_plots_section(out / "plots", ["durations.png", "speakers.png", "part_confidence.png", "audio.png"]))
    timings = Section("Time per stage", _timings(stats, out) if stats else ["<p>No stats.json yet.</p>"])
    sections += [timings, _failures_section(Path(folder.path(RunFolder.FAILURES))), seconds_section(run)]
    examples = reject_sheets(run, out, per_reason, count)
    sections.append(_rejects_section(stats.rejects_by_reason if stats else {}, stats.rejected_seconds_by_reason if stats else {}, examples))
    sections.append(Section(f"Clips (first {len(clips)} of {len(manifest)})", [f"<div class='sheets'>{''.join(clips_fig)}</div>"]))
    return sections


def release_report(release: Path, out: Path, max_clips: int, per_reason: int, count: int, run: Path | None) -> list[Section]:
    stats = json.loads((release / STATS).read_text())
    summary = Section("Summary", [
        _table(["name", "version", "licence", "clips", "hours", "speakers", "identities"],
               [[stats["name"], stats["version"], stats.get("licence", ""), stats["clips"], stats["hours"], stats["speakers"], stats.get("identities", "")]]),
        _table(["split", "clips", "hours", "speakers", "shards"],
               [[n, s["clips"], s["hours"], len(s["speakers"]), s.get("shards", "")] for n, s in stats["splits"].items()]),
    ])
    names = []
    if (release / PLOTS_DIR).is_dir():
        (out / "plots").mkdir(parents=True, exist_ok=True)
        for p in sorted((release / PLOTS_DIR).glob("*.png")):
            shutil.copyfile(p, out / "plots" / p.name)
            names.append(p.name)
    sections = [summary, _plots_section(out / "plots", names)]
    run_stats = RunFolder(str(run)).stats() if run else None
    if run_stats:
        sections.append(Section("Time per stage (ingest run)", _timings(run_stats, out)))
        sections.append(_failures_section(Path(RunFolder(str(run)).path(RunFolder.FAILURES))))
    examples = reject_sheets(run, out, per_reason, count) if run else {}
    seconds = run_stats.rejected_seconds_by_reason if run_stats else {}
    sections.append(_rejects_section(stats.get("rejection_reasons", {}), seconds, examples))
    failures = stats.get("failure_reasons", {})
    if failures and not run_stats:
        sections.append(Section("Failed videos by stage/reason", [_table(["stage/reason", "videos"], list(failures.items()))]))
    for split in stats["splits"]:
        index = release / f"{split}{INDEX_SUFFIX}"
        if not index.exists():
            continue  # metadata-only: no media to draw
        shards = [release / s["url"] for s in json.loads(index.read_text())["shardlist"]]
        figs, clips = clip_sheets(shards, out, max_clips, count)
        sections.append(Section(f"{split}: first {len(clips)} clips of {stats['splits'][split]['clips']}", [f"<div class='sheets'>{''.join(figs)}</div>"]))
    return sections


CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 8px;font-size:90%;text-align:left;vertical-align:top}
figure{display:inline-block;margin:4px}figure img{max-width:640px;border:1px solid #ddd}
.plots figure img{max-width:480px}figcaption{font-size:80%;max-width:640px}.note{color:#777}"""


def write_report(title: str, sections: list[Section], out: Path) -> Path:
    toc = "".join(f'<li><a href="#s{i}">{_e(s.title)}</a></li>' for i, s in enumerate(sections))
    body = "".join(f'<section id="s{i}"><h2>{_e(s.title)}</h2>{"".join(s.body)}</section>' for i, s in enumerate(sections))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{CSS}</style></head>'
            f"<body><h1>{_e(title)}</h1><ul>{toc}</ul>{body}</body></html>\n")
    path = out / "index.html"
    write_bytes(str(path), page.encode("utf-8"))
    return path


def build_report(folder: str, out: str | None = None, max_clips: int = 12, per_reason: int = 2, frames: int = 8,
            run: str | None = None) -> Path:
    """Write the HTML report of a run or release folder; returns the path of ``index.html``.

    Default ``out``: ``RUN/inspect`` for a run, ``RELEASE-inspect`` beside a release (a release
    folder stays exactly as checksummed)."""
    src = Path(folder)
    if is_run(src):
        dest = Path(out) if out else src / "inspect"
        kind = "run"
    elif is_release(src):
        dest = Path(out) if out else src.with_name(src.name + "-inspect")
        kind = "release"
    else:
        raise ValueError(f"{folder}: neither an ingest run (sources.jsonl + config.yaml) nor a release (*.index.json / rebuild.json)")
    (dest / "sheets").mkdir(parents=True, exist_ok=True)
    (dest / "plots").mkdir(parents=True, exist_ok=True)
    if kind == "run":
        sections = run_report(src, dest, max_clips, per_reason, frames)
    else:
        sections = release_report(src, dest, max_clips, per_reason, frames, Path(run) if run else None)
    return write_report(f"cnas inspect: {kind} {src.resolve()}", sections, dest)


def clip_sheet(folder: str, key: str, out: str, frames: int = 8) -> Path:
    """The contact sheet of one clip of a run or release (found through its manifests), as ``out``."""
    src = Path(folder)
    manifests = [Path(RunFolder(str(src)).path(RunFolder.MANIFEST))] if is_run(src) else sorted(src.glob("*/manifest.jsonl"))
    for m in manifests:
        for line in m.read_text().splitlines() if m.exists() else []:
            row = ManifestRow.model_validate_json(line)
            if row.key != key:
                continue
            shard = Path(RunFolder(str(src)).shard_path(row.shard)) if is_run(src) else m.parent / row.shard
            for k, members in iter_tar_samples(str(shard)):
                if k == key:
                    Path(out).parent.mkdir(parents=True, exist_ok=True)
                    return Path(draw_sheet(sheet_from_sample(members, frames), out))
    raise KeyError(f"clip {key!r} is not in {folder} (keys are listed in its manifest.jsonl)")
