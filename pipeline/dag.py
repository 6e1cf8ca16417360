"""The ingestion DAG on Ray Data:
sources → download → normalize → shots → pose → speech → clips (→ shard sink in the driver).

Each stage is a Ray-free function in ``stages/``; here it is wrapped as a Ray Data operator over
one row per video: ``map`` tasks for the file stages, ``map_batches`` over an actor pool for model
stages (pose, speech), so each actor loads its models once (lazily, on the first video that needs
them). Rows carry small JSON records and paths, never media bytes. A wrapper

* skips the stage when the resume ledger already holds its output (and that output's files exist),
* turns a ``StageError`` (or any unexpected exception) into a failure record so the run goes on,
* records the time the stage took.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import time
import traceback
from typing import Any, Callable

from schemas import ClipRecord, DownloadResult, FailureRecord, NormalizedMedia, SourceItem, Transcript
from stages.clips import ClipOptions, make_clips
from stages.download import DownloadOptions, download
from stages.errors import StageError
from stages.normalize import NormalizeOptions, normalize
from stages.pose import PoseModels, PoseOptions, extract_pose, load_pose, pose_track, save_pose, slice_pose
from stages.flame import fit_clip, load_flame_models, missing_flame_assets
from stages.select import SelectOptions, select_clips
from stages.shots import ShotOptions, detect_shots
from stages.speech import SpeechOptions, load_audio, load_speech_models, slice_transcript, transcribe
from schemas import ShotList

from . import ledger
from .config import Config
from .workdir import WorkDir

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("download", "normalize", "shots", "pose", "speech", "clips", "flame")
MODEL_STAGES = {"pose", "speech", "flame"}
OPTIONAL_STAGES = {"shots", "pose", "speech", "flame"}


def initial_row(item: SourceItem) -> dict[str, Any]:
    """The row that enters the DAG for one source. Every value is a string (JSON) or a bool."""
    return {
        "video_id": item.video_id,
        "source": item.to_json(),
        "download": "",
        "normalize": "",
        "shots": "",
        "pose": "",
        "speech": "",
        "clips": "",
        "flame": "",
        "failure": "",
        "timings": "{}",
        "resumed": "[]",
    }


def speech_options(cfg: Config) -> SpeechOptions:
    sp = cfg.speech
    return SpeechOptions(
        model=sp.model, language=sp.language, device=sp.device, compute_type=sp.compute_type, batch_size=sp.batch_size,
        beam_size=sp.beam_size, cpu_threads=sp.cpu_threads, align_model=sp.align_model, diarization=sp.diarization,
        pyannote_model=sp.pyannote_model, hf_token=sp.hf_token, min_speakers=sp.min_speakers, max_speakers=sp.max_speakers,
        speaker_distance_threshold=sp.speaker_distance_threshold, cache_dir=sp.cache_dir,
    )


def _run_download(item: SourceItem, row: dict, cfg: Config, work: WorkDir, models: Any = None) -> Any:
    d = cfg.download
    opts = DownloadOptions(
        max_height=d.max_height, retries=d.retries, backoff_s=d.backoff_s, rate_limit=d.rate_limit,
        cookies_file=d.cookies_file, socket_timeout_s=d.socket_timeout_s, max_filesize_mb=d.max_filesize_mb,
        allow_file_urls=d.allow_file_urls,
        archive_file=work.path("download_archive.txt") if d.use_download_archive and work.is_local else None,
    )
    if item.kind == "file":
        return download(item, "", opts).model_dump(mode="json")
    with work.local_dir("downloads", item.video_id) as dest:
        # a finished file here belongs to an earlier attempt (maybe of another URL for this id);
        # partial downloads (.part) stay so yt-dlp can continue them
        for name in os.listdir(dest):
            if not name.endswith((".part", ".ytdl")):
                os.remove(os.path.join(dest, name))
        result = download(item, dest, opts)
    if not work.is_local:  # point at the uploaded copy
        result.media_path = work.path("downloads", item.video_id, result.media_path.rsplit("/", 1)[-1])
    return result.model_dump(mode="json")


def _run_normalize(item: SourceItem, row: dict, cfg: Config, work: WorkDir, models: Any = None) -> Any:
    dl = DownloadResult.model_validate_json(row["download"])
    n = cfg.normalize
    opts = NormalizeOptions(
        fps=n.fps, max_height=n.max_height, sample_rate_hz=n.sample_rate_hz, min_duration_s=n.min_duration_s,
        max_duration_s=n.max_duration_s, crf=n.crf, preset=n.preset, encode_threads=n.encode_threads, timeout_s=n.timeout_s,
    )
    with work.fetch(dl.media_path) as src, work.local_dir("media", item.video_id) as out:
        media = normalize(item.video_id, src, out, opts)
    media.video_path = work.path("media", item.video_id, "video.mp4")
    media.audio_path = work.path("media", item.video_id, "audio.wav")
    return media.model_dump(mode="json")


def _run_speech(item: SourceItem, row: dict, cfg: Config, work: WorkDir, models: Any = None) -> Any:
    media = NormalizedMedia.model_validate_json(row["normalize"])
    with work.fetch(media.audio_path) as wav:
        audio = load_audio(wav)
    return transcribe(models, audio, item.video_id, language=item.metadata.get("language")).model_dump(mode="json")


def _run_shots(item: SourceItem, row: dict, cfg: Config, work: WorkDir, models: Any = None) -> Any:
    media = NormalizedMedia.model_validate_json(row["normalize"])
    sc = cfg.shots
    with work.fetch(media.video_path) as v:
        shots = detect_shots(media.model_copy(update={"video_path": v}), ShotOptions(sc.detector, sc.threshold, sc.min_shot_s))
    return shots.model_dump(mode="json")


def _run_pose(item: SourceItem, row: dict, cfg: Config, work: WorkDir, models: Any = None) -> Any:
    import numpy as np

    media = NormalizedMedia.model_validate_json(row["normalize"])
    with work.fetch(media.video_path) as v, work.local_dir("media", item.video_id) as out:
        # landmarks go to memory-mapped files on this node's local disk (TMPDIR), not the heap
        # (hours of video) nor the work dir (maybe a shared mount)
        scratch = tempfile.mkdtemp(prefix=f"cnas-pose-{item.video_id}-")
        try:
            arrays = extract_pose(models, v, media.width, media.height, media.fps, media.num_frames, scratch)
            for start in range(0, len(arrays["part_confidences"]), 9000):  # validate before writing, 6 min at a time
                pose_track(arrays, start, start + 9000)
            save_pose(os.path.join(out, "pose.npz"), arrays)
            conf = np.array(arrays["part_confidences"])
            del arrays  # unmap before the files go (NFS would keep .nfs* files of mapped ones)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return {"path": work.path("media", item.video_id, "pose.npz"), "num_frames": int(len(conf)),
            "mean_part_confidence": [round(float(x), 4) for x in np.mean(conf, axis=0)]}


def _save_npz(path: str, arrays: dict) -> None:
    import numpy as np

    from stages.errors import temp_name

    tmp = temp_name(path, ".npz")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def select_options(cfg: Config) -> SelectOptions:
    c = cfg.clips
    return SelectOptions(
        min_clip_s=c.min_clip_s, max_clip_s=c.max_clip_s, turn_gap_s=c.turn_gap_s, turn_pad_s=c.turn_pad_s,
        min_face_height_frac=c.min_face_height_frac, min_face_confidence=c.min_face_confidence,
        min_torso_confidence=c.min_torso_confidence, min_speech_ratio=c.min_speech_ratio,
        min_face_sharpness=c.min_face_sharpness, crop=c.crop,
    )


def _run_clips(item: SourceItem, row: dict, cfg: Config, work: WorkDir, models: Any = None) -> Any:
    with contextlib.ExitStack() as stack:
        return _clips(item, row, cfg, work, stack)


def _clips(item: SourceItem, row: dict, cfg: Config, work: WorkDir, stack: contextlib.ExitStack) -> Any:
    media = NormalizedMedia.model_validate_json(row["normalize"])
    c, n = cfg.clips, cfg.normalize
    opts = ClipOptions(
        window_s=c.window_s, min_last_clip_s=c.min_last_clip_s, max_clips_per_video=c.max_clips_per_video,
        crf=n.crf, preset=n.preset, encode_threads=n.encode_threads,
    )
    transcript = Transcript.model_validate_json(row["speech"]) if row.get("speech") else None
    shots = ShotList.model_validate_json(row["shots"]) if row.get("shots") else None
    pose_file = stack.enter_context(work.fetch(json.loads(row["pose"])["path"])) if row.get("pose") else None
    pose = load_pose(pose_file) if pose_file else None  # memory-mapped: a clip reads its own frames only
    windows = crops = None
    rejects: dict[str, int] = {}
    rejected_s: dict[str, float] = {}
    if c.mode == "selected":
        sel = select_clips(media.num_frames, media.fps, media.width, media.height, shots, transcript, pose, select_options(cfg))
        windows, crops = sel.windows[: c.max_clips_per_video], sel.crops[: c.max_clips_per_video]
        rejects, rejected_s = dict(sel.rejects), {k: round(v, 3) for k, v in sel.rejected_s.items()}
    with work.fetch(media.video_path) as v, work.fetch(media.audio_path) as a, work.local_dir("clips", item.video_id) as out:
        local = media.model_copy(update={"video_path": v, "audio_path": a})
        clips = make_clips(local, item.uri, out, opts, item.metadata, windows, crops, c.crop_size)
        for clip in clips:
            f0 = round(clip.start_s * media.fps)
            f1 = f0 + clip.num_frames
            if pose is not None:
                _save_npz(os.path.join(out, f"{clip.key}.pose.npz"), slice_pose(pose, f0, f1))
                clip.members.append("pose.npz")
                clip.stages.append("pose")
                clip.quality.update(_pose_quality(pose, f0, f1, media.height))
            else:
                clip.skipped_stages["pose"] = "disabled in config (pose.enabled=false)"
            if shots is not None:
                clip.stages.append("shots")
            if "flame" not in active_stages(cfg):
                clip.skipped_stages["flame"] = flame_skip_reason(cfg)
            if transcript is not None:
                clip.transcript = slice_transcript(transcript, clip.start_s, clip.end_s)
                clip.stages.append("speech")
                clip.language = clip.language or transcript.language
                spoken = sum(w.end_s - w.start_s for s in clip.transcript.segments for w in s.words)
                clip.quality["speech_ratio"] = round(spoken / (clip.end_s - clip.start_s), 4)
            else:
                clip.skipped_stages["speech"] = "disabled in config (speech.enabled=false)"
    return {"clips": [c.model_dump(mode="json") for c in clips], "rejects": rejects, "rejected_s": rejected_s}


def flame_skip_reason(cfg: Config) -> str:
    if not cfg.flame.enabled:
        return "disabled in config (flame.enabled=false)"
    if not cfg.pose.enabled:
        return "needs the pose stage (face landmarks for the crops)"
    missing = missing_flame_assets(cfg.flame.flame_model, cfg.flame.deca_checkpoint)
    return f"missing assets: {', '.join(missing)} (see `cnas assets check`)"


def _run_flame(item: SourceItem, row: dict, cfg: Config, work: WorkDir, models: Any = None) -> Any:
    """DECA → FLAME for every clip of the video, from the normalised frames and the pose stage's
    face mesh (crops), decoding the video once."""
    import numpy as np

    from stages.flame import face_crop_box
    from stages.pose import read_frames

    media = NormalizedMedia.model_validate_json(row["normalize"])
    out = json.loads(row["clips"])
    clips = [ClipRecord.model_validate(c) for c in out["clips"]]
    if not clips:
        return out
    size = np.array([media.width, media.height], np.float32)
    ranges = [(round(c.start_s * media.fps), round(c.start_s * media.fps) + c.num_frames) for c in clips]
    with work.fetch(json.loads(row["pose"])["path"]) as pose_file, work.fetch(media.video_path) as v, \
            work.local_dir("clips", item.video_id) as clip_dir:
        mesh = load_pose(pose_file)["face"]  # memory-mapped (T, 478, 3): read one clip's frames at a time
        if len(mesh) < max(b for _, b in ranges):
            raise StageError("pose_mismatch", f"pose has {len(mesh)} frames, the clips need {max(b for _, b in ranges)}")
        frames_iter = enumerate(read_frames(v, media.width, media.height))
        # clips are in time order and do not overlap: hold one clip's frames at a time
        for clip, (a, b) in zip(clips, ranges):
            frames: dict[int, np.ndarray] = {}
            for t, rgb in frames_iter:
                if t >= a:
                    frames[t] = rgb.copy()
                if t >= b - 1:
                    break
            boxes = [face_crop_box(mesh[t, :, :2] * size, media.width, media.height) for t in range(a, b)]
            fit = fit_clip(models, [frames.get(t) if boxes[t - a] is not None else None for t in range(a, b)], boxes)
            _save_npz(os.path.join(clip_dir, f"{clip.key}.flame.npz"), fit)
            clip.members.append("flame.npz")
            clip.stages.append("flame")
            clip.skipped_stages.pop("flame", None)
            clip.quality["flame_valid_ratio"] = round(float(fit["valid"].mean()), 4)
    out["clips"] = [c.model_dump(mode="json") for c in clips]
    return out


def _pose_quality(pose: dict, f0: int, f1: int, height: int) -> dict[str, float]:
    import numpy as np

    conf = pose["part_confidences"][f0:f1]
    face = pose["part_boxes"][f0:f1, 0]
    q = {f"mean_{name}_confidence": round(float(conf[:, i].mean()), 4) for i, name in enumerate(pose["part_names"])}
    if not np.isnan(face[:, 0]).all():
        q["face_height_frac"] = round(float(np.nanmedian(face[:, 3] - face[:, 1]) / height), 4)
    sharp = pose["face_sharpness"][f0:f1]
    if not np.isnan(sharp).all():
        q["face_sharpness"] = round(float(np.nanmedian(sharp)), 2)
    q["max_people"] = float(pose["num_people"][f0:f1].max())
    return q


def _outputs_exist(stage: str, output: Any, item: SourceItem, work: WorkDir) -> bool:
    """A ledger entry only counts while the files it describes are still there."""
    if stage == "download":
        path = output["media_path"]
        return os.path.exists(path) if item.kind == "file" else work.fs.exists(path)
    if stage == "normalize":
        return work.fs.exists(output["video_path"]) and work.fs.exists(output["audio_path"])
    if stage == "pose":
        return work.fs.exists(output["path"])
    if stage in ("clips", "flame"):
        return all(
            work.exists("clips", item.video_id, f"{c['key']}.{s}") for c in output["clips"] for s in c["members"] if s != "json"
        )
    return True


_STAGE_FNS: dict[str, Callable[..., Any]] = {
    "download": _run_download,
    "normalize": _run_normalize,
    "shots": _run_shots,
    "pose": _run_pose,
    "speech": _run_speech,
    "clips": _run_clips,
    "flame": _run_flame,
}


#: What each stage reads: its fingerprint covers these stages' fingerprints, and re-running a
#: stage invalidates the stages that depend on it (and only those).
STAGE_DEPS: dict[str, tuple[str, ...]] = {
    "download": (), "normalize": ("download",), "shots": ("normalize",), "pose": ("normalize",), "speech": ("normalize",),
    "clips": ("normalize", "shots", "pose", "speech"), "flame": ("clips", "pose"),
}


#: Settings that change how a stage runs but not what it writes.
_NOT_IN_OUTPUT = {
    "download": {"retries", "backoff_s", "rate_limit", "cookies_file", "use_download_archive", "socket_timeout_s", "allow_file_urls"},
    "normalize": {"timeout_s"},
    "speech": {"cache_dir", "hf_token", "cpu_threads"},
    "flame": {"batch_size"},
}


def source_digest(item: SourceItem) -> str:
    """What identifies the input itself: URI, metadata, and for local files their size and mtime."""
    parts = [item.uri, json.dumps(item.metadata, sort_keys=True, default=str)]
    if item.kind == "file" and os.path.exists(item.uri):
        st = os.stat(item.uri)
        parts += [str(st.st_size), str(st.st_mtime_ns)]
    return "|".join(parts)


def stage_fingerprint(cfg: Config, stage: str, item: SourceItem | None = None) -> str:
    """Hash of the source, this stage's config section and, recursively, those of the stages it
    reads: a ledger entry made under another configuration or from another input is redone."""
    import hashlib

    def parts(st: str) -> dict:
        section = getattr(cfg, st)
        own = section.model_dump(mode="json", exclude=_NOT_IN_OUTPUT.get(st, set())) if section is not None else {}
        return {"own": own, "deps": {d: parts(d) for d in STAGE_DEPS[st]}}

    payload = {"stage": stage, "config": parts(stage), "source": source_digest(item) if item else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def dependents(stage: str) -> list[str]:
    """Every stage that (transitively) reads ``stage``'s output."""
    out: list[str] = []
    for st in STAGES:
        if st != stage and any(d == stage or d in out for d in STAGE_DEPS[st]):
            out.append(st)
    return out


