"""The ingestion DAG: one declaration per stage, in execution order.

    download → normalize → shots → speech → pose → identity → sync → clips → curate → flame
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

from schemas import ClipSet, DownloadResult, IdentityResult, NormalizedMedia, PoseResult, ShotList, SyncResult, Transcript
from schemas import shard as layout
from stages.assemble import ClipInputs, assemble_clips
from stages.clips import ClipOptions
from stages.curate import CurateOptions, curate_clip_set
from stages.download import MEDIA_BASENAME, DownloadOptions, download, forget_archived
from stages.emotion import EmotionOptions, emotion_assets, emotion_unavailable, estimates_current, label_clip_set
from stages.errors import StageError
from stages.files import write_npz
from stages.flame import FlameOptions, fit_clip_set, flame_assets, flame_unavailable, setup_flame
from stages.identity import IdentityOptions, embed_tracks, load_embedder
from stages.normalize import NormalizeOptions, normalize
from stages.frames import read_frames, read_frames_at
from stages.pose import PoseModels, PoseOptions, extract_pose, load_pose, pose_track, save_pose
from stages.candidates import pose_candidates
from stages.shots import ShotOptions, detect_shots
from stages.wav import map_pcm16
from stages.speech import SAMPLE_RATE, SpeechOptions, check_speech_assets, load_audio, speech_assets, load_speech_models, transcribe
from stages.sync import SyncNet, SyncOptions, sync_assets, sync_features, sync_unavailable

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


def _synced(clip) -> bool:
    """A clip the sync stage measured (fixed-mode windows have no sync verdict)."""
    return clip.sync is not None


def _load_sync(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------------------------
# clips: select (shots × speech turns × visibility) and cut; then FLAME per clip


def _run_clips(ctx: StageContext) -> ClipSet:
    media: NormalizedMedia = ctx.inputs["normalize"]
    pose_out: PoseResult | None = ctx.inputs.get("pose")
    sync_out: SyncResult | None = ctx.inputs.get("sync")
    ident: IdentityResult | None = ctx.inputs.get("identity")
    download: DownloadResult | None = ctx.inputs.get("download")
    work, item = ctx.work, ctx.item
    with work.fetch(pose_out.path) if pose_out else contextlib.nullcontext() as pose_file, \
            work.fetch(sync_out.path) if sync_out else contextlib.nullcontext() as sync_file, \
            work.fetch(media.video_path) as v, work.fetch(media.audio_path) as a, \
            work.local_dir(layout.CLIPS_DIR, item.video_id) as out:
        inputs = ClipInputs(
            media=media.model_copy(update={"video_path": v, "audio_path": a}), source_uri=item.uri, metadata=item.metadata,
            provenance=download.provenance if download else None, transcript=ctx.inputs.get("speech"), shots=ctx.inputs.get("shots"),
            pose=load_pose(pose_file) if pose_file else None,  # memory-mapped: a clip reads its own frames only
            sync=_load_sync(sync_file) if sync_file else None, sync_options=ctx.input_options.get("sync"),
            identity={t.track: np.array(t.embedding, np.float32) for t in ident.tracks} if ident else None)
        return assemble_clips(inputs, out, ctx.options)


def _clip_files_exist(out: ClipSet, ctx: StageContext) -> bool:
    return all(ctx.work.exists(*layout.clip_member_parts(c.video_id, c.key, s)) for c in out.clips for s in layout.file_members(c.members))


def _run_curate(ctx: StageContext) -> ClipSet:
    """Broadcast checks on every clip of the video (``stages.curate.curate_clip_set``)."""
    media: NormalizedMedia = ctx.inputs["normalize"]
    pose_out: PoseResult | None = ctx.inputs.get("pose")
    work = ctx.work
    with work.fetch(pose_out.path) if pose_out else contextlib.nullcontext() as pose_file, \
            work.fetch(media.video_path) as v, work.fetch(media.audio_path) as a:
        # the int16 samples memory-mapped: each clip's fingerprint reads its own pages (an hour is not held)
        audio, sr = map_pcm16(a) if ctx.options.fingerprint else (None, SAMPLE_RATE)
        return curate_clip_set(v, audio, sr, media, ctx.inputs["clips"], load_pose(pose_file) if pose_file else None,
                               ctx.options)


def _curated(clip) -> bool:
    return clip.curation is not None


def _run_flame(ctx: StageContext) -> ClipSet:
    """DECA → FLAME for every clip of the video (``stages.flame.fit_clip_set``): the curated clips
    when the curate stage ran."""
    media: NormalizedMedia = ctx.inputs["normalize"]
    work = ctx.work
    clips = ctx.inputs.get("curate") or ctx.inputs["clips"]
    with work.fetch(ctx.inputs["pose"].path) as pose_file, work.fetch(media.video_path) as v, \
            work.local_dir(layout.CLIPS_DIR, ctx.item.video_id) as clip_dir:
        return fit_clip_set(ctx.models, v, media, clips, load_pose(pose_file), clip_dir,
                            ctx.options.max_landmark_error_px)


def _run_emotion(ctx: StageContext) -> ClipSet:
    """Emotion pseudo-labels from each clip's FLAME fit (``stages.emotion.label_clip_set``)."""
    work, video_id = ctx.work, ctx.item.video_id
    return label_clip_set(ctx.inputs["flame"], lambda key: work.fetch(work.path(*layout.clip_member_parts(video_id, key, layout.FLAME))),
                          ctx.options)


