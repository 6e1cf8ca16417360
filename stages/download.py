"""Download stage: make a source local with yt-dlp; local paths pass through untouched.

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
    while True:
        try:
            return _ytdlp_download(item, dest_dir, options, archive_file)
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
