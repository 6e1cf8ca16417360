"""The direct fetcher: one HTTP GET of a media file's URL (``download.direct_media``), resumed with
a Range request, through ``HttpGuard``'s checked connections; a page served there goes to yt-dlp.
"""

from __future__ import annotations

import logging
import os

from schemas import DownloadResult, SourceItem
from schemas.source import SourceProvenance

from ..errors import StageError
from ..normalize import check_container
from .common import CHUNK, MEDIA_BASENAME, DownloadOptions, classify_download_error
from .guard import HttpGuard, content_range, trusted_origin
from .ytdlp import ytdlp_download

log = logging.getLogger(__name__)


class NotMedia(Exception):
    """The server answered with a page, not a media file: yt-dlp's extractors should look at it."""


class Restart(Exception):
    """The server answered a Range request with a range that does not continue the partial file."""



def http_download(item: SourceItem, dest_dir: str, options: DownloadOptions, archive_file: str | None,
                   deadline: float) -> DownloadResult:
    """One GET of a media file's URL into ``dest_dir/source.<ext>``; a ``.part`` left by an
    interrupted attempt is continued with a Range request (a 206 must continue it exactly, else the
    partial file is dropped and the file fetched from the start). Errors are ``StageError`` with the
    reasons yt-dlp's would get (a retry is the caller's)."""
    from urllib.parse import unquote, urlsplit

    path = unquote(urlsplit(item.uri).path)
    ext = os.path.splitext(path)[1].lower()
    final = os.path.join(dest_dir, f"{MEDIA_BASENAME}{ext}")
    part = final + ".part"
    guard = HttpGuard(trusted_origin(item), options, deadline)
    try:
        try:
            _http_get(item.uri, part, options, guard)
        except Restart as e:
            log.warning("%s: %s; the partial file is dropped and the download starts over", item.video_id, e)
            os.remove(part)
            _http_get(item.uri, part, options, guard)
    except NotMedia:
        guard.close()
        return ytdlp_download(item, dest_dir, options, archive_file, deadline)
    finally:
        guard.close()  # (twice after NotMedia: harmless)
    os.replace(part, final)
    try:
        check_container(final)
    except StageError:
        os.remove(final)
        raise
    name = os.path.splitext(os.path.basename(path))[0] or item.video_id
    return DownloadResult(
        video_id=item.video_id, source_uri=item.uri, media_path=final, size_bytes=os.path.getsize(final), backend="http",
        title=name, provenance=SourceProvenance(source_uri=item.uri, webpage_url=item.uri, extractor="http", original_id=name, title=name),
    )


def _http_get(uri: str, part: str, options: DownloadOptions, guard: HttpGuard) -> None:
    import http.client
    import urllib.error
    import urllib.request

    have = os.path.getsize(part) if os.path.exists(part) else 0
    limit = options.max_filesize_mb * 1024 * 1024 if options.max_filesize_mb else None
    request = urllib.request.Request(uri, headers={"User-Agent": "cnas-toolkit", **({"Range": f"bytes={have}-"} if have else {})})
    total = got = None
    try:
        with guard.opener.open(request, timeout=options.socket_timeout_s) as resp:
            if (resp.headers.get_content_type() or "").startswith("text/"):
                raise NotMedia()
            length = resp.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            start, total = 0, length
            if resp.status == 206:
                crange = content_range(resp.headers.get("Content-Range"))
                if crange is None or crange[0] != have:
                    if have:
                        raise Restart(f"asked for bytes {have}- and got Content-Range {resp.headers.get('Content-Range')!r}")
                    raise StageError("bad_range", f"an unasked-for partial answer (Content-Range {resp.headers.get('Content-Range')!r}) from {uri}")
                start = have
                total = crange[1] if crange[1] is not None else (have + length if length is not None else None)
            if limit and total and total > limit:
                raise StageError("too_large", f"File is larger than max-filesize ({total} bytes > {limit} bytes)")
            got = start
            with open(part, "ab" if start else "wb") as f:
                # read1: what has arrived (up to a chunk), so the watchdog sees a trickle for what it is
                while chunk := resp.read1(CHUNK):
                    got += len(chunk)
                    guard.progress += len(chunk)
                    if limit and got > limit:
                        f.close()
                        os.remove(part)
                        raise StageError("too_large", f"File is larger than max-filesize ({limit} bytes)")
                    f.write(chunk)
            guard.raise_if_tripped()  # the watchdog's shutdown looks like the end of the body
    except (NotMedia, Restart, StageError):
        raise
    except urllib.error.HTTPError as e:
        guard.raise_if_tripped()
        if e.code == 416 and have:  # the .part already holds the whole file (or is stale): start over
            os.remove(part)
            raise StageError("network", f"HTTP Error 416 resuming {uri}: the partial file was dropped") from None
        if 300 <= e.code < 400:
            raise StageError("too_many_redirects", f"HTTP Error {e.code}: more than download.max_redirects="
                                                   f"{options.max_redirects} redirects, or a redirect without a target ({uri})") from None
        reason, _ = classify_download_error(f"HTTP Error {e.code}")
        raise StageError(reason, f"HTTP Error {e.code}: {e.reason} ({uri})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # refused, reset, timed out, DNS
        guard.raise_if_tripped()
        raise StageError("network", f"{type(e).__name__}: {getattr(e, 'reason', e)} ({uri})") from None
    if total is not None and got != total:
        raise StageError("network", f"connection closed after {got} of {total} bytes ({uri}); the next attempt continues it")


