"""Download stage: make a source local with yt-dlp; a URL of a media file is fetched with one HTTP
GET (yt-dlp's extractors would only find the same file, at ~0.2 s a URL); local paths pass through
untouched.

Ray-free: ``download(item, dest_dir, options)`` works on one ``SourceItem``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import time
from pathlib import Path

from pydantic import Field

from schemas import DownloadResult, SourceItem
from schemas.source import SourceProvenance
from schemas.settings import Settings, runtime_field

from .errors import StageError

log = logging.getLogger(__name__)

MEDIA_BASENAME = "source"  # yt-dlp writes source.<ext> and source.info.json


class DownloadOptions(Settings):
    """Options of the download stage (config section ``download``)."""

    max_height: int = Field(1080, ge=144, description="yt-dlp format height cap")
    retries: int = runtime_field(3, ge=0, description="attempts after the first, with exponential backoff")
    backoff_s: float = runtime_field(2.0, ge=0, description="first backoff; doubles each retry")
    rate_limit: str | None = runtime_field(None, description="yt-dlp rate limit, e.g. '2M' (bytes/s)")
    cookies_file: str | None = runtime_field(None, description="Netscape cookies file for sites that ask for a sign-in")
    use_download_archive: bool = runtime_field(True, description="yt-dlp download archive in the work dir: a re-run skips finished URLs")
    socket_timeout_s: float = runtime_field(30.0, gt=0)
    max_filesize_mb: int | None = Field(4096, ge=1, description="refuse larger downloads")
    allow_file_urls: bool = runtime_field(True)
    direct_media: bool = Field(True, description="http(s) URLs whose path ends in a media extension (.mp4, .mkv, .webm, ...) are fetched with one HTTP GET (resumed with a Range request), not through yt-dlp; a page served there (text/html) still goes to yt-dlp")


#: URL path endings fetched directly by ``download.direct_media``.
MEDIA_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".wmv", ".3gp")
_CHUNK = 1 << 20


# Messages yt-dlp gives for failures that a retry will not fix.
_PERMANENT = (
    ("HTTP Error 404", "not_found"),
    ("HTTP Error 410", "not_found"),
    ("HTTP Error 403", "forbidden"),
    ("HTTP Error 401", "forbidden"),
    ("Unsupported URL", "unsupported_url"),
    ("No such file", "not_found"),
    ("does not pass filter", "rejected_by_filter"),
    ("File is larger than max-filesize", "too_large"),
    ("Private video", "forbidden"),
    ("Video unavailable", "not_found"),
    ("Sign in to confirm", "needs_cookies"),
)


def classify_download_error(message: str) -> tuple[str, bool]:
    """Map a yt-dlp error message to ``(reason, retryable)``."""
    for needle, reason in _PERMANENT:
        if needle.lower() in message.lower():
            return reason, False
    return "network", True


def download(item: SourceItem, dest_dir: str, options: DownloadOptions = DownloadOptions(), archive_file: str | None = None) -> DownloadResult:
    """Make ``item`` available as a local media file.

    Local paths are checked and returned as they are (no copy). URLs (http, https, file, any site
    yt-dlp supports) are downloaded to ``dest_dir/source.<ext>`` with the format capped at
    ``options.max_height``; transient errors are retried with exponential backoff and jitter.
    ``archive_file`` is yt-dlp's download archive (None: none).
    Raises ``StageError`` with reason ``not_found``, ``unsupported_url``, ``network``, … .
    """
    if item.kind == "file":
        return _local(item)
    if item.uri.startswith("file://") and not options.allow_file_urls:
        raise StageError("file_url_disabled", "file:// URLs are disabled (download.allow_file_urls=false)")
    os.makedirs(dest_dir, exist_ok=True)
    attempt = 0
    fetch = _http_download if is_direct_media(item.uri, options) else _ytdlp_download
    while True:
        try:
            return fetch(item, dest_dir, options, archive_file)
        except StageError as e:
            retryable = e.reason == "network"
            if not retryable or attempt >= options.retries:
                raise
            delay = options.backoff_s * (2**attempt) * (1 + 0.25 * random.random())
            log.warning("%s: %s; retry %d/%d in %.1f s", item.video_id, e.message, attempt + 1, options.retries, delay)
            time.sleep(delay)
            attempt += 1


def _local(item: SourceItem) -> DownloadResult:
    path = Path(item.uri)
    if not path.exists():
        raise StageError("not_found", f"no such file: {path}")
    if not path.is_file():
        raise StageError("not_a_file", f"not a regular file: {path}")
    return DownloadResult(
        video_id=item.video_id, source_uri=item.uri, media_path=str(path), size_bytes=path.stat().st_size, backend="local",
        provenance=SourceProvenance(source_uri=item.uri, title=path.stem),
    )


def is_direct_media(uri: str, options: DownloadOptions) -> bool:
    """Whether ``uri`` is fetched with a plain HTTP GET: an http(s) URL of a media file, and no
    option that only yt-dlp implements (rate limit, cookies)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    return (options.direct_media and parts.scheme in ("http", "https") and parts.path.lower().endswith(MEDIA_EXTENSIONS)
            and not options.rate_limit and not options.cookies_file)


