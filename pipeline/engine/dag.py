"""The ingestion DAG: one declaration per stage, in execution order.

    download → normalize → shots → pose → speech → identity → sync → clips → flame
    (→ identities across the run, shard sink: in the driver)

Each ``StageSpec`` names a Ray-free stage function from ``stages/`` and a small adapter (``_run_*``)
that moves that function's inputs and outputs in and out of the work dir (which may be shared
storage): it reads the records of the stages it depends on from ``ctx.inputs``, fetches media
locally, calls the stage, and returns the stage's output record. ``pipeline/engine/executor.py`` runs the
registry on Ray Data; nothing here knows about Ray. Adding a stage: see docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile

import numpy as np

from schemas import ClipSet, DownloadResult, RejectSpan, FlameFit, IdentityResult, NormalizedMedia, PoseResult, ShotList, SyncResult, Transcript
from schemas import shard as layout
from stages.audio_quality import audio_checks
from stages.clips import ClipOptions, fixed_windows, make_clips, measure_audio
from stages.download import MEDIA_BASENAME, DownloadOptions, download, forget_archived
from stages.errors import StageError, write_npz
from stages.flame import FlameOptions, fit_video_clips, flame_unavailable, setup_flame
from stages.identity import IdentityOptions, embed_tracks, load_embedder
from stages.normalize import NormalizeOptions, normalize
from stages.pose import (PoseModels, PoseOptions, extract_pose, load_pose, pose_quality, pose_track, read_frames, read_frames_at, save_pose,
                         slice_pose)
from stages.candidates import candidate_mask, scan_faces, spans_of
from stages.select import reject_examples, select_clips
from stages.shots import ShotOptions, detect_shots
from stages.wav import map_pcm16
from stages.speech import SAMPLE_RATE, SpeechOptions, check_speech_assets, load_audio, load_speech_models, slice_transcript, transcribe
from stages.sync import SyncNet, SyncOptions, sync_features, sync_unavailable

from pipeline.engine.registry import Registry, Resources, StageContext, StageSpec

# ---------------------------------------------------------------------------------------------
# download


def _run_download(ctx: StageContext) -> DownloadResult:
    item, work, opts = ctx.item, ctx.work, ctx.options
    if item.kind == "file":
        return download(item, "", opts)
    archive = work.path("download_archive.txt") if opts.use_download_archive and work.is_local else None
    with work.local_dir("downloads", item.video_id) as dest:
        # The ledger says this download must be (re)done: an archive line from an earlier attempt
        # would make yt-dlp skip it.
        info_json = os.path.join(dest, f"{MEDIA_BASENAME}.info.json")
        if archive and os.path.exists(info_json):
            forget_archived(archive, info_json)
        # a finished file here belongs to an earlier attempt (maybe of another URL for this id);
        # partial downloads (.part) stay so yt-dlp can continue them
        for name in os.listdir(dest):
            if not name.endswith((".part", ".ytdl")):
                os.remove(os.path.join(dest, name))
        result = download(item, dest, opts, archive)
    if not work.is_local:  # point at the uploaded copy
        result.media_path = work.path("downloads", item.video_id, result.media_path.rsplit("/", 1)[-1])
    return result


def _download_exists(out: DownloadResult, ctx: StageContext) -> bool:
    return os.path.exists(out.media_path) if ctx.item.kind == "file" else ctx.work.fs.exists(out.media_path)


# ---------------------------------------------------------------------------------------------
# normalize


def _run_normalize(ctx: StageContext) -> NormalizedMedia:
    dl: DownloadResult = ctx.inputs["download"]
    work, video_id = ctx.work, ctx.item.video_id
    with work.fetch(dl.media_path) as src, work.local_dir("media", video_id) as out:
        media = normalize(video_id, src, out, ctx.options, language=ctx.item.metadata.get("language"))
    media.video_path = work.path("media", video_id, "video.mp4")
    media.audio_path = work.path("media", video_id, "audio.wav")
    return media


def _media_exists(out: NormalizedMedia, ctx: StageContext) -> bool:
    return ctx.work.fs.exists(out.video_path) and ctx.work.fs.exists(out.audio_path)


# ---------------------------------------------------------------------------------------------
# shots, pose, speech: each reads the normalised media


def _run_shots(ctx: StageContext) -> ShotList:
    media: NormalizedMedia = ctx.inputs["normalize"]
    with ctx.work.fetch(media.video_path) as v:
        return detect_shots(media.model_copy(update={"video_path": v}), ctx.options)


def _run_pose(ctx: StageContext) -> PoseResult:
    media: NormalizedMedia = ctx.inputs["normalize"]
    work, video_id = ctx.work, ctx.item.video_id
    with work.fetch(media.video_path) as v, work.local_dir("media", video_id) as out:
        # landmarks go to memory-mapped files on this node's local disk (TMPDIR), not the heap
        # (hours of video) nor the work dir (maybe a shared mount)
        scratch = tempfile.mkdtemp(prefix=f"cnas-pose-{video_id}-")
        try:
            spans = None
            if ctx.options.cascade:  # cheap passes first: the dense models look only where clips can come from
                spans = pose_candidates(ctx.models, v, media, ctx.inputs.get("speech"), ctx.inputs.get("shots"), ctx.options)
            arrays = extract_pose(ctx.models, v, media.width, media.height, media.fps, media.num_frames, scratch, spans)
            for start in range(0, len(arrays["part_confidences"]), 9000):  # validate before writing, 6 min at a time
                pose_track(arrays, start, start + 9000)
            save_pose(os.path.join(out, "pose.npz"), arrays)
            conf = np.array(arrays["part_confidences"])
            del arrays  # unmap before the files go (NFS would keep .nfs* files of mapped ones)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    looked = media.num_frames if spans is None else sum(b - a for a, b in spans)
    return PoseResult(path=work.path("media", video_id, "pose.npz"), num_frames=int(len(conf)),
                      mean_part_confidence=[round(float(x), 4) for x in np.mean(conf, axis=0)],
                      dense_s=round(looked / media.fps, 3),
                      scan_s=round(media.num_frames / media.fps, 3) if spans is not None else 0.0,
                      candidate_spans=[[a, b] for a, b in spans] if spans is not None else None)


def pose_candidates(models, video: str, media: NormalizedMedia, transcript: Transcript | None, shots: ShotList | None,
                    opts) -> list[tuple[int, int]]:
    """The cascade's candidate spans of one video (stages/candidates.py): BlazeFace every
    ``scan_every`` frames, with the transcript and the shots."""
    scan = scan_faces(models.faces, video, media.width, media.height, opts.scan_every)
    mask = candidate_mask(scan, media.num_frames, media.fps, transcript, shots, opts.candidate_min_face_frac,
                          opts.candidate_pad_s, opts.candidate_min_shot_s)
    return spans_of(mask)


def _pose_exists(out: PoseResult, ctx: StageContext) -> bool:
    return ctx.work.fs.exists(out.path)


def _run_speech(ctx: StageContext) -> Transcript:
    media: NormalizedMedia = ctx.inputs["normalize"]
    with ctx.work.fetch(media.audio_path) as wav:
        audio = load_audio(wav)
    return transcribe(ctx.models, audio, ctx.item.video_id, language=ctx.item.metadata.get("language"))


# ---------------------------------------------------------------------------------------------
# identity: a 128-d embedding per face track (assigned to run-wide identities by the runner)


def _face_tracked_pose(pose_file: str, ctx: StageContext) -> dict[str, np.ndarray]:
    """The video's pose arrays, which must hold the face tracks (pose stage v3 and later)."""
    pose = load_pose(pose_file)
    if "faces_track" not in pose:
        raise StageError("stale_input", f"{ctx.inputs['pose'].path} has no face tracks (written by pose stage v1/v2): rerun pose")
    return pose


