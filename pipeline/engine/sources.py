"""Read a sources file (txt / csv / jsonl) into ``SourceItem`` records with stable, safe ids.

* txt: one URL or path per line; blank lines and ``#`` comments are ignored.
* csv: a header row; the location is in ``url``, ``uri`` or ``path``; an optional ``id`` column
  names the video; every other column becomes metadata (e.g. ``channel``, ``language``, ``licence``).
* jsonl: one object per line with the same keys as the csv columns.

Relative local paths are resolved against the folder of the sources file. Playlist and channel
URLs (and any row with ``expand=true``) are expanded into their entries with yt-dlp's flat
extraction, so the download stage sees single videos only.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import unquote, urlparse

from schemas import SourceItem

log = logging.getLogger(__name__)

_LOCATION_KEYS = ("url", "uri", "path")
_PLAYLIST_HINTS = re.compile(r"([?&]list=|/playlist|/channel/|/@[^/]+/?$|/@[^/]+/videos|/c/|/user/|\.rss$|/feed)", re.I)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_TRUE = {"1", "true", "yes", "y"}


def short_hash(text: str, n: int = 10) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def slug(text: str, max_len: int = 48) -> str:
    """Filesystem- and WebDataset-safe rendering of ``text`` (no dots, no slashes), possibly empty."""
    s = _UNSAFE.sub("_", text).strip("_-")
    return s[:max_len].rstrip("_-")


def make_video_id(uri: str, given_id: str | None = None) -> str:
    """A stable id: the user's id when it is already safe, else a slug plus a hash of the original.

    Hashing the original keeps two different unsafe ids (``a.b`` and ``a/b``) apart, and makes the id
    independent of run order. Ids never contain dots, slashes or ``..``.
    """
    if given_id:
        given_id = str(given_id)
        s = slug(given_id)
        if s == given_id and s:
            return s
        return f"{s or 'v'}-{short_hash(given_id)}"
    parsed = urlparse(uri)
    tail = unquote(parsed.path.rstrip("/").rsplit("/", 1)[-1]) if parsed.path else ""
    stem = tail.rsplit(".", 1)[0] if "." in tail else tail
    if parsed.query:  # e.g. watch?v=ID: the query holds the identity
        stem = f"{stem}_{parsed.query}"
    return f"{slug(stem, 40) or 'v'}-{short_hash(uri)}"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_url(location: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location))


def _rows(path: Path) -> Iterable[dict[str, Any]]:
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8-sig", newline="") as f:
        if suffix == ".csv":
            for row in csv.DictReader(f):
                yield {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}
        elif suffix in (".jsonl", ".ndjson"):
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{n}: expected a JSON object")
                yield obj
        else:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield {"uri": line}


def _location(row: dict[str, Any], where: str) -> str:
    for key in _LOCATION_KEYS:
        if row.get(key):
            location = str(row[key])
            bad = _CONTROL.search(location)
            if bad:  # a NUL would only surface later as a bare "embedded null byte" from os.stat
                raise ValueError(f"{where}: {key} holds a control character (U+{ord(bad.group()):04X}) in {location!r}")
            return location
    raise ValueError(f"{where}: no location (one of {', '.join(_LOCATION_KEYS)}) in {row!r}")


def read_sources(
    path: str | Path,
    expand_playlist: Callable[[str], list[dict[str, Any]]] | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> list[SourceItem]:
    """Parse ``path`` into source items, expanding playlists; duplicates (same id and URI) are dropped.

    ``expand_playlist(url)`` returns entries ``{"url", "id"?, "title"?}``; it defaults to yt-dlp flat
    extraction. Raises ``ValueError`` with the file and line for malformed rows and for two
    different locations claiming the same id. A playlist that cannot be expanded is passed to
    ``on_error(url, message)`` when given (the run goes on), else raised.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sources file not found: {path}")
    expand = expand_playlist or expand_playlist_with_ytdlp
    items: dict[str, SourceItem] = {}
    for n, row in enumerate(_rows(path), 1):
        where = f"{path}:{n}"
        location = _location(row, where)
        metadata = {k: v for k, v in row.items() if k not in (*_LOCATION_KEYS, "id", "expand") and v not in (None, "")}
        wants_expand = str(row.get("expand", "")).lower() in _TRUE
        if is_url(location) and not location.startswith("file://") and (wants_expand or _PLAYLIST_HINTS.search(location)):
            try:
                entries = expand(location)
            except Exception as e:  # network trouble, extractor changes: one bad playlist, not a failed run
                if on_error is None:
                    raise
                on_error(location, f"{type(e).__name__}: {str(e)[:300]}")
                continue
            for entry in entries:
                entry_uri = entry["url"]
                if not re.match(r"^https?://", entry_uri):
                    # a remote feed must not pull local files (file://) into the dataset
                    log.warning("%s: playlist entry %s skipped (only http(s) entries are followed)", where, entry_uri)
                    continue
                vid = make_video_id(entry_uri, _entry_id(entry))
                meta = dict(metadata)
                if entry.get("title"):
                    meta.setdefault("title", entry["title"])
                _add(items, SourceItem(video_id=vid, uri=entry_uri, kind="url", metadata=meta, origin=location), where)
            continue
        if is_url(location):
            uri, kind = location, "url"
        else:
            local = Path(location).expanduser()
            uri, kind = str(local if local.is_absolute() else (path.parent / local).resolve()), "file"
        vid = make_video_id(uri, row.get("id"))
        _add(items, SourceItem(video_id=vid, uri=uri, kind=kind, metadata=metadata), where)
    return sorted(items.values(), key=lambda s: s.video_id)


def _entry_id(entry: dict[str, Any]) -> str | None:
    """``<extractor>_<id>`` for a playlist entry (ids are unique per extractor, not across sites)."""
    if not entry.get("id"):
        return None
    prefix = slug(str(entry.get("ie_key") or ""))
    return f"{prefix}_{entry['id']}" if prefix else str(entry["id"])


def _add(items: dict[str, SourceItem], item: SourceItem, where: str) -> None:
    seen = items.get(item.video_id)
    if seen is None:
        items[item.video_id] = item
    elif seen.uri != item.uri:
        raise ValueError(f"{where}: id {item.video_id!r} is already used by {seen.uri!r}")
    else:
        log.warning("%s: duplicate source %s skipped", where, item.uri)


def expand_playlist_with_ytdlp(url: str) -> list[dict[str, Any]]:
    """Entries of a playlist/channel/feed URL via yt-dlp flat extraction (no media is downloaded)."""
    import yt_dlp
    from yt_dlp.utils import unsmuggle_url

    opts = {"extract_flat": "in_playlist", "quiet": True, "no_warnings": True, "skip_download": True}
    with yt_dlp.YoutubeDL(opts) as ydl:
        info = ydl.extract_info(url, download=False)
    if not info:
        return []
    if info.get("_type") not in ("playlist", "multi_video"):
        return [{"url": info.get("webpage_url") or url, "id": info.get("id"), "title": info.get("title")}]
    entries = []
    for e in info.get("entries") or []:
        if not e:
            continue
        entry_url = e.get("url") or e.get("webpage_url")
        if entry_url:
            # The generic extractor smuggles hints into the URL fragment; the record keeps the clean URL.
            entry_url, _ = unsmuggle_url(entry_url)
            entries.append({"url": entry_url, "id": e.get("id"), "title": e.get("title"), "ie_key": e.get("ie_key")})
    return entries
