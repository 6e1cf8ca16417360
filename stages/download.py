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
    ("redirect loop detected", "too_many_redirects"),
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

    What servers return is not trusted (docs/security.md): an attempt ends at ``deadline_s`` or
    when it gets slower than ``min_bytes_per_s``; redirects (and URLs found in pages and playlists)
    may not reach file URLs, other protocols or private addresses; a playlist saved as a media file
    is refused. Raises ``StageError`` with reason ``not_found``, ``unsupported_url``, ``network``,
    ``deadline``, ``too_slow``, ``private_address``, ``file_url_refused``, ``unsafe_container``, … .
    """
    if item.kind == "file":
        return _local(item)
    if _scheme(item.uri) == "file" and not options.allow_file_urls:
        raise StageError("file_url_disabled", "file:// URLs are disabled (download.allow_file_urls=false)")
    os.makedirs(dest_dir, exist_ok=True)
    attempt = 0
    fetch = _http_download if is_direct_media(item.uri, options) else _ytdlp_download
    while True:
        deadline = time.monotonic() + options.deadline_s
        try:
            return fetch(item, dest_dir, options, archive_file, deadline)
        except StageError as e:
            if e.reason in _REFUSED:  # what an untrusted server made us fetch is not kept
                _drop_media(dest_dir)
            retryable = e.reason == "network"
            if not retryable or attempt >= options.retries:
                raise
            delay = options.backoff_s * (2**attempt) * (1 + 0.25 * random.random())
            log.warning("%s: %s; retry %d/%d in %.1f s", item.video_id, e.message, attempt + 1, options.retries, delay)
            time.sleep(delay)
            attempt += 1


#: Reasons of a refusal (not a failure): the partial and finished files of the attempt are removed.
_REFUSED = ("file_url_refused", "unsafe_url", "private_address", "unsafe_container", "external_fetch_disabled", "unsafe_redirect")


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


def _scheme(uri: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(uri).scheme.lower()


def _drop_media(dest_dir: str) -> None:
    for p in glob.glob(os.path.join(glob.escape(dest_dir), f"{MEDIA_BASENAME}.*")):
        try:
            os.remove(p)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# what a server may make us do: addresses, pace


def is_public_address(ip: str) -> bool:
    """Whether ``ip`` is a global unicast address: not private, loopback, link-local, multicast,
    reserved, unspecified or shared (CGNAT); IPv6 forms that embed an IPv4 address are judged by it."""
    import ipaddress

    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if addr.version == 6:
        embedded = [addr.ipv4_mapped, addr.sixtofour, addr.teredo[1] if addr.teredo else None]
        if any(e is not None and not is_public_address(str(e)) for e in embedded):
            return False
    return addr.is_global and not (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
                                   or addr.is_reserved or addr.is_unspecified)


def trusted_origin(item: SourceItem) -> str:
    """The URL whose host the engineer chose: the source's own, or for an entry a playlist or feed
    expanded to (``origin``), the feed's: an entry may not point at an internal address the feed's
    host is not."""
    return item.origin or item.uri


class _AddressPolicy:
    """Which hosts a download may connect to: any public address; the source URL's own host and port
    (and configured proxies), which the engineer chose; anything when ``allow_private_redirects``."""

    def __init__(self, uri: str, options: DownloadOptions):
        import urllib.request
        from urllib.parse import urlsplit

        self.allow_private = options.allow_private_redirects
        self.trusted: set[tuple[str, int]] = set()
        for url in [uri, *urllib.request.getproxies().values()]:
            try:
                parts = urlsplit(url if "://" in url else f"http://{url}")
                if parts.hostname:
                    self.trusted.add((parts.hostname.lower(), parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)))
            except ValueError:
                continue

    def trusted_ips(self) -> set[tuple[str, int]]:
        """The trusted endpoints as resolved addresses (for checks that only see the address)."""
        import socket

        out = set()
        for host, port in self.trusted:
            try:
                out |= {(info[4][0], port) for info in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)}
            except OSError:
                pass
        return out

    def check(self, host: str, port: int, ips: list[str], what: str) -> None:
        """Raise ``StageError('private_address')`` when ``host`` is not trusted and any of its ``ips`` is not public."""
        if self.allow_private or ((host or "").lower(), port) in self.trusted:
            return
        for ip in ips:
            if not is_public_address(ip):
                raise StageError("private_address", f"refused {what} {host}:{port} ({ip}): a private, loopback, link-local "
                                                    "or reserved address (download.allow_private_redirects=true allows it)")

    def check_url(self, url: str, what: str) -> None:
        """Resolve the host of ``url`` and ``check`` all its addresses."""
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
        try:
            ips = [info[4][0] for info in socket.getaddrinfo(parts.hostname, port, 0, socket.SOCK_STREAM)]
        except OSError:
            return  # it will not resolve for the connection either
        self.check(parts.hostname or "", port, ips, what)


_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21}


class _Pace:
    """The deadline and the minimum speed of one attempt: ``trip(progress)`` is the reason it must end, or None.
    ``progress`` is a byte count that only grows (bytes received)."""

    def __init__(self, options: DownloadOptions, deadline: float):
        self.deadline, self.rate, self.window = deadline, options.min_bytes_per_s, options.slow_window_s
        self.start = time.monotonic()
        self.samples: list[tuple[float, int]] = [(self.start, 0)]

    def trip(self, progress: int) -> tuple[str, str] | None:
        now = time.monotonic()
        if now >= self.deadline:
            return "deadline", f"the download ran past download.deadline_s ({now - self.start:.0f} s)"
        self.samples.append((now, progress))
        if self.rate and now - self.start >= self.window:
            # the newest sample at least a window old: bytes since then must reach rate * window
            old = [s for s in self.samples if s[0] <= now - self.window]
            t0, p0 = old[-1]
            self.samples = self.samples[len(old) - 1:]
            if progress - p0 < self.rate * self.window:
                return "too_slow", (f"{progress - p0} bytes in the last {now - t0:.0f} s, below download.min_bytes_per_s="
                                    f"{self.rate:g} over slow_window_s={self.window:g}")
        return None


# ---------------------------------------------------------------------------------------------
# direct HTTP


class _NotMedia(Exception):
    """The server answered with a page, not a media file: yt-dlp's extractors should look at it."""