def _run_identity(ctx: StageContext) -> IdentityResult:
    media: NormalizedMedia = ctx.inputs["normalize"]
    with ctx.work.fetch(ctx.inputs["pose"].path) as pose_file, ctx.work.fetch(media.video_path) as v:
        pose = _face_tracked_pose(pose_file, ctx)
        return embed_tracks(load_embedder(), functools.partial(read_frames_at, v, media.width, media.height), pose, ctx.options)


# ---------------------------------------------------------------------------------------------
# sync: lips of every face track against the audio (active speaker, offsets)


@functools.lru_cache(maxsize=2)
def _syncnet(path: str, device: str) -> SyncNet:
    return SyncNet(path, device)  # once per worker process (task workers are reused)


def _run_sync(ctx: StageContext) -> SyncResult:
    media: NormalizedMedia = ctx.inputs["normalize"]
    opts: SyncOptions = ctx.options
    work, video_id = ctx.work, ctx.item.video_id
    with work.fetch(ctx.inputs["pose"].path) as pose_file, work.fetch(media.audio_path) as wav, \
            work.local_dir("media", video_id) as out:
        pose = _face_tracked_pose(pose_file, ctx)
        if opts.backend == "syncnet":
            audio, sr = load_audio(wav), SAMPLE_RATE
            with work.fetch(media.video_path) as v:
                arrays = sync_features(audio, sr, media.fps, pose, opts, _syncnet(opts.syncnet_model, opts.device),
                                       read_frames(v, media.width, media.height))
        else:  # the speech band of the int16 samples, a block of frames at a time: an hour is not held
            audio, sr = map_pcm16(wav)
            arrays = sync_features(audio, sr, media.fps, pose, opts)
        write_npz(os.path.join(out, "sync.npz"), arrays)
    conf, ids = arrays["speaking_conf"], arrays["faces_track"]
    speaking = (conf >= opts.min_confidence) & (ids >= 0)  # windows at the pass level (a summary; clips decide on their own)
    tracks, counts = np.unique(ids[speaking], return_counts=True)
    return SyncResult(path=work.path("media", video_id, "sync.npz"), backend=opts.backend, num_frames=len(ids),
                      speaking_s={str(t): round(c / media.fps, 2) for t, c in zip(tracks, counts)})