def load_stage_models(stage: str, cfg: Config) -> Any:
    """Models a stage needs, loaded once per worker; None for the file stages."""
    if stage == "speech":
        return load_speech_models(speech_options(cfg))
    if stage == "flame":
        import torch

        f = cfg.flame
        device = f.device if f.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        return load_flame_models(f.flame_model, f.deca_checkpoint, f.landmark_embedding, device, f.batch_size)
    if stage == "pose":
        p = cfg.pose
        return PoseModels(PoseOptions(p.stride, p.min_detection_confidence, p.min_tracking_confidence, p.track_iou))
    return None


class StageTask:
    """Ray Data ``map`` callable for one stage. Picklable: holds only the config and the work-dir URI."""

    def __init__(self, stage: str, config_json: str, work_uri: str):
        self.stage = stage
        self.config_json = config_json
        self.work_uri = work_uri
        self._models: Any = None

    def models(self, cfg: Config) -> Any:
        # Loaded on the first video that needs them: a resumed run whose videos are all in the
        # ledger never pays for model loading.
        if self._models is None and self.stage in MODEL_STAGES:
            self._models = load_stage_models(self.stage, cfg)
        return self._models

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["failure"]:
            return row
        item = SourceItem.model_validate_json(row["source"])
        try:
            return self._run(row, item)
        except Exception as e:  # ledger or storage trouble: record it for this video, keep the run going
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            row["failure"] = FailureRecord(
                video_id=item.video_id, source_uri=item.uri, stage=self.stage, reason="internal_error", message=last[:500]
            ).model_dump_json()
            return row

    def _run(self, row: dict[str, Any], item: SourceItem) -> dict[str, Any]:
        cfg = Config.model_validate_json(self.config_json)
        work = WorkDir(self.work_uri)
        timings = json.loads(row["timings"])
        entry = ledger.read_entry(work, item.video_id, self.stage)
        fingerprint = stage_fingerprint(cfg, self.stage, item)
        if entry is not None and entry.fingerprint == fingerprint:
            if entry.status == "ok" and _outputs_exist(self.stage, entry.output, item, work):
                row[self.stage] = json.dumps(entry.output)
                row["resumed"] = json.dumps(json.loads(row["resumed"]) + [self.stage])
                return row
            if entry.status == "failed" and not cfg.retry_failed:
                row["failure"] = entry.failure.model_dump_json()
                return row
        # This stage is about to (re)write its files: its own entry and its dependents' go first,
        # so a crash from here on can never leave an entry describing overwritten outputs.
        ledger.forget(work, item.video_id, [self.stage, *dependents(self.stage)])
        t0 = time.perf_counter()
        try:
            output = _STAGE_FNS[self.stage](item, row, cfg, work, self.models(cfg))
        except StageError as e:
            failure = FailureRecord(video_id=item.video_id, source_uri=item.uri, stage=self.stage, reason=e.reason, message=e.message)
        except Exception as e:  # a bug or an environment problem: record it, keep the run going
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            failure = FailureRecord(
                video_id=item.video_id, source_uri=item.uri, stage=self.stage, reason="internal_error", message=last[:500]
            )
        else:
            seconds = time.perf_counter() - t0
            ledger.write_ok(work, item.video_id, self.stage, output, seconds, fingerprint)
            row[self.stage] = json.dumps(output)
            timings[self.stage] = seconds
            row["timings"] = json.dumps(timings)
            return row
        seconds = time.perf_counter() - t0
        ledger.write_failed(work, failure, seconds, fingerprint)
        timings[self.stage] = seconds
        row["timings"] = json.dumps(timings)
        row["failure"] = failure.model_dump_json()
        return row


