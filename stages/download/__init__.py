"""Download stage: make a source local with yt-dlp; a URL of a media file is fetched with one HTTP
GET (yt-dlp's extractors would only find the same file, at ~0.2 s a URL); local paths pass through
untouched.

Ray-free: ``download(item, dest_dir, options)`` works on one ``SourceItem``.

The parts: ``common`` (options, names of failures), ``guard`` (addresses, pace, the checked urllib
opener), ``direct`` (one GET), ``ytdlp`` (yt-dlp in a child process, the download archive).
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

from schemas import DownloadResult, SourceItem
from schemas.source import SourceProvenance

from ..errors import StageError
from .common import MEDIA_BASENAME, MEDIA_EXTENSIONS, REFUSED, DownloadOptions, classify_download_error, drop_media, provenance_from_info, url_scheme
from .direct import http_download
from .guard import is_public_address, trusted_origin
from .ytdlp import forget_archived, ytdlp_download

__all__ = ["MEDIA_BASENAME", "MEDIA_EXTENSIONS", "DownloadOptions", "classify_download_error", "download", "forget_archived",
           "is_direct_media", "is_public_address", "provenance_from_info", "trusted_origin"]

log = logging.getLogger(__name__)


def download(item: SourceItem, dest_dir: str, options: DownloadOptions = DownloadOptions(), archive_file: str | None = None) -> DownloadResult:
    """Make ``item`` available as a local media file.

    Local paths are checked and returned as they are (no copy). URLs (http, https, file, any site
    yt-dlp supports) are downloaded to ``dest_dir/source.<ext>`` with the format capped at
    ``options.max_height``; transient errors are retried with exponential backoff and jitter.
    ``archive_file`` is yt-dlp's download archive (None: none).

    What servers return is not trusted (docs/security.md): an attempt ends at ``deadline_s`` or
    when it gets slower than ``min_bytes_per_s``; redirects (and URLs found in pages and playlists)
    may not reach file URLs, other protocols or private addresses; a playlist saved as a media file
    is refused. Raises ``StageError`` with reason ``not_found``, ``unsupported_url``, ``network``,
    ``deadline``, ``too_slow``, ``private_address``, ``file_url_refused``, ``unsafe_container``, … .
    """
    if item.kind == "file":
        return _local(item)
    if url_scheme(item.uri) == "file" and not options.allow_file_urls:
        raise StageError("file_url_disabled", "file:// URLs are disabled (download.allow_file_urls=false)")
    os.makedirs(dest_dir, exist_ok=True)
    attempt = 0
    fetch = http_download if is_direct_media(item.uri, options) else ytdlp_download
    while True:
        deadline = time.monotonic() + options.deadline_s
        try:
            return fetch(item, dest_dir, options, archive_file, deadline)
        except StageError as e:
            if e.reason in REFUSED:  # what an untrusted server made us fetch is not kept
                drop_media(dest_dir)
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


