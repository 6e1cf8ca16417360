"""Standard dataset metadata of a release: the Hugging Face dataset card's YAML header and a
Croissant 1.0 description (``croissant.json``).

- The card header (``card_header``) is the front matter the Hub (and ``datasets.load_dataset(folder)``)
  reads: one ``default`` config whose ``data_files`` name each split's shards (``train/*.tar``) or, for a
  metadata-only release, each split's ``clips.jsonl``; licence, languages, tags, size category.
- ``croissant_jsonld`` describes the files (a ``cr:FileObject`` per shard / ``clips.jsonl`` with its
  sha256, a ``cr:FileSet`` per split) and a ``cr:RecordSet`` per split with the clip fields; ``mlcroissant``
  validates it and iterates the records of either kind of release.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import yaml
from pipeline.release.files import CARD, CROISSANT, SPLIT_MANIFEST, STATS


#: release.licence strings (lower case, spaces/underscores as dashes) -> Hugging Face Hub licence ids.
HF_LICENCES = {
    "cc-by-4.0": "cc-by-4.0", "cc-by-sa-4.0": "cc-by-sa-4.0", "cc-by-nc-4.0": "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0": "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0": "cc-by-nc-nd-4.0", "cc-by-nd-4.0": "cc-by-nd-4.0",
    "cc0-1.0": "cc0-1.0", "cc0": "cc0-1.0", "mit": "mit", "apache-2.0": "apache-2.0", "odc-by": "odc-by",
    "odbl": "odbl", "cdla-permissive-2.0": "cdla-permissive-2.0", "cdla-sharing-1.0": "cdla-sharing-1.0",
}
#: the same ids as SPDX URLs, for Croissant's ``license``.
SPDX = {"cc-by-4.0": "CC-BY-4.0", "cc-by-sa-4.0": "CC-BY-SA-4.0", "cc-by-nc-4.0": "CC-BY-NC-4.0", "cc-by-nc-sa-4.0": "CC-BY-NC-SA-4.0",
        "cc-by-nc-nd-4.0": "CC-BY-NC-ND-4.0", "cc-by-nd-4.0": "CC-BY-ND-4.0", "cc0-1.0": "CC0-1.0", "mit": "MIT",
        "apache-2.0": "Apache-2.0", "odc-by": "ODC-By-1.0", "odbl": "ODbL-1.0", "cdla-permissive-2.0": "CDLA-Permissive-2.0",
        "cdla-sharing-1.0": "CDLA-Sharing-1.0"}

#: language tags as clips carry them (ISO 639-1/-2/-3, BCP 47) -> the ISO 639-1 code the Hub lists.
LANGUAGES = {"zh": "zh", "cmn": "zh", "chi": "zh", "zho": "zh", "yue": "zh", "en": "en", "eng": "en"}


def hf_licence(licence: str) -> str | None:
    """The Hub licence id of ``release.licence`` ("CC BY-NC 4.0" -> cc-by-nc-4.0), or None."""
    norm = "-".join(licence.strip().lower().replace("_", " ").replace("-", " ").split())
    return HF_LICENCES.get(norm)


def language_of(tag: str | None) -> str | None:
    if not tag:
        return None
    return LANGUAGES.get(tag.strip().lower().replace("_", "-").split("-")[0])


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def data_files_of(stats: dict, metadata_only: bool) -> dict[str, str]:
    """split -> the glob (relative to the release) of its data files; splits without clips are left out."""
    return {name: (f"{name}/clips.jsonl" if metadata_only else f"{name}/*.tar")
            for name, s in stats["splits"].items() if s["clips"]}


def card_header(stats: dict, cfg, version: str, metadata_only: bool = False) -> str:
    """The YAML front matter of the dataset card (``---`` … ``---``), as the Hugging Face Hub reads it."""
    head: dict = {"pretty_name": f"{cfg.name} {version}" + (" (metadata only)" if metadata_only else "")}
    lic = hf_licence(cfg.licence)
    if lic:
        head["license"] = lic
    else:
        head["license"] = "other"
        head["license_name"] = "-".join("".join(ch if ch.isalnum() else " " for ch in cfg.licence.lower()).split())[:64] or "custom"
    if stats.get("languages"):
        head["language"] = sorted(stats["languages"])
    head["task_categories"] = ["automatic-speech-recognition", "audio-to-audio", "text-to-speech"] if metadata_only else \
        ["automatic-speech-recognition", "text-to-video", "image-to-video", "text-to-speech"]
    head["tags"] = ["talking-head", "audio-visual", "speech", "video", "webdataset" if not metadata_only else "metadata-only", "cnas"]
    head["size_categories"] = [size_category(stats["clips"])]
    head["configs"] = [{"config_name": "default", "data_files": [{"split": s, "path": p} for s, p in data_files_of(stats, metadata_only).items()]}]
    return "---\n" + yaml.safe_dump(head, sort_keys=False, allow_unicode=True) + "---\n"


def read_card_header(card: str) -> dict:
    """The YAML front matter of a card (``{}`` when it has none); raises ``yaml.YAMLError`` on bad YAML."""
    if not card.startswith("---\n"):
        return {}
    head, sep, _ = card[4:].partition("\n---\n")
    return (yaml.safe_load(head) or {}) if sep else {}


# ---------------------------------------------------------------------------------------------
# Croissant

CONTEXT = {
    "@language": "en", "@vocab": "https://schema.org/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "cr": "http://mlcommons.org/croissant/", "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"}, "equivalentProperty": "cr:equivalentProperty", "samplingRate": "cr:samplingRate", "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/", "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract",
    "field": "cr:field", "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject", "fileSet": "cr:fileSet",
    "format": "cr:format", "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset", "jsonPath": "cr:jsonPath",
    "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField", "path": "cr:path", "recordSet": "cr:recordSet",
    "references": "cr:references", "regex": "cr:regex", "repeated": "cr:repeated", "replace": "cr:replace",
    "sc": "https://schema.org/", "separator": "cr:separator", "source": "cr:source", "subField": "cr:subField",
    "transform": "cr:transform",
}

#: fields of a <split>/manifest.jsonl line (ManifestRow) read by column: the samples of the shards.
MANIFEST_FIELDS = [
    ("key", "sc:Text", "sample key <video_id>-<index>: the WebDataset key of its members in the shard"),
    ("shard", "sc:Text", "the shard (in the split's folder) that holds the sample"),
    ("video_id", "sc:Text", "the source video's id in the run"),
    ("duration_s", "sc:Float", "clip duration (s)"),
]
#: fields of a clips.jsonl line (ClipSource) read by column.
SOURCE_FIELDS = [
    ("key", "sc:Text", "sample key <video_id>-<index>"),
    ("split", "sc:Text", "the split"),
    ("source_sha256", "sc:Text", "sha256 of the source media file the run ingested (null: it was gone)"),
    ("source_start_s", "sc:Float", "clip start on the source's timeline (s)"),
    ("source_end_s", "sc:Float", "clip end on the source's timeline (s)"),
    ("first_frame", "sc:Integer", "first frame in the normalised video"),
    ("num_frames", "sc:Integer", "frames of the clip"),
    ("audio_shift_frames", "sc:Integer", "the clip's audio was taken this many frames earlier"),
]


#: fields nested in a clips.jsonl line: (field name, data type, column, JSON path in it, description).
NESTED_FIELDS = [
    ("source_uri", "sc:Text", "source", "$.uri", "the source URL or path as the sources file gave it"),
    ("video_id", "sc:Text", "clip", "$.video_id", "the source video's id in the run"),
    ("start_s", "sc:Float", "clip", "$.start_s", "clip start in the normalised source (s)"),
    ("end_s", "sc:Float", "clip", "$.end_s", "clip end in the normalised source (s)"),
    ("language", "sc:Text", "clip", "$.language", "the clip's language tag"),
    ("transcript", "sc:Text", "clip", "$.transcript.text", "the clip's transcript (normalised text); null without speech"),
    ("identity", "sc:Text", "clip", "$.identity", "face identity id (the same person in every video)"),
    ("emotion_estimate", "sc:Text", "clip", "$.emotion_estimate.label", "emotion pseudo-label (emotion stage); null without one"),
    ("emotion_confidence", "sc:Float", "clip", "$.emotion_estimate.confidence", "the pseudo-label's probability"),
]


def _licence_url(licence: str) -> str:
    lic = hf_licence(licence)
    return f"https://spdx.org/licenses/{SPDX[lic]}.html" if lic in SPDX else licence


def _jsonl_file(root: Path, fid: str, rel: str, description: str) -> dict:
    """A JSON-lines ``cr:FileObject`` of the release, with its sha256."""
    from pipeline.release.files import sha256_file

    return {"@type": "cr:FileObject", "@id": fid, "name": fid, "contentUrl": rel, "encodingFormat": "application/jsonlines",
            "sha256": sha256_file(str(root / rel)), "description": description}


def _column_fields(split: str, fid: str, specs) -> list[dict]:
    """``cr:Field``s of record set ``clips_<split>`` read from columns of file ``fid``: specs are (name, dataType, description)."""
    return [{"@type": "cr:Field", "@id": f"clips_{split}/{name}", "name": name, "description": desc, "dataType": dtype,
             "source": {"fileObject": {"@id": fid}, "extract": {"column": name}}} for name, dtype, desc in specs]


def croissant_jsonld(root: Path, stats: dict, cfg, version: str, metadata_only: bool = False) -> dict:
    """The Croissant 1.0 JSON-LD of the release in ``root`` (its data files must be written)."""
    from pipeline.release.files import sha256_file

    distribution, record_sets = [], []
    for split, s in stats["splits"].items():
        if not s["clips"]:
            continue
        if metadata_only:
            fid = f"{split}-clips-jsonl"
            distribution.append(_jsonl_file(root, fid, f"{split}/clips.jsonl",
                                            f"{split}: one ClipSource record per clip (schemas/clip_source.schema.json)"))
            fields = _column_fields(split, fid, SOURCE_FIELDS)
            fields += [{"@type": "cr:Field", "@id": f"clips_{split}/{name}", "name": name, "description": desc, "dataType": dtype,
                        "source": {"fileObject": {"@id": fid}, "extract": {"column": col}, "transform": {"jsonPath": path}}}
                       for name, dtype, col, path, desc in NESTED_FIELDS]
        else:
            shards = sorted(p.name for p in (root / split).glob("*.tar"))
            if not shards:
                continue
            for name in shards:
                distribution.append({"@type": "cr:FileObject", "@id": f"{split}/{name}", "name": f"{split}/{name}",
                                     "contentUrl": f"{split}/{name}", "encodingFormat": "application/x-tar",
                                     "sha256": sha256_file(str(root / split / name)), "description": f"WebDataset shard of split {split}"})
            distribution.append({"@type": "cr:FileSet", "@id": f"{split}-json", "name": f"{split}-json",
                                 "containedIn": [{"@id": f"{split}/{n}"} for n in shards], "includes": "*.json",
                                 "encodingFormat": "application/json",
                                 "description": f"{split}: the json member (clip record, schemas/clip.schema.json) of every sample in "
                                                f"{split}/*.tar; the mp4, wav and array members sit next to it under the same key"})
            fid = f"{split}-manifest"
            distribution.append(_jsonl_file(root, fid, f"{split}/manifest.jsonl",
                                            f"{split}: one ManifestRow per sample (key, shard, member sizes and sha256)"))
            fields = _column_fields(split, fid, MANIFEST_FIELDS)
        record_sets.append({"@type": "cr:RecordSet", "@id": f"clips_{split}", "name": f"clips_{split}",
                            "description": f"the clips of split {split} ({s['clips']} clips, {s['hours']} h)", "field": fields})
    kind = "metadata-only release (no media; rebuild with `cnas rebuild`)" if metadata_only else \
        "WebDataset shards (json clip record, mp4, wav, optional pose.npz / flame.npz per sample)"
    doc = {
        "@context": CONTEXT, "@type": "sc:Dataset", "conformsTo": "http://mlcommons.org/croissant/1.0",
        "name": f"{cfg.name}-{version}" + ("-meta" if metadata_only else ""),
        "description": f"{cfg.name} {version}: talking-person clips with transcripts; {stats['clips']} clips, {stats['hours']} h, "
                       f"{stats['speakers']} speakers, speaker-disjoint splits {', '.join(stats['splits'])}. {kind}. "
                       f"Licence / terms: {cfg.licence}. {cfg.terms}",
        "license": _licence_url(cfg.licence), "url": CARD, "version": _semver(version),
        "citeAs": f"{cfg.name} {version}", "isLiveDataset": False, "datePublished": stats.get("date") or date.today().isoformat(),
        "distribution": distribution, "recordSet": record_sets,
    }
    if stats.get("languages"):
        doc["inLanguage"] = sorted(stats["languages"])
    return doc


def _semver(version: str) -> str:
    """Croissant recommends MAJOR.MINOR.PATCH: '1.0' -> '1.0.0'."""
    parts = version.split(".")
    if all(p.isdigit() for p in parts) and 1 <= len(parts) < 3:
        parts += ["0"] * (3 - len(parts))
    return ".".join(parts)


def write_croissant(root: Path, stats: dict, cfg, version: str, metadata_only: bool = False) -> None:
    (root / CROISSANT).write_text(json.dumps(croissant_jsonld(root, stats, cfg, version, metadata_only), indent=2, ensure_ascii=False) + "\n")


def check_metadata(root: Path) -> list[str]:
    """Cheap checks of a release's standard metadata: croissant.json parses and its files' sha256
    match; the card's YAML header parses and every data_files glob matches files."""
    from pipeline.release.files import UnsafeReleaseError, sha256_file, check_regular, read_capped, safe_join

    errs = []
    cr = root / CROISSANT
    if cr.exists():
        try:
            doc = json.loads(read_capped(cr, name=CROISSANT))
            for d in doc.get("distribution", []):
                if d.get("@type") == "cr:FileObject":
                    try:  # a release is untrusted: no absolute path, no '..', no link or device is read
                        p = safe_join(root, d["contentUrl"])
                        check_regular(p, d["contentUrl"])
                    except FileNotFoundError:
                        errs.append(f"{CROISSANT}: {d['contentUrl']} is missing")
                        continue
                    except UnsafeReleaseError as e:
                        errs.append(f"{CROISSANT}: {d['contentUrl']!r} refused, not read: {e}")
                        continue
                    if d.get("sha256") and sha256_file(str(p)) != d["sha256"]:
                        errs.append(f"{CROISSANT}: {d['contentUrl']}: sha256 differs")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            errs.append(f"{CROISSANT}: does not parse ({type(e).__name__}: {e})")
    card = root / CARD
    if card.exists():
        try:
            head = read_card_header(read_capped(card, name=CARD).decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            errs.append(f"README.md: YAML header does not parse: {e}")
            head = {}
        for conf in (head.get("configs", []) or []) if isinstance(head, dict) else []:
            for df in (conf.get("data_files", []) or []) if isinstance(conf, dict) else []:
                pattern = df.get("path") if isinstance(df, dict) else None
                if not isinstance(pattern, str) or not pattern or pattern.startswith("/") or ".." in pattern.split("/"):
                    errs.append(f"README.md: data_files path {pattern!r} is not a relative glob inside the release")
                elif not list(root.glob(pattern)):
                    errs.append(f"README.md: config {conf.get('config_name')} split {df.get('split')}: {df['path']} matches no file")
    return errs


def write_rebuilt_metadata(out: Path) -> None:
    """For a release rebuilt from a metadata-only one (``cnas rebuild``): the copied card's header
    points at the rebuilt shards (splits with any) instead of ``clips.jsonl``, and ``croissant.json``
    describes the shards, with the clip counts and hours of the manifests."""
    from types import SimpleNamespace

    stats = json.loads((out / STATS).read_text())
    splits = {}
    for name in stats.get("splits", {}):
        rows = [json.loads(l) for l in (out / name / SPLIT_MANIFEST).read_text().splitlines() if l.strip()] \
            if (out / name / SPLIT_MANIFEST).exists() else []
        splits[name] = {**stats["splits"][name], "clips": len(rows) if any((out / name).glob("*.tar")) else 0,
                        "hours": round(sum(r["duration_s"] for r in rows) / 3600, 4), "shards": len({r["shard"] for r in rows})}
    stats = {**stats, "splits": splits, "clips": sum(s["clips"] for s in splits.values()),
             "hours": round(sum(s["hours"] for s in splits.values()), 4)}
    card_path = out / CARD
    if card_path.exists():
        card = card_path.read_text()
        head = read_card_header(card)
        if head:
            body = card[4:].partition("\n---\n")[2]
            head["pretty_name"] = str(head.get("pretty_name", "")).replace(" (metadata only)", "")
            head["tags"] = ["webdataset" if t == "metadata-only" else t for t in head.get("tags", [])]
            head["size_categories"] = [size_category(stats["clips"])]
            head["configs"] = [{"config_name": "default", "data_files": [{"split": s, "path": p} for s, p in data_files_of(stats, False).items()]}]
            card_path.write_text("---\n" + yaml.safe_dump(head, sort_keys=False, allow_unicode=True) + "---\n" + body)
    cfg = SimpleNamespace(name=stats.get("name", "CNAS"), licence=stats.get("licence", "see README.md"),
                          terms="Rebuilt from a metadata-only release with `cnas rebuild`; the terms are in README.md.")
    write_croissant(out, stats, cfg, stats.get("version", "0"))
