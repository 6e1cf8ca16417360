"""Run-wide face identities: the identity stage's per-video track embeddings → identity ids on
every clip, and ``identities.json`` next to the shards (continued by later runs)."""

from __future__ import annotations

from schemas import ClipRecord, IdentityRegistry, IdentityResult
from stages.identity import IdentityOptions, assign_identities, embed_photos, load_embedder, read_names_csv, registry_with_names

from pipeline.engine.run_folder import RunFolder
from pipeline.engine.workdir import WorkDir



def load_registry(out: WorkDir, opts: IdentityOptions) -> IdentityRegistry:
    """The registry to continue: ``identity.registry`` if set, else this output folder's own, else empty."""
    if opts.registry:
        with open(opts.registry, encoding="utf-8") as f:
            return IdentityRegistry.model_validate_json(f.read())
    if out.exists(RunFolder.IDENTITIES):
        return IdentityRegistry.model_validate_json(out.read_text(RunFolder.IDENTITIES))
    return IdentityRegistry(match_distance=opts.match_distance)


def label_clips(clips: list[ClipRecord], results: dict[str, IdentityResult], out: WorkDir, opts: IdentityOptions) -> IdentityRegistry:
    """Set ``identity``, ``identity_name`` and ``identity_distance`` on every clip whose face track
    was embedded; returns the updated registry (``save_registry`` writes it once the shards are in)."""
    registry = load_registry(out, opts)
    if opts.names_csv:
        named = {name: embed_photos(load_embedder(), photos) for name, photos in read_names_csv(opts.names_csv).items()}
        registry = registry_with_names(registry, named, opts.match_distance)
    tracks = {(vid, t.track): t for vid, res in results.items() for t in res.tracks}
    assigned, registry = assign_identities(tracks, registry, opts.match_distance)
    names = {i.id: i.name for i in registry.identities}
    for clip in clips:
        hit = assigned.get((clip.video_id, clip.face_track)) if clip.face_track is not None else None
        if hit:
            clip.identity, clip.identity_distance = hit
            clip.identity_name = names.get(hit[0])
    return registry


def save_registry(registry: IdentityRegistry, out: WorkDir) -> None:
    """Write ``out/identities.json`` (atomically). The runner calls it after the shards: a run that
    dies before them leaves the registry as it was, and assigning the same tracks again is a no-op."""
    out.write_text(registry.model_dump_json(indent=1) + "\n", RunFolder.IDENTITIES)


def identity_count(registry: IdentityRegistry, clips: list[ClipRecord]) -> dict[str, float]:
    """Identity -> hours of clips in this run."""
    hours: dict[str, float] = {}
    for c in clips:
        if c.identity:
            hours[c.identity] = hours.get(c.identity, 0.0) + (c.end_s - c.start_s) / 3600
    return {k: round(v, 4) for k, v in sorted(hours.items())}

