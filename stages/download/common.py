"""What the download stage's parts share: its options, where it writes, how failures are named.

``DownloadOptions`` is the config section ``download``; ``MEDIA_BASENAME`` the file name the
fetchers write (``source.<ext>``, and yt-dlp's ``source.info.json``).
"""

from __future__ import annotations

import glob
import os

from pydantic import Field

from schemas.settings import Settings, runtime_field
from schemas.source import SourceProvenance

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
    allow_file_urls: bool = runtime_field(True, description="file:// sources are read (yt-dlp's enable_file_urls, for those sources only); an http(s) source never reaches a file URL, whatever this says")
    direct_media: bool = Field(True, description="http(s) URLs whose path ends in a media extension (.mp4, .mkv, .webm, ...) are fetched with one HTTP GET (resumed with a Range request), not through yt-dlp; a page served there (text/html) still goes to yt-dlp")
    deadline_s: float = runtime_field(3600.0, gt=0, description="wall-clock limit of one download attempt (reason deadline, not retried); each retry has its own")
    min_bytes_per_s: float = runtime_field(1024.0, ge=0, description="an attempt that receives fewer bytes than this per second over slow_window_s is aborted (reason too_slow, not retried); 0: off")
    slow_window_s: float = runtime_field(60.0, gt=0, description="the window of min_bytes_per_s, counted from the start of the attempt")
    max_redirects: int = runtime_field(5, ge=0, description="HTTP redirects followed per request (more: too_many_redirects)")
    allow_private_redirects: bool = runtime_field(False, description="let redirects and URLs found in what servers return reach private, loopback, link-local, multicast, reserved or unspecified addresses (the source URL's own host and port always may)")
    allow_ffmpeg_fetch: bool = runtime_field(False, description="let yt-dlp hand a network stream to ffmpeg/rtmpdump (live HLS/DASH, HLS with a key method its own downloader lacks, AES-128 HLS without pycryptodomex, rtmp): their requests escape the address, redirect and speed checks")


#: URL path endings fetched directly by ``download.direct_media``.
MEDIA_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".wmv", ".3gp")
CHUNK = 1 << 20


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
    ("redirect loop detected", "too_many_redirects"),
)


def classify_download_error(message: str) -> tuple[str, bool]:
    """Map a yt-dlp error message to ``(reason, retryable)``."""
    for needle, reason in _PERMANENT:
        if needle.lower() in message.lower():
            return reason, False
    return "network", True



#: Reasons of a refusal (not a failure): the partial and finished files of the attempt are removed.
REFUSED = ("file_url_refused", "unsafe_url", "private_address", "unsafe_container", "external_fetch_disabled", "unsafe_redirect")


def url_scheme(uri: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(uri).scheme.lower()


def drop_media(dest_dir: str) -> None:
    for p in glob.glob(os.path.join(glob.escape(dest_dir), f"{MEDIA_BASENAME}.*")):
        try:
            os.remove(p)
        except OSError:
            pass


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




def find_media(dest_dir: str) -> str | None:
    skip = (".json", ".part", ".ytdl", ".temp", ".jpg", ".webp", ".png", ".vtt", ".srt")
    files = sorted(p for p in glob.glob(os.path.join(dest_dir, f"{MEDIA_BASENAME}.*")) if not p.endswith(skip))
    return files[0] if files else None


def clean_message(message: str) -> str:
    return message.replace("\x1b[0;31mERROR:\x1b[0m ", "").replace("ERROR: ", "").strip()[:500]