def _emotion_outputs_current(out: ClipSet, ctx: StageContext) -> bool:
    return _clip_files_exist(out, ctx) and estimates_current(out, ctx.options)


def _estimated(clip) -> bool:
    return clip.emotion_estimate is not None


# ---------------------------------------------------------------------------------------------
# the registry: every stage, in execution order

DAG = Registry([
    StageSpec("download", DownloadOptions, DownloadResult, _run_download, outputs_exist=_download_exists,
              resources=Resources(cpus=0.5), version=2),  # I/O bound; v2: provenance
    StageSpec("normalize", NormalizeOptions, NormalizedMedia, _run_normalize, requires={"download": "the source file"},
              outputs_exist=_media_exists, version=3),  # v2: rotation, pixel aspect, offsets, interlace, tracks (decisions); v3: passthrough
    StageSpec("shots", ShotOptions, ShotList, _run_shots, requires={"normalize": "the normalised video"}, on_clips=True),
    StageSpec("speech", SpeechOptions, Transcript, _run_speech, requires={"normalize": "the normalised audio"},
              setup=load_speech_models, preflight=check_speech_assets, assets=speech_assets, on_clips=True, version=3),  # v2: spectral speaker clustering; v3: hygiene flags
    StageSpec("pose", PoseOptions, PoseResult, _run_pose, requires={"normalize": "the normalised video"}, uses=("shots", "speech"),
              setup=PoseModels, outputs_exist=_pose_exists, on_clips=True,
              version=7),  # v7: hand confidence = Pose visibility of the hand's landmarks (not handedness); v6: face sharpness at a fixed face size; v2: head pose; v3: face slots (faces, faces_track, faces_mouth); v4: small faces meshed on crops; v5: cascade (skipped)
    StageSpec("identity", IdentityOptions, IdentityResult, _run_identity,
              requires={"pose": "face tracks", "normalize": "the normalised video"}, resources=Resources(cpus=1)),
    StageSpec("sync", SyncOptions, SyncResult, _run_sync,
              requires={"pose": "face tracks and lips", "normalize": "the normalised audio"},
              outputs_exist=_sync_exists, unavailable=sync_unavailable, assets=sync_assets, on_clips=_synced,
              version=2),  # v2: backend lips (lip shape from the log-mel spectrum) replaces mouth
    StageSpec("clips", ClipOptions, ClipSet, _run_clips, requires={"normalize": "the normalised media"},
              uses=("download", "shots", "pose", "speech", "identity", "sync"), outputs_exist=_clip_files_exist, emits_clips=True,
              version=10),  # v10: pose.npz layout 2 (compact landmarks, docs/shard_format.md); v9: clip assembly in stages/assemble.py, ``stages`` marked by the executor in DAG order; v8: active face without a window threshold, clip-level sync verdicts; v2: provenance, source_media, clip_to_source; v3: active speaker, sync decisions; v4: face track, embedding; v5: audio figures and filters; v6: reject spans; v7: frame-exact cuts, several per ffmpeg process
    StageSpec("curate", CurateOptions, ClipSet, _run_curate, requires={"clips": "the clips to check", "normalize": "the normalised media"},
              uses=("pose", "speech"), outputs_exist=_clip_files_exist, emits_clips=True, on_clips=_curated),
    StageSpec("flame", FlameOptions, ClipSet, _run_flame,
              requires={"clips": "the clips to fit", "pose": "face landmarks for the crops"}, uses=("normalize", "curate"),
              setup=setup_flame, unavailable=flame_unavailable, assets=flame_assets, outputs_exist=_clip_files_exist, emits_clips=True, on_clips=True,
              version=2),  # v2: landmark refinement (dlib 68 iBUG points), flame_fit_poor
    StageSpec("emotion", EmotionOptions, ClipSet, _run_emotion, requires={"flame": "FLAME fits of the clips"},
              unavailable=emotion_unavailable, assets=emotion_assets, outputs_exist=_emotion_outputs_current,
              emits_clips=True, on_clips=_estimated),
])