def _sync_exists(out: SyncResult, ctx: StageContext) -> bool:
    return ctx.work.fs.exists(out.path)


def _load_sync(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------------------------
# clips: select (shots × speech turns × visibility) and cut; then FLAME per clip


def _run_clips(ctx: StageContext) -> ClipSet:
    media: NormalizedMedia = ctx.inputs["normalize"]
    opts: ClipOptions = ctx.options
    transcript: Transcript | None = ctx.inputs.get("speech")
    shots: ShotList | None = ctx.inputs.get("shots")
    pose_out: PoseResult | None = ctx.inputs.get("pose")
    sync_out: SyncResult | None = ctx.inputs.get("sync")
    work, item = ctx.work, ctx.item
    result = ClipSet()
    with work.fetch(pose_out.path) if pose_out else contextlib.nullcontext() as pose_file, \
            work.fetch(sync_out.path) if sync_out else contextlib.nullcontext() as sync_file:
        pose = load_pose(pose_file) if pose_file else None  # memory-mapped: a clip reads its own frames only
        sync = _load_sync(sync_file) if sync_file else None
        ident: IdentityResult | None = ctx.inputs.get("identity")
        identity = {t.track: np.array(t.embedding, np.float32) for t in ident.tracks} if ident else None
        if opts.mode == "selected":
            sel = select_clips(media.num_frames, media.fps, media.width, media.height, shots, transcript, pose, opts,
                               sync, ctx.input_options.get("sync"))
            windows, crops, syncs, checks = sel.windows, sel.crops, sel.syncs, sel.checks
            result.speaker_faces = {who: sorted(tracks) for who, tracks in sel.speaker_faces.items()}
        else:
            sel = None
            windows = fixed_windows(media.num_frames, media.fps, opts)
            crops, syncs, checks = [None] * len(windows), [None] * len(windows), [{}] * len(windows)
        with work.fetch(media.video_path) as v, work.fetch(media.audio_path) as a, \
                work.local_dir(layout.CLIPS_DIR, item.video_id) as out:
            # audio figures of every window; selected clips must also pass the audio limits
            kept, figures, audio_rejected = measure_audio(a, media.fps, windows, opts, sel is not None and opts.audio_filter)
            if sel is not None:
                for i, why in audio_rejected:
                    sel.reject(why, windows[i][0], windows[i][0] + windows[i][1], media.fps, syncs[i].face_track if syncs[i] else None)
                result.rejects, result.rejected_s = dict(sel.rejects), {k: round(v, 3) for k, v in sel.rejected_s.items()}
                result.reject_spans = reject_examples(sel.spans, media.fps)
            keep = kept[: opts.max_clips_per_video]
            windows, crops, syncs, checks = ([x[i] for i in keep] for x in (windows, crops, syncs, checks))
            figures = figures[: len(keep)]
            local = media.model_copy(update={"video_path": v, "audio_path": a})
            download: DownloadResult | None = ctx.inputs.get("download")
            clips = make_clips(local, item.uri, out, opts, item.metadata, windows, crops, opts.crop_size,
                               download.provenance if download else None, syncs)
            for clip, q, gates in zip(clips, figures, checks):
                clip.quality.update(q)
                clip.checks = {**gates, **(audio_checks(q, opts) if sel is not None and opts.audio_filter else {})}
                f0 = round(clip.start_s * media.fps)
                f1 = f0 + clip.num_frames
                if pose is not None:
                    view = slice_pose(pose, f0, f1, clip.sync.face_track if clip.sync else None)  # the speaker's face
                    clip.face_track = clip.sync.face_track if clip.sync else _primary_track(pose, f0, f1)
                    embedding = identity.get(clip.face_track) if identity else None
                    if embedding is not None:
                        view["face_embedding"] = embedding
                    write_npz(os.path.join(out, layout.member_name(clip.key, layout.POSE)), view)
                    clip.members.append(layout.POSE)
                    clip.stages.append("pose")
                    clip.quality.update(pose_quality(view, 0, f1 - f0, media.height))
                else:
                    clip.skipped_stages["pose"] = ctx.skipped["pose"]
                if clip.sync is not None:
                    clip.stages.append("sync")
                elif "sync" in ctx.skipped:
                    clip.skipped_stages["sync"] = ctx.skipped["sync"]
                if shots is not None:
                    clip.stages.append("shots")
                if "flame" in ctx.skipped:
                    clip.skipped_stages["flame"] = ctx.skipped["flame"]
                if transcript is not None:
                    # words timed on the clip's own audio, which a sync shift took that many frames earlier
                    shift_s = clip.sync.audio_shift_frames / media.fps if clip.sync else 0.0
                    clip.transcript = slice_transcript(transcript, clip.start_s - shift_s, clip.end_s - shift_s)
                    clip.stages.append("speech")
                    clip.language = clip.language or transcript.language
                    spoken = sum(w.end_s - w.start_s for s in clip.transcript.segments for w in s.words)
                    clip.quality["speech_ratio"] = round(spoken / (clip.end_s - clip.start_s), 4)
                else:
                    clip.skipped_stages["speech"] = ctx.skipped["speech"]
    result.clips = clips
    return result


def _primary_track(pose: dict[str, np.ndarray], f0: int, f1: int) -> int | None:
    """The face track most often in the primary slot over frames ``[f0, f1)``."""
    if "faces_track" not in pose:
        return None
    ids = np.asarray(pose["faces_track"][f0:f1, 0])
    ids = ids[ids >= 0]
    return int(np.bincount(ids).argmax()) if len(ids) else None


def _clip_files_exist(out: ClipSet, ctx: StageContext) -> bool:
    return all(ctx.work.exists(*layout.clip_member_parts(c.video_id, c.key, s)) for c in out.clips for s in layout.file_members(c.members))


def _run_flame(ctx: StageContext) -> ClipSet:
    """DECA → FLAME for every clip of the video, from the normalised frames and the pose stage's
    face mesh (crops), decoding the video once."""
    media: NormalizedMedia = ctx.inputs["normalize"]
    out: ClipSet = ctx.inputs["clips"].model_copy(deep=True)
    if not out.clips:
        return out
    ranges = [(round(c.start_s * media.fps), round(c.start_s * media.fps) + c.num_frames) for c in out.clips]
    work = ctx.work
    with work.fetch(ctx.inputs["pose"].path) as pose_file, work.fetch(media.video_path) as v, \
            work.local_dir(layout.CLIPS_DIR, ctx.item.video_id) as clip_dir:
        pose = load_pose(pose_file)  # memory-mapped: read one clip's frames at a time
        meshes = (slice_pose(pose, a, b, c.sync.face_track if c.sync else None)["face"] for c, (a, b) in zip(out.clips, ranges))
        kept = []
        for clip, fit in zip(out.clips, fit_video_clips(ctx.models, v, media.width, media.height, meshes, ranges)):
            errors = fit.pop("landmark_error_px", None)
            if errors is not None:
                clip.quality["flame_landmark_error_px_deca"] = round(float(errors[0]), 3)
                clip.quality["flame_landmark_error_px"] = round(float(errors[1]), 3)
                if errors[1] > ctx.options.max_landmark_error_px:  # the fit does not follow this face
                    out.rejects["flame_fit_poor"] = out.rejects.get("flame_fit_poor", 0) + 1
                    out.rejected_s["flame_fit_poor"] = round(out.rejected_s.get("flame_fit_poor", 0.0) + clip.end_s - clip.start_s, 3)
                    out.reject_spans.append(RejectSpan(start_s=clip.start_s, end_s=clip.end_s, reason="flame_fit_poor", face_track=clip.face_track))
                    continue
            kept.append(clip)
            FlameFit.from_arrays(fit)  # the shapes of the contract, before anything is written
            write_npz(os.path.join(clip_dir, layout.member_name(clip.key, layout.FLAME)), fit)
            clip.members.append(layout.FLAME)
            clip.stages.append("flame")
            clip.skipped_stages.pop("flame", None)
            clip.quality["flame_valid_ratio"] = round(float(fit["valid"].mean()), 4)
    out.clips = kept
    return out


# ---------------------------------------------------------------------------------------------
# the registry: every stage, in execution order

DAG = Registry([
    StageSpec("download", DownloadOptions, DownloadResult, _run_download, outputs_exist=_download_exists,
              resources=Resources(cpus=0.5), version=2),  # I/O bound; v2: provenance
    StageSpec("normalize", NormalizeOptions, NormalizedMedia, _run_normalize, requires={"download": "the source file"},
              outputs_exist=_media_exists, version=3),  # v2: rotation, pixel aspect, offsets, interlace, tracks (decisions); v3: passthrough
    StageSpec("shots", ShotOptions, ShotList, _run_shots, requires={"normalize": "the normalised video"}),
    StageSpec("speech", SpeechOptions, Transcript, _run_speech, requires={"normalize": "the normalised audio"},
              setup=load_speech_models, preflight=check_speech_assets, version=3),  # v2: spectral speaker clustering; v3: hygiene flags
    StageSpec("pose", PoseOptions, PoseResult, _run_pose, requires={"normalize": "the normalised video"}, uses=("shots", "speech"),
              setup=PoseModels, outputs_exist=_pose_exists,
              version=6),  # v6: face sharpness at a fixed face size; v2: head pose; v3: face slots (faces, faces_track, faces_mouth); v4: small faces meshed on crops; v5: cascade (skipped)
    StageSpec("identity", IdentityOptions, IdentityResult, _run_identity,
              requires={"pose": "face tracks", "normalize": "the normalised video"}, resources=Resources(cpus=1)),
    StageSpec("sync", SyncOptions, SyncResult, _run_sync,
              requires={"pose": "face tracks and lips", "normalize": "the normalised audio"},
              outputs_exist=_sync_exists, unavailable=sync_unavailable,
              version=2),  # v2: backend lips (lip shape from the log-mel spectrum) replaces mouth
    StageSpec("clips", ClipOptions, ClipSet, _run_clips, requires={"normalize": "the normalised media"},
              uses=("download", "shots", "pose", "speech", "identity", "sync"), outputs_exist=_clip_files_exist, emits_clips=True,
              version=8),  # v8: active face without a window threshold, clip-level sync verdicts; v2: provenance, source_media, clip_to_source; v3: active speaker, sync decisions; v4: face track, embedding; v5: audio figures and filters; v6: reject spans; v7: frame-exact cuts, several per ffmpeg process
    StageSpec("flame", FlameOptions, ClipSet, _run_flame,
              requires={"clips": "the clips to fit", "pose": "face landmarks for the crops"}, uses=("normalize",),
              setup=setup_flame, unavailable=flame_unavailable, outputs_exist=_clip_files_exist, emits_clips=True,
              version=2),  # v2: landmark refinement (dlib 68 iBUG points), flame_fit_poor
])
