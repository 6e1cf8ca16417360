"""Face identity: who is on screen, the same id in every video and every run.

Per video (the identity stage): for every face track of the pose stage, a few frontal frames of
sufficient size spread over the track are decoded; dlib's 5-point predictor aligns each face and
dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``, 128-d; both from the
``face-recognition-models`` package, CC0) embeds it. The track's embedding is the mean.

Per run (``assign_identities``, called by the pipeline once all videos are in): track embeddings are
clustered (average linkage, Euclidean distance ≤ ``identity.match_distance``, dlib's 0.6 rule for
"same person"), and each cluster joins the nearest identity of the registry (earlier runs, named
reference photos) within that distance, or becomes a new one. The registry (centroids, counts,
videos) is written next to the shards, so a later run over new episodes assigns the same ids.

Ray-free; the models load once per worker process.
"""

from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from schemas.identity import EMBEDDING_DIM, Identity, IdentityRegistry, IdentityResult, TrackEmbedding
from schemas.settings import Settings, runtime_field

from .errors import StageError

class IdentityOptions(Settings):
    """Options of the identity stage and of the run-level assignment (config section ``identity``)."""

    enabled: bool = True
    frames_per_track: int = Field(3, ge=1, description="frames embedded per face track (frontal, large enough, spread over the track)")
    max_yaw_deg: float = Field(25.0, gt=0, le=90)
    max_pitch_deg: float = Field(20.0, gt=0, le=90)
    min_face_px: int = Field(48, ge=16, description="smallest face box height embedded (dlib aligns to a 150-px chip)")
    match_distance: float = runtime_field(0.45, gt=0, description="same identity within this Euclidean distance of 128-d embeddings (dlib's 0.6 merged different East Asian faces: docs/identity.md)")
    registry: str | None = runtime_field(None, description="identities.json of an earlier run to continue (default: the output folder's own)")
    names_csv: str | None = runtime_field(None, description="identities.csv: name, photo (one row per reference photo) to name identities")