class _NotMedia(Exception):
    """The server answered with a page, not a media file: yt-dlp's extractors should look at it."""


def _http_download(item: SourceItem, dest_dir: str, options: DownloadOptions, archive_file: str | None) -> DownloadResult:
    """One GET of a media file's URL into ``dest_dir/source.<ext>``; a ``.part`` left by an
    interrupted attempt is continued with a Range request. Errors are ``StageError`` with the
    reasons yt-dlp's would get (a retry is the caller's)."""
    import urllib.error
    import urllib.request
    from urllib.parse import unquote, urlsplit

    path = unquote(urlsplit(item.uri).path)
    ext = os.path.splitext(path)[1].lower()
    final = os.path.join(dest_dir, f"{MEDIA_BASENAME}{ext}")
    part = final + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    limit = options.max_filesize_mb * 1024 * 1024 if options.max_filesize_mb else None
    request = urllib.request.Request(item.uri, headers={"User-Agent": "cnas-toolkit", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        with urllib.request.urlopen(request, timeout=options.socket_timeout_s) as resp:
            if (resp.headers.get_content_type() or "").startswith("text/"):
                raise _NotMedia()
            resumed = have > 0 and resp.status == 206
            length = resp.headers.get("Content-Length")
            total = (int(length) + (have if resumed else 0)) if length and length.isdigit() else None
            if limit and total and total > limit:
                raise StageError("too_large", f"File is larger than max-filesize ({total} bytes > {limit} bytes)")
            got = have if resumed else 0
            with open(part, "ab" if resumed else "wb") as f:
                while chunk := resp.read(_CHUNK):
                    got += len(chunk)
                    if limit and got > limit:
                        f.close()
                        os.remove(part)
                        raise StageError("too_large", f"File is larger than max-filesize ({limit} bytes)")
                    f.write(chunk)
    except _NotMedia:
        return _ytdlp_download(item, dest_dir, options, archive_file)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part already holds the whole file (or is stale): start over
            os.remove(part)
            raise StageError("network", f"HTTP Error 416 resuming {item.uri}: the partial file was dropped") from None
        reason, _ = classify_download_error(f"HTTP Error {e.code}")
        raise StageError(reason, f"HTTP Error {e.code}: {e.reason} ({item.uri})") from None
    except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out, DNS
        raise StageError("network", f"{type(e).__name__}: {getattr(e, 'reason', e)} ({item.uri})") from None
    if total is not None and got != total:
        raise StageError("network", f"connection closed after {got} of {total} bytes ({item.uri}); the next attempt continues it")
    os.replace(part, final)
    name = os.path.splitext(os.path.basename(path))[0] or item.video_id
    return DownloadResult(
        video_id=item.video_id, source_uri=item.uri, media_path=final, size_bytes=os.path.getsize(final), backend="http",
        title=name, provenance=SourceProvenance(source_uri=item.uri, webpage_url=item.uri, extractor="http", original_id=name, title=name),
    )


def _ytdlp_download(item: SourceItem, dest_dir: str, options: DownloadOptions, archive_file: str | None) -> DownloadResult:
    import yt_dlp

    h = options.max_height
    ydl_opts = {
        # Best video+audio under the height cap, else the best single file under it, else anything.
        "format": f"bv*[height<={h}]+ba/b[height<={h}]/bv*+ba/b",
        "outtmpl": {"default": os.path.join(dest_dir, f"{MEDIA_BASENAME}.%(ext)s")},
        "paths": {"home": dest_dir, "temp": dest_dir},
        "writeinfojson": True,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "noplaylist": True,
        "retries": options.retries,
        "fragment_retries": options.retries,
        "retry_sleep_functions": {"http": lambda n: min(30.0, options.backoff_s * 2**n)},
        "socket_timeout": options.socket_timeout_s,
        "enable_file_urls": options.allow_file_urls,
        "restrictfilenames": True,
        "overwrites": False,
        "continuedl": True,
    }
    if options.rate_limit:
        from yt_dlp.utils import parse_bytes

        ydl_opts["ratelimit"] = parse_bytes(options.rate_limit)
    if options.cookies_file:
        ydl_opts["cookiefile"] = options.cookies_file
    if archive_file:
        ydl_opts["download_archive"] = archive_file
    if options.max_filesize_mb:
        ydl_opts["max_filesize"] = options.max_filesize_mb * 1024 * 1024
    try:
        with yt_dlp.YoutubeDL(ydl_opts) as ydl:
            info = ydl.extract_info(item.uri, download=True)
    except yt_dlp.utils.DownloadError as e:
        reason, _ = classify_download_error(str(e))
        raise StageError(reason, _clean(str(e))) from None
    except Exception as e:  # yt-dlp extractors raise many types; record, never crash the run
        reason, _ = classify_download_error(str(e))
        raise StageError(reason, f"{type(e).__name__}: {_clean(str(e))}") from None
    media = _find_media(dest_dir)
    if media is None:
        if info is None and archive_file:
            raise StageError(
                "archived_without_file",
                f"{item.uri} is in the download archive {archive_file} but its file is gone; remove that line to re-download",
            )
        raise StageError("no_media", f"yt-dlp finished but wrote no media file for {item.uri}")
    info_path = os.path.join(dest_dir, f"{MEDIA_BASENAME}.info.json")
    info: dict = {}
    if os.path.exists(info_path):
        try:
            with open(info_path, encoding="utf-8") as f:
                info = json.load(f) or {}
        except (OSError, ValueError):
            pass
    return DownloadResult(
        video_id=item.video_id,
        source_uri=item.uri,
        media_path=media,
        info_path=info_path if os.path.exists(info_path) else None,
        size_bytes=os.path.getsize(media),
        backend="yt-dlp",
        title=info.get("title"),
        provenance=provenance_from_info(item.uri, info),
    )


def provenance_from_info(source_uri: str, info: dict) -> SourceProvenance:
    """The provenance fields of a yt-dlp info dict (absent fields stay None)."""
    def text(*keys: str) -> str | None:
        for k in keys:
            v = info.get(k)
            if v not in (None, ""):
                return str(v)
        return None

    return SourceProvenance(
        source_uri=source_uri, webpage_url=text("webpage_url", "original_url"), extractor=text("extractor_key", "extractor"),
        original_id=text("id"), title=text("title"), channel=text("channel"), uploader=text("uploader", "uploader_id"),
        upload_date=text("upload_date"), platform_licence=text("license"),
    )


def forget_archived(archive_file: str, info_path: str) -> bool:
    """Remove the download-archive line of the video described by ``info_path`` (yt-dlp's info.json),
    so that a download the pipeline decided to redo (other options, another run) is not skipped by
    yt-dlp. Returns whether a line was removed. The archive is locked while it is rewritten (yt-dlp
    locks it the same way when it appends)."""
    import fcntl

    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
        line = f"{str(info['extractor_key']).lower()} {info['id']}"
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not os.path.exists(archive_file):
        return False
    with open(archive_file, "r+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        lines = f.read().splitlines()
        kept = [ln for ln in lines if ln.strip() != line]
        if len(kept) != len(lines):
            f.seek(0)
            f.write("".join(ln + "\n" for ln in kept))
            f.truncate()
        fcntl.flock(f, fcntl.LOCK_UN)
    return len(kept) != len(lines)


def _find_media(dest_dir: str) -> str | None:
    skip = (".json", ".part", ".ytdl", ".temp", ".jpg", ".webp", ".png", ".vtt", ".srt")
    files = sorted(p for p in glob.glob(os.path.join(dest_dir, f"{MEDIA_BASENAME}.*")) if not p.endswith(skip))
    return files[0] if files else None


def _clean(message: str) -> str:
    return message.replace("\x1b[0;31mERROR:\x1b[0m ", "").replace("ERROR: ", "").strip()[:500]