class ModelStageActor:
    """``map_batches`` actor for a model stage: one ``StageTask`` (and so one set of models) per actor."""

    def __init__(self, stage: str, config_json: str, work_uri: str):
        self.task = StageTask(stage, config_json, work_uri)

    def __call__(self, batch):
        import pandas as pd

        return pd.DataFrame([self.task(row) for row in batch.to_dict("records")])


def active_stages(cfg: Config) -> tuple[str, ...]:
    """The stages this config runs: optional ones when enabled; FLAME only with its assets and the pose stage."""
    def runs(stage: str) -> bool:
        if stage not in OPTIONAL_STAGES:
            return True
        if stage == "flame":
            f = cfg.flame
            return f.enabled and cfg.pose.enabled and not missing_flame_assets(f.flame_model, f.deca_checkpoint)
        return getattr(cfg, stage).enabled

    return tuple(s for s in STAGES if runs(s))


def build_plan(sources: list[SourceItem], cfg: Config, work_uri: str):
    """The Ray Data dataset of the whole DAG; iterate it to run. One block per video up to ``max_blocks``."""
    import ray.data

    rows = [initial_row(s) for s in sources]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), cfg.ray.max_blocks)))
    r = cfg.ray
    cpus = {"download": r.download_cpus, "normalize": r.normalize_cpus, "shots": r.shots_cpus, "clips": r.clip_cpus}
    actors = {
        "pose": (r.pose_cpus, r.pose_actors, 0.0),
        "speech": (r.speech_cpus, r.speech_actors, r.speech_gpus or (1.0 if cfg.speech.device == "cuda" else 0.0)),
        "flame": (r.flame_cpus, r.flame_actors, r.flame_gpus or (1.0 if cfg.flame.device == "cuda" else 0.0)),
    }
    stages = active_stages(cfg)
    actor_cpus = {k: v[0] for k, v in actors.items() if k in stages}
    total = ray.cluster_resources().get("CPU", 0.0)
    if total and sum(actor_cpus.values()) + max(cpus.values()) > total:
        # Each actor holds its CPUs for the whole run; on a small cluster the file stages would
        # then never be scheduled. Share the CPUs instead of deadlocking.
        share = total / (len(actor_cpus) + 1)
        actor_cpus = {k: min(v, share) for k, v in actor_cpus.items()}
        cpus = {k: min(v, share) for k, v in cpus.items()}
        log.warning("only %.1f CPUs: model actors get %s, file stages at most %.2f each", total, actor_cpus, share)
    config_json = cfg.model_dump_json()
    for stage in stages:
        if stage in MODEL_STAGES:
            _, pool, gpus = actors[stage]
            ds = ds.map_batches(
                ModelStageActor, fn_constructor_args=(stage, config_json, work_uri), batch_size=1, batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool), num_cpus=actor_cpus[stage], num_gpus=gpus,
            )
        else:
            # ray_remote_args_fn keeps Ray Data from fusing this stage into the next operator;
            # fused into a model actor, normalize would run one video at a time inside it.
            ds = ds.map(StageTask(stage, config_json, work_uri), ray_remote_args_fn=functools.partial(_cpus, cpus[stage]))
    return ds


def _cpus(n: float) -> dict[str, float]:
    return {"num_cpus": n}


def clips_of(row: dict[str, Any]) -> tuple[list[ClipRecord], dict[str, int], dict[str, float]]:
    """Clips of a finished row, and the clip-level rejects (count and seconds by reason)."""
    last = row.get("flame") or row["clips"]  # the FLAME stage re-emits the clips with flame.npz added
    if not last:
        return [], {}, {}
    out = json.loads(last)
    return [ClipRecord.model_validate(c) for c in out["clips"]], out.get("rejects", {}), out.get("rejected_s", {})