@dataclass
class FaceEmbedder:
    """dlib's 5-point aligner and 128-d face-recognition ResNet."""

    predictor: object
    model: object

    def embed(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """128-d descriptor of the face in pixel box ``[x0, y0, x1, y1]`` of an RGB frame."""
        import dlib

        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self.predictor(rgb, dlib.rectangle(x0, y0, x1, y1))
        return np.array(self.model.compute_face_descriptor(rgb, shape), np.float32)


@functools.lru_cache(maxsize=1)
def load_embedder() -> FaceEmbedder:
    """The dlib models from the face-recognition-models package (loaded once per process)."""
    try:
        import dlib
        import face_recognition_models as frm
    except ImportError as e:
        raise StageError("missing_dependency", f"face identity needs dlib-bin and face-recognition-models (make setup): {e}") from None
    return FaceEmbedder(dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
                        dlib.face_recognition_model_v1(frm.face_recognition_model_location()))


def pick_frames(pose: dict[str, np.ndarray], opts: IdentityOptions) -> dict[int, list[tuple[int, int]]]:
    """Face track id -> up to ``frames_per_track`` (frame, slot) pairs, evenly spread in time over the
    track's frames whose box is at least ``min_face_px`` tall and whose head is within the yaw/pitch
    limits; a track with too few such frames adds its most frontal other frames of that size."""
    ids, boxes, head = np.asarray(pose["faces_track"]), np.asarray(pose["faces_box"]), np.asarray(pose["faces_head_pose"])
    height = boxes[..., 3] - boxes[..., 1]
    with np.errstate(invalid="ignore"):
        big = (ids >= 0) & (height >= opts.min_face_px) & ~np.isnan(head[..., 0])
        frontal = big & (np.abs(head[..., 0]) <= opts.max_yaw_deg) & (np.abs(head[..., 1]) <= opts.max_pitch_deg)
    turn = np.nan_to_num(np.abs(head[..., 0]) / opts.max_yaw_deg + np.abs(head[..., 1]) / opts.max_pitch_deg, nan=np.inf)
    n = opts.frames_per_track
    out: dict[int, list[tuple[int, int]]] = {}
    for track in np.unique(ids[big]):
        frames, slots = np.nonzero(frontal & (ids == track))
        if len(frames) < n:
            more_f, more_s = np.nonzero(big & ~frontal & (ids == track))
            best = np.argsort(turn[more_f, more_s], kind="stable")[: n - len(frames)]
            order = np.argsort(np.r_[frames, more_f[best]], kind="stable")
            frames, slots = np.r_[frames, more_f[best]][order], np.r_[slots, more_s[best]][order]
        pick = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
        out[int(track)] = [(int(frames[i]), int(slots[i])) for i in pick]
    return out


def embed_tracks(embedder: FaceEmbedder, read_at, pose: dict[str, np.ndarray], opts: IdentityOptions) -> IdentityResult:
    """Mean embedding of every face track from its picked frames; ``read_at(indices)`` yields
    ``(index, RGB frame)`` of the wanted frames (``stages.frames.read_frames_at``)."""
    wanted = pick_frames(pose, opts)
    by_frame: dict[int, list[tuple[int, int]]] = {}
    for track, items in wanted.items():
        for t, slot in items:
            by_frame.setdefault(t, []).append((track, slot))
    vectors: dict[int, list[np.ndarray]] = {}
    boxes = pose["faces_box"]
    for t, rgb in read_at(sorted(by_frame)):
        for track, slot in by_frame.get(t, []):
            vectors.setdefault(track, []).append(embedder.embed(rgb, np.asarray(boxes[t, slot])))
    tracks = []
    for track, vs in sorted(vectors.items()):
        v = np.stack(vs)
        mean = v.mean(axis=0)
        tracks.append(TrackEmbedding(track=track, frames=len(vs), spread=round(float(np.linalg.norm(v - mean, axis=1).mean()), 4),
                                     embedding=[round(float(x), 5) for x in mean]))
    return IdentityResult(tracks=tracks)


def embed_photos(embedder: FaceEmbedder, paths: list[str]) -> np.ndarray:
    """Mean embedding of the largest face of each reference photo (a photo without a face is an error)."""
    import mediapipe as mp
    import skimage.io

    out = []
    for path in paths:
        img = skimage.io.imread(path)
        img = np.ascontiguousarray(np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3])
        h, w = img.shape[:2]
        with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as fd:
            dets = fd.process(img).detections or []
        if not dets:
            raise StageError("no_face", f"no face found in reference photo {path}")
        b = max(dets, key=lambda d: d.location_data.relative_bounding_box.width).location_data.relative_bounding_box
        out.append(embedder.embed(img, np.array([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h])))
    return np.stack(out).mean(axis=0)


def read_names_csv(path: str) -> dict[str, list[str]]:
    """``identities.csv`` (columns ``name``, ``photo``; photo paths relative to the file) -> name -> photos."""
    names: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not row.get("name") or not row.get("photo"):
                raise ValueError(f"{path}: every row needs a name and a photo")
            photo = row["photo"] if os.path.isabs(row["photo"]) else os.path.join(os.path.dirname(path), row["photo"])
            names.setdefault(row["name"].strip(), []).append(photo)
    return names


