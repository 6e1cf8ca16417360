"""What a server may make a download do: which addresses it may connect to, how slow it may be,
how long it may take, and a urllib opener that holds a direct GET to all of it (docs/security.md).
"""

from __future__ import annotations

import time

from schemas import SourceItem

from ..errors import StageError
from .common import DownloadOptions, url_scheme

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


class AddressPolicy:
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
                    self.trusted.add((parts.hostname.lower(), parts.port or DEFAULT_PORTS.get(parts.scheme, 80)))
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
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 80)
        try:
            ips = [info[4][0] for info in socket.getaddrinfo(parts.hostname, port, 0, socket.SOCK_STREAM)]
        except OSError:
            return  # it will not resolve for the connection either
        self.check(parts.hostname or "", port, ips, what)


DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21}


class Pace:
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


class HttpGuard:
    """The direct GET's connections: every one goes to an address the ``AddressPolicy`` allows (the
    address checked is the one connected to); redirects are capped and http(s) only; a watchdog thread
    ends the attempt at the deadline or when it is too slow by shutting the sockets down (a read
    blocked on a trickling server returns)."""

    def __init__(self, uri: str, options: DownloadOptions, deadline: float):
        import http.client
        import threading
        import urllib.request

        self.policy = AddressPolicy(uri, options)
        self.pace = Pace(options, deadline)
        self.progress = 0
        self.tripped: tuple[str, str] | None = None
        self._sockets: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        guard = self

        class Redirects(urllib.request.HTTPRedirectHandler):
            max_redirections = options.max_redirects

            def redirect_request(self, req, fp, code, msg, headers, newurl):
                if url_scheme(newurl) not in ("http", "https"):
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


def content_range(value: str | None) -> tuple[int, int | None] | None:
    """(first byte, total or None) of a ``Content-Range: bytes a-b/total`` header; None if absent or malformed."""
    import re

    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m or int(m.group(2)) < int(m.group(1)):
        return None
    return int(m.group(1)), (int(m.group(3)) if m.group(3) != "*" else None)