class _Restart(Exception):
    """The server answered a Range request with a range that does not continue the partial file."""


class _Guard:
    """The direct GET's connections: every one goes to an address the ``_AddressPolicy`` allows (the
    address checked is the one connected to); redirects are capped and http(s) only; a watchdog thread
    ends the attempt at the deadline or when it is too slow by shutting the sockets down (a read
    blocked on a trickling server returns)."""

    def __init__(self, uri: str, options: DownloadOptions, deadline: float):
        import http.client
        import threading
        import urllib.request

        self.policy = _AddressPolicy(uri, options)
        self.pace = _Pace(options, deadline)
        self.progress = 0
        self.tripped: tuple[str, str] | None = None
        self._sockets: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        guard = self

        class Redirects(urllib.request.HTTPRedirectHandler):
            max_redirections = options.max_redirects

            def redirect_request(self, req, fp, code, msg, headers, newurl):
                if _scheme(newurl) not in ("http", "https"):
                    raise StageError("unsafe_redirect", f"refused a redirect to {newurl[:200]}: only http(s) redirects are followed")
                guard.policy.check_url(newurl, "a redirect to")
                return super().redirect_request(req, fp, code, msg, headers, newurl)

        def connection(base):
            class Connection(base):
                def __init__(self, *args, **kwargs):
                    super().__init__(*args, **kwargs)
                    self._create_connection = guard._connect

            return Connection

        class HTTP(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(connection(http.client.HTTPConnection), req)

        class HTTPS(urllib.request.HTTPSHandler):
            def https_open(self, req):
                kwargs = {"context": self._context}
                if hasattr(self, "_check_hostname"):  # Python < 3.12
                    kwargs["check_hostname"] = self._check_hostname
                return self.do_open(connection(http.client.HTTPSConnection), req, **kwargs)

        self.opener = urllib.request.build_opener(Redirects, HTTP, HTTPS)
        self._thread = threading.Thread(target=self._watch, daemon=True, name="download-watchdog")
        self._thread.start()

    def _connect(self, address, timeout=None, source_address=None):
        import socket

        host, port = address
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        self.policy.check(host, port, [info[4][0] for info in infos], "a connection to")
        error: OSError | None = None
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not None and timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                with self._lock:
                    self._sockets.append(sock)
                    if self.tripped:
                        raise OSError(f"download stopped: {self.tripped[1]}")
                sock.connect(addr)  # the address checked above, not a second lookup
                return sock
            except OSError as e:
                error = e
                sock.close()
        raise error or OSError(f"no address for {host}")

    def _watch(self) -> None:
        import socket

        while not self._stop.wait(0.25):
            trip = self.pace.trip(self.progress)
            if trip:
                with self._lock:
                    self.tripped = trip
                    for sock in self._sockets:
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                return

    def raise_if_tripped(self) -> None:
        if self.tripped:
            raise StageError(*self.tripped)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """(first byte, total or None) of a ``Content-Range: bytes a-b/total`` header; None if absent or malformed."""
    import re

    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m or int(m.group(2)) < int(m.group(1)):
        return None
    return int(m.group(1)), (int(m.group(3)) if m.group(3) != "*" else None)


def _http_download(item: SourceItem, dest_dir: str, options: DownloadOptions, archive_file: str | None,
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
    guard = _Guard(trusted_origin(item), options, deadline)
    try:
        try:
            _http_get(item.uri, part, options, guard)
        except _Restart as e:
            log.warning("%s: %s; the partial file is dropped and the download starts over", item.video_id, e)
            os.remove(part)
            _http_get(item.uri, part, options, guard)
    except _NotMedia:
        guard.close()
        return _ytdlp_download(item, dest_dir, options, archive_file, deadline)
    finally:
        guard.close()  # (twice after _NotMedia: harmless)
    os.replace(part, final)
    try:
        _check_container(final)
    except StageError:
        os.remove(final)
        raise
    name = os.path.splitext(os.path.basename(path))[0] or item.video_id
    return DownloadResult(
        video_id=item.video_id, source_uri=item.uri, media_path=final, size_bytes=os.path.getsize(final), backend="http",
        title=name, provenance=SourceProvenance(source_uri=item.uri, webpage_url=item.uri, extractor="http", original_id=name, title=name),
    )


def _http_get(uri: str, part: str, options: DownloadOptions, guard: _Guard) -> None:
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
                raise _NotMedia()
            length = resp.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            start, total = 0, length
            if resp.status == 206:
                crange = _content_range(resp.headers.get("Content-Range"))
                if crange is None or crange[0] != have:
                    if have:
                        raise _Restart(f"asked for bytes {have}- and got Content-Range {resp.headers.get('Content-Range')!r}")
                    raise StageError("bad_range", f"an unasked-for partial answer (Content-Range {resp.headers.get('Content-Range')!r}) from {uri}")
                start = have
                total = crange[1] if crange[1] is not None else (have + length if length is not None else None)
            if limit and total and total > limit:
                raise StageError("too_large", f"File is larger than max-filesize ({total} bytes > {limit} bytes)")
            got = start
            with open(part, "ab" if start else "wb") as f:
                # read1: what has arrived (up to a chunk), so the watchdog sees a trickle for what it is
                while chunk := resp.read1(_CHUNK):
                    got += len(chunk)
                    guard.progress += len(chunk)
                    if limit and got > limit:
                        f.close()
                        os.remove(part)
                        raise StageError("too_large", f"File is larger than max-filesize ({limit} bytes)")
                    f.write(chunk)
            guard.raise_if_tripped()  # the watchdog's shutdown looks like the end of the body
    except (_NotMedia, _Restart, StageError):
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


def _check_container(path: str) -> None:
    """A downloaded file must be a media container, not a playlist (``stages.normalize.check_container``)."""
    from .normalize import check_container

    check_container(path)


# ---------------------------------------------------------------------------------------------
# yt-dlp, in a child process


#: Exit status of a yt-dlp child that ended itself (refusal, deadline, too slow) after writing its result.
_CHILD_STOPPED = 3


def _ytdlp_download(item: SourceItem, dest_dir: str, options: DownloadOptions, archive_file: str | None,
                    deadline: float) -> DownloadResult:
    """yt-dlp in a child process of its own session: the deadline holds whatever yt-dlp is blocked
    on (the child and anything it started are killed), and the checks it installs (addresses,
    URL schemes, containers, pace; ``_ytdlp_child``) touch no state of this process."""
    import signal
    import subprocess
    import sys

    job = {"uri": item.uri, "trusted_uri": trusted_origin(item), "dest_dir": dest_dir, "options": options.model_dump(mode="json"), "archive_file": archive_file,
           "seconds": max(0.0, deadline - time.monotonic())}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-c", "from stages.download import _ytdlp_child; _ytdlp_child()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(json.dumps(job).encode(), timeout=job["seconds"] + 5.0)
    except subprocess.TimeoutExpired:  # the child's own watchdog did not end it (stuck without the GIL?)
        os.killpg(proc.pid, signal.SIGKILL)  # not reaped yet: the group id is still the child's
        proc.communicate()
        raise StageError("deadline", f"the download ran past download.deadline_s ({options.deadline_s:g} s)") from None
    try:
        result = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise StageError("downloader_crashed", f"the yt-dlp process exited {proc.returncode} without a result: "
                                               f"{_clean(err.decode('utf-8', 'replace').strip()[-500:]) or 'no message'}") from None
    if "error" in result:
        raise StageError(*result["error"])
    media = _find_media(dest_dir)
    if media is None:
        if result.get("info_none") and archive_file:
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


def _ytdlp_options(options: DownloadOptions, dest_dir: str, archive_file: str | None, file_source: bool) -> dict:
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
        # file:// only for a file:// source: a page or playlist from a server never reaches a local file
        "enable_file_urls": file_source and options.allow_file_urls,
        # m3u8 formats go to yt-dlp's own HLS downloader (whose requests are checked), not to ffmpeg
        "hls_prefer_native": True,
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
    return ydl_opts


def _ytdlp_child() -> None:
    """The child process of ``_ytdlp_download``: reads the job (JSON) from stdin, writes one JSON line
    (``{"ok": …}`` or ``{"error": [reason, message]}``) to stdout; yt-dlp's own output goes to stderr.

    For an http(s) source it installs, in this process only: every TCP connection must go to an
    address the ``_AddressPolicy`` allows (checked on the address connected to: redirects, URLs found
    in pages and playlists, any request of any extractor); every URL yt-dlp opens must be http(s) or
    data; redirects are capped; yt-dlp may not hand a stream to ffmpeg/rtmpdump (unless
    ``allow_ffmpeg_fetch``). For every source: each downloaded file must pass the container check
    before yt-dlp's post-processors (merge, fixups: ffmpeg) open it; a watchdog thread ends the
    process at the deadline or when it is too slow. A refusal ends the process at once (its whole
    process group, so an ffmpeg it started goes too) after writing the result."""
    import signal
    import socket
    import ssl
    import sys
    import threading

    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed by yt-dlp goes to stderr; stdout is the result line
    job = json.load(sys.stdin)
    options = DownloadOptions.model_validate(job["options"])
    uri, dest_dir = job["uri"], job["dest_dir"]
    file_source = _scheme(uri) == "file"
    lock = threading.Lock()

    def finish(result: dict, stop: bool) -> None:
        with lock:  # one result, even when the watchdog and the main thread both end it
            result_out.write(json.dumps(result) + "\n")
            result_out.flush()
            if stop:
                os.killpg(os.getpgid(0), signal.SIGKILL)  # this process and whatever it started (own session)
            os._exit(0)

    def refuse(reason: str, message: str) -> None:
        if reason in _REFUSED:
            _drop_media(dest_dir)
        finish({"error": [reason, message]}, stop=True)

    received = [0]  # bytes read from sockets (any thread; a lower bound is all the pace needs)

    def counting(method):
        def read(self, *args, **kwargs):
            n = method(self, *args, **kwargs)
            received[0] += n if isinstance(n, int) else len(n)
            return n
        return read

    socket.socket.recv_into = counting(socket.socket.recv_into)
    socket.socket.recv = counting(socket.socket.recv)
    ssl.SSLSocket.recv_into = counting(ssl.SSLSocket.recv_into)
    ssl.SSLSocket.recv = counting(ssl.SSLSocket.recv)

    def on_disk() -> int:
        try:
            return sum(e.stat().st_size for e in os.scandir(dest_dir) if e.is_file())
        except OSError:
            return 0

    pace = _Pace(options, time.monotonic() + job["seconds"])
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.25)
            if os.getppid() != parent:  # the worker that started this download is gone
                refuse("network", "the process that started the download ended")
            trip = pace.trip(received[0] + on_disk())
            if trip:
                refuse(*trip)

    threading.Thread(target=watch, daemon=True, name="download-watchdog").start()

    import yt_dlp
    from yt_dlp.utils import sanitize_url

    if not file_source:
        policy = _AddressPolicy(job.get("trusted_uri", uri), options)
        trusted = policy.trusted_ips()
        plain_connect, plain_connect_ex = socket.socket.connect, socket.socket.connect_ex

        def check(sock, address) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
                ip, port = address[0], address[1]
                if (ip, port) not in trusted:
                    try:
                        policy.check(ip, port, [ip], "a connection to")
                    except StageError as e:
                        refuse(e.reason, e.message)

        def connect(sock, address):
            check(sock, address)
            return plain_connect(sock, address)

        def connect_ex(sock, address):
            check(sock, address)
            return plain_connect_ex(sock, address)

        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
        # at most max_redirects redirects per request, in both of yt-dlp's HTTP handlers
        import urllib.request

        urllib.request.HTTPRedirectHandler.max_redirections = options.max_redirects
        try:
            import requests.sessions

            requests.sessions.DEFAULT_REDIRECT_LIMIT = options.max_redirects
        except ImportError:
            pass
        from yt_dlp.downloader.external import ExternalFD
        from yt_dlp.downloader.rtmp import RtmpFD

        def external(plain):
            def real_download(self, filename, info_dict):
                urls = [f.get("url") or "" for f in (info_dict.get("requested_formats") or [info_dict])]
                if not options.allow_ffmpeg_fetch:
                    refuse("external_fetch_disabled", f"yt-dlp would hand the stream to {self.get_basename()}, whose requests "
                                                      "are not checked (download.allow_ffmpeg_fetch=true allows it)")
                if any(_scheme(u) not in ("http", "https") for u in urls):
                    refuse("unsafe_url", f"refused to let {self.get_basename()} open a non-http(s) URL from the server")
                return plain(self, filename, info_dict)
            return real_download

        ExternalFD.real_download = external(ExternalFD.real_download)
        RtmpFD.real_download = external(RtmpFD.real_download)

    class YDL(yt_dlp.YoutubeDL):
        def urlopen(self, req):
            if not file_source:
                url = req if isinstance(req, str) else (req.get_full_url() if hasattr(req, "get_full_url") else req.url)
                scheme = _scheme(sanitize_url(url))
                if scheme not in ("http", "https", "data"):
                    refuse("file_url_refused" if scheme == "file" else "unsafe_url",
                           f"refused a {scheme or 'scheme-less'} URL from the server: {url[:200]}")
            return super().urlopen(req)

        def post_process(self, filename, info, *args, **kwargs):
            # before the merger and the fixups run ffmpeg/ffprobe on what was downloaded
            for path in {*(info.get("__files_to_merge") or []), filename}:
                if path and os.path.isfile(path):
                    try:
                        _check_container(path)
                    except StageError as e:
                        refuse(e.reason, e.message)
            return super().post_process(filename, info, *args, **kwargs)

    try:
        with YDL(_ytdlp_options(options, dest_dir, job["archive_file"], file_source)) as ydl:
            info = ydl.extract_info(uri, download=True)
    except yt_dlp.utils.DownloadError as e:
        reason, _ = classify_download_error(str(e))
        finish({"error": [reason, _clean(str(e))]}, stop=False)
    except Exception as e:  # yt-dlp extractors raise many types; record, never crash the run
        reason, _ = classify_download_error(str(e))
        finish({"error": [reason, f"{type(e).__name__}: {_clean(str(e))}"]}, stop=False)
    finish({"ok": True, "info_none": info is None}, stop=False)


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