def assign_identities(tracks: dict[tuple[str, int], TrackEmbedding], registry: IdentityRegistry,
                      match_distance: float) -> tuple[dict[tuple[str, int], tuple[str, float]], IdentityRegistry]:
    """(video id, track) -> (identity id, distance to its centroid), and the updated registry.

    The run's tracks are clustered first (average linkage, cut at ``match_distance``), in a fixed
    order so a re-run gives the same answer; each cluster then joins the registry's nearest identity
    within ``match_distance`` (its centroid moves to the frame-weighted mean) or opens a new one."""
    from scipy.cluster.hierarchy import fcluster, linkage

    reg = registry.model_copy(deep=True)
    # Tracks already folded into an identity (a resumed or repeated run) keep it and add nothing:
    # assigning the same tracks twice must not count their frames twice or move the centroid.
    known = {t: j for j, ident in enumerate(reg.identities) for t in ident.tracks}
    keys = sorted(k for k in tracks if track_key(*k) not in known)
    centroids = np.array([i.centroid for i in reg.identities], np.float64).reshape(-1, EMBEDDING_DIM)
    cluster_to_identity: dict[int, int] = {}
    labels = np.zeros(0, np.int64)
    if keys:
        emb = np.array([tracks[k].embedding for k in keys], np.float64)
        weights = np.array([tracks[k].frames for k in keys], np.float64)
        labels = fcluster(linkage(emb, "average"), match_distance, "distance") if len(keys) > 1 else np.array([1])
    for lab in sorted(set(labels.tolist()), key=lambda c: keys[int(np.flatnonzero(labels == c)[0])]):
        members = labels == lab
        centre = np.average(emb[members], axis=0, weights=weights[members])
        videos = sorted({keys[i][0] for i in np.flatnonzero(members)})
        new_tracks = [track_key(*keys[i]) for i in np.flatnonzero(members)]
        if len(centroids):
            d = np.linalg.norm(centroids - centre, axis=1)
            j = int(d.argmin())
            if d[j] <= match_distance:
                ident = reg.identities[j]
                n = ident.count + weights[members].sum()
                new = (np.array(ident.centroid) * ident.count + centre * weights[members].sum()) / n
                reg.identities[j] = ident.model_copy(update={"centroid": [round(float(x), 5) for x in new], "count": int(n),
                                                             "videos": sorted(set(ident.videos) | set(videos)),
                                                             "tracks": sorted(set(ident.tracks) | set(new_tracks))})
                centroids[j] = new
                cluster_to_identity[lab] = j
                continue
        reg.identities.append(Identity(id=f"id{len(reg.identities) + 1:04d}", centroid=[round(float(x), 5) for x in centre],
                                       count=int(weights[members].sum()), videos=videos, tracks=sorted(new_tracks)))
        centroids = np.vstack([centroids, centre[None]])
        cluster_to_identity[lab] = len(reg.identities) - 1
    which = {k: cluster_to_identity[labels[i]] for i, k in enumerate(keys)}
    which.update({k: known[track_key(*k)] for k in tracks if track_key(*k) in known})
    out = {}
    for k in sorted(tracks):
        j = which[k]
        out[k] = (reg.identities[j].id, round(float(np.linalg.norm(np.array(tracks[k].embedding, np.float64) - centroids[j])), 4))
    return out, reg


def track_key(video_id: str, track: int) -> str:
    """How the registry names one face track of one video."""
    return f"{video_id}#{track}"


def registry_with_names(registry: IdentityRegistry, names: dict[str, np.ndarray], match_distance: float) -> IdentityRegistry:
    """Name the registry's identities after reference embeddings (nearest within ``match_distance``);
    a name that matches none becomes a new identity with no clips yet."""
    reg = registry.model_copy(deep=True)
    for name, vec in sorted(names.items()):
        if any(i.name == name for i in reg.identities):
            continue
        d = [float(np.linalg.norm(np.array(i.centroid) - vec)) for i in reg.identities]
        if d and min(d) <= match_distance and reg.identities[int(np.argmin(d))].name is None:
            j = int(np.argmin(d))
            reg.identities[j] = reg.identities[j].model_copy(update={"name": name})
        else:
            reg.identities.append(Identity(id=f"id{len(reg.identities) + 1:04d}", name=name, centroid=[round(float(x), 5) for x in vec],
                                           count=0, videos=[]))
    return reg
