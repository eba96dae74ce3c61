"""Checksummed downloads of the real datasets' files (standard library only).

A file is streamed into a temporary file beside its destination and renamed into place only
after every check passed, so a failed or interrupted download never leaves a file that a later
step could mistake for the real one. Per URL: connection errors, HTTP 5xx (and 408/429) and
truncated bodies are retried with exponential back-off, resuming with a Range request where the
server allows it (the raw Replogle file is about 60 GB); any other 4xx, an HTML/XML page in place
of the file, a body that fails the format's magic bytes, or a wrong checksum moves on to the next
mirror at once. The sha256 comes from the caller or from ``data/checksums.tsv`` (columns file,
sha256, size, url, note); when none is known, the first good download whose size the server
stated (Content-Length or Content-Range) records it there, and the sha256 and size are logged
so that a user can pin them. A download cannot hang: besides the socket timeout there is an
overall deadline and a minimum throughput over a sliding window (a server dripping a byte
every few seconds is dropped). Temporary ``.<name>.*.part`` files are locked while written;
unlocked ones left by a killed run are removed at the next start, and SIGTERM removes the
current one. An existing file that no checksum can verify is kept until its replacement
passed every check.

Over 400 lines because the transfer, its fault handling (retries, resume, rate and deadline)
and the checksum manifest belong together and are read as one piece.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import glob
import hashlib
import http.client
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from samsbench import io as sbio
from samsbench.io import remove_stale, sha256_file

log = logging.getLogger(__name__)

CHECKSUM_COLUMNS = ("file", "sha256", "size", "url", "note")
DEFAULT_CHECKSUMS = "data/checksums.tsv"
USER_AGENT = "samsbench-download/0.1 (+https://github.com/insitro/sams-vae reproduction)"

# The remote inputs of the paper's experiments; config.yaml's `downloads:` overrides these.
DOWNLOADS: dict[str, dict] = {
    "replogle.h5ad": {
        "urls": ["https://insitro-research-2023-sams-vae.s3.amazonaws.com/data/replogle.h5ad"],
        "sha256": None,
        "note": "authors' prepared Replogle GWPS filtered, 118641 cells x 1187 genes (~550 MB)",
    },
    "K562_gwps_raw_singlecell_01.h5ad": {
        "urls": ["https://plus.figshare.com/ndownloader/files/35775507"],
        "sha256": None,
        "note": "Replogle 2022 raw genome-wide K562 screen, dense float32 X (~60 GB)",
    },
    "norman_scpert.h5ad": {
        "urls": ["https://ndownloader.figshare.com/files/34027562"],
        "sha256": None,
        "note": "Norman 2019 sc-pert processed (figshare 34027562, ~1.7 GB)",
    },
    "norman.h5ad": {
        "urls": ["https://insitro-research-2023-sams-vae.s3.amazonaws.com/data/norman.h5ad"],
        "sha256": None,
        "note": "authors' copy of the Norman 2019 sc-pert processed file (~1.6 GB)",
    },
}

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# Expected content by destination extension; anything else is only checked for HTML/XML.
_KIND_BY_SUFFIX = {
    ".h5ad": "hdf5",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".gmt": "text",
    ".txt": "text",
    ".tsv": "text",
    ".csv": "text",
    ".json": "text",
    ".gz": "gzip",
    ".zip": "zip",
}
_MAGIC = {"hdf5": HDF5_MAGIC, "gzip": b"\x1f\x8b", "zip": b"PK\x03\x04"}
_MARKUP_STARTS = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<error", b"<!--")
_SNIFF_BYTES = 512
_PROGRESS_SECONDS = 30.0
# Limits against a download that never ends (config.yaml `download_limits`, CLI flags).
DEFAULT_DEADLINE = 24 * 3600.0  # seconds for one file, every URL and retry included
DEFAULT_MIN_RATE = 1024.0  # bytes per second, averaged over the window below
DEFAULT_RATE_WINDOW = 120.0  # seconds


class DownloadError(RuntimeError):
    """A file could not be downloaded; the message names each URL tried and its problem."""


class _Transient(Exception):
    """A failure worth retrying on the same URL (network, 5xx, truncated body)."""


class _UrlFailed(Exception):
    """This URL will not give the file; try the next mirror."""


class DownloadInterrupted(DownloadError):
    """SIGTERM arrived during a download (its temporary file was removed)."""


def _raise_interrupted(signum, frame):
    raise DownloadInterrupted(f"interrupted by signal {signum}; the partial file was removed")


def file_kind(path: str | os.PathLike) -> str:
    return _KIND_BY_SUFFIX.get(Path(path).suffix.lower(), "any")


def resolve(name: str, configured: dict | None = None) -> dict:
    """URLs and sha256 of a named remote file: config.yaml's entry, else the built-in one."""
    configured = configured or {}
    entry = configured.get(name) or DOWNLOADS.get(name)
    if entry is None:
        known = sorted(set(configured) | set(DOWNLOADS))
        raise DownloadError(
            f"no download is configured for {name!r}; add it under `downloads:` in "
            f"config.yaml (known: {', '.join(known)})"
        )
    urls = entry.get("urls") or []
    if isinstance(urls, str):
        urls = [urls]
    return {"urls": list(urls), "sha256": entry.get("sha256") or None}


# ----------------------------------------------------------------------------- checksums


def read_checksums(tsv: str | os.PathLike | None) -> dict[str, dict]:
    """Rows of the checksums manifest keyed by file name ({} when there is none)."""
    if tsv is None or not os.path.exists(tsv):
        return {}
    with open(tsv, newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = set(CHECKSUM_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise DownloadError(f"{tsv}: missing columns {sorted(missing)}")
        return {row["file"]: row for row in reader}


@contextlib.contextmanager
def _locked_dir(directory: str):
    # Downloads of different files may run at once and all update the one manifest: a lock
    # on its folder serialises the read-modify-replace without leaving a lock file behind.
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def record_checksum(
    tsv: str | os.PathLike, name: str, sha256: str, size: int, url: str, note: str = ""
) -> None:
    """Insert or complete the manifest row of ``name``; the manifest is replaced atomically."""
    tsv = os.fspath(tsv)
    directory = os.path.dirname(os.path.abspath(tsv))
    os.makedirs(directory, exist_ok=True)
    with _locked_dir(directory):
        rows = read_checksums(tsv)
        row = rows.get(name) or {"file": name, "note": note}
        row.update(sha256=sha256, size=str(size), url=row.get("url") or url)
        rows[name] = row
        with sbio.atomic_path(tsv) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=CHECKSUM_COLUMNS, delimiter="\t", lineterminator="\n"
            )
            writer.writeheader()
            for value in rows.values():
                writer.writerow({col: value.get(col) or "" for col in CHECKSUM_COLUMNS})


# ----------------------------------------------------------------------------- checks


def _looks_like_markup(head: bytes) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith(_MARKUP_STARTS)


def _check_head(head: bytes, kind: str, content_type: str) -> None:
    """Raise _UrlFailed when the first bytes show that this is not the expected file."""
    shown = repr(head[:16])
    if _looks_like_markup(head) or (kind == "text" and head.lstrip().startswith(b"<")):
        raise _UrlFailed(
            f"the server sent an HTML/XML page instead of the file (Content-Type "
            f"{content_type or 'unknown'}, body starts {shown}); often an error or login page"
        )
    magic = _MAGIC.get(kind)
    if magic is not None and not head.startswith(magic):
        raise _UrlFailed(
            f"not a {kind.upper()} file: the body starts {shown}, expected {magic!r}"
        )
    if kind == "text" and b"\x00" in head:
        raise _UrlFailed(f"expected a text file but the body has NUL bytes (starts {shown})")


# ----------------------------------------------------------------------------- transfer


class _Transfer:
    """One URL streamed into an open temporary file, resumable across attempts."""

    def __init__(self, url: str, sink, kind: str, timeout: float, chunk_size: int,
                 limits: "_Limits"):
        self.url, self.sink, self.kind = url, sink, kind
        self.timeout, self.chunk_size, self.limits = timeout, chunk_size, limits
        self.restart()

    def restart(self) -> None:
        self.sink.seek(0)
        self.sink.truncate()
        self.digest = hashlib.sha256()
        self.written = 0
        self.total = None  # the file's size as the server stated it, when it did

    def attempt(self) -> None:
        """Fetch the rest of the body; raise _Transient or _UrlFailed on failure."""
        headers = {"User-Agent": USER_AGENT}
        if self.written:
            headers["Range"] = f"bytes={self.written}-"
        request = urllib.request.Request(self.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            err.close()
            problem = f"HTTP {err.code} {err.reason}"
            if err.code == 416 and self.written:  # our resume point is wrong: start over
                self.restart()
                raise _Transient(problem) from None
            if err.code >= 500 or err.code in (408, 429):
                raise _Transient(problem) from None
            raise _UrlFailed(problem) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", None) or err
            raise _Transient(f"connection error: {reason}") from None
        with response:
            self._read_body(response)

    def _read_body(self, response) -> None:
        status = getattr(response, "status", None) or 200
        length = response.headers.get("Content-Length")
        content_type = response.headers.get("Content-Type", "")
        if self.written and status == 206:
            resumed_at = response.headers.get("Content-Range", "").split(" ")[-1].split("-")[0]
            if resumed_at != str(self.written):
                self.restart()
                raise _Transient(f"the server resumed at byte {resumed_at or '?'}; starting over")
        elif self.written:
            log.info("%s: the server ignored the resume request; starting over", self.url)
            self.restart()
        expected = self.written + int(length) if length and length.isdigit() else None
        stated = response.headers.get("Content-Range", "").rpartition("/")[2]
        if status == 206 and stated.isdigit():
            self.total = int(stated)
        elif expected is not None:
            self.total = expected
        if expected is not None and not getattr(response, "chunked", False):
            # Read to the end of the connection, not to the stated length: a body longer than
            # its Content-Length would otherwise be cut there and pass for a whole file.
            response.length = None
        sniffed = self.written > 0  # a resumed body was sniffed on its first attempt
        pending = b""
        last_report = time.monotonic()
        window_start, window_bytes = last_report, self.written
        while True:
            try:
                # read1: whatever has arrived, so that a slow drip still returns to the checks
                block = response.read1(self.chunk_size)
            except (OSError, http.client.HTTPException) as err:
                raise _Transient(f"connection lost after {self.written} bytes: {err}") from None
            now, received = time.monotonic(), self.written + len(pending) + len(block)
            self.limits.check(self.url, received, now)
            if now - window_start >= self.limits.rate_window:
                rate = (received - window_bytes) / (now - window_start)
                if rate < self.limits.min_rate:
                    raise _Transient(
                        f"too slow: {rate:.0f} bytes/s over the last {now - window_start:.1f} s, "
                        f"below the minimum of {self.limits.min_rate:g} bytes/s "
                        f"({received} bytes received)"
                    )
                window_start, window_bytes = now, received
            if not sniffed:
                # Hold back the first bytes until there are enough to sniff the format.
                pending += block
                if block and len(pending) < _SNIFF_BYTES:
                    continue
                if pending:
                    _check_head(pending, self.kind, content_type)
                sniffed = True
                block, pending = pending, b""
            if not block:
                break
            try:
                self.sink.write(block)
            except OSError as err:  # disk full, quota: not the server's fault, do not retry
                raise DownloadError(f"{self.url}: cannot write {self.sink.name}: {err}") from None
            self.digest.update(block)
            self.written += len(block)
            if time.monotonic() - last_report > _PROGRESS_SECONDS:
                last_report = time.monotonic()
                of = f" of {expected / 1e6:.1f} MB" if expected else ""
                log.info("%s: %.1f MB%s", self.url, self.written / 1e6, of)
        if expected is not None and self.written < expected:
            raise _Transient(
                f"truncated body: received {self.written} of {expected} bytes (Content-Length)"
            )
        if expected is not None and self.written > expected:
            log.warning("%s: the server stated %d bytes (Content-Length) but sent %d: its size "
                        "cannot be trusted", self.url, expected, self.written)
            self.total = None  # so the size is not verified and no checksum is recorded
        if self.written == 0:
            raise _UrlFailed("empty body")


class _Limits:
    """The overall deadline of one file and the minimum throughput of its transfers."""

    def __init__(self, name: str, deadline: float | None, min_rate: float, rate_window: float):
        self.name, self.deadline = name, deadline
        self.min_rate, self.rate_window = float(min_rate or 0), float(rate_window)
        self.ends = time.monotonic() + deadline if deadline else None

    def check(self, url: str, received: int, now: float | None = None) -> None:
        if self.ends is not None and (now or time.monotonic()) > self.ends:
            raise DownloadError(
                f"{self.name}: gave up: the deadline of {self.deadline:g} s for this download "
                f"passed ({received} bytes received from {url}); raise it with --deadline or "
                "config.yaml download_limits: deadline_seconds"
            )

    def sleep(self, delay: float) -> None:
        if self.ends is not None:
            delay = min(delay, max(0.0, self.ends - time.monotonic()))
        time.sleep(delay)


def _fetch(url, sink, kind, retries, backoff, timeout, chunk_size,
           limits: _Limits) -> tuple[str, int, bool]:
    """(sha256, size, whether the size matched what the server stated) of one URL."""
    transfer = _Transfer(url, sink, kind, timeout, chunk_size, limits)
    for attempt in range(retries + 1):
        limits.check(url, transfer.written)
        try:
            transfer.attempt()
            sink.flush()
            verified = transfer.total is not None and transfer.total == transfer.written
            return transfer.digest.hexdigest(), transfer.written, verified
        except _Transient as exc:
            if attempt == retries:
                raise _UrlFailed(f"{exc} (gave up after {retries + 1} attempts)") from None
            delay = backoff * 2**attempt
            log.warning(
                "%s: %s; retry %d of %d in %.1f s", url, exc, attempt + 1, retries, delay
            )
            limits.sleep(delay)
    raise AssertionError("unreachable")


def remove_stale_parts(directory: str | os.PathLike, name: str) -> list[str]:
    """Remove the temporary files of ``name`` that no running download holds (a download
    keeps its own locked); returns the removed paths."""
    removed = remove_stale(directory, [f".{glob.escape(name)}.*.part"])
    if removed:
        log.info("removed %d stale temporary file(s) of %s left by an interrupted download: %s",
                 len(removed), name, ", ".join(os.path.basename(p) for p in removed))
    return removed


@contextlib.contextmanager
def _removed_on_sigterm():
    # Only the main thread may set a handler; elsewhere the caller's own handling applies.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def download(
    urls: list[str] | str,
    out: str | os.PathLike,
    sha256: str | None = None,
    checksums_tsv: str | os.PathLike | None = None,
    require_checksum: bool = False,
    retries: int = 4,
    backoff: float = 2.0,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    deadline: float | None = DEFAULT_DEADLINE,
    min_rate: float = DEFAULT_MIN_RATE,
    rate_window: float = DEFAULT_RATE_WINDOW,
) -> Path:
    """Download ``out`` from the first of ``urls`` that gives a file passing every check.

    The expected sha256 is ``sha256`` or the manifest's row for ``out``'s file name. Without
    one, ``require_checksum`` makes this an error; otherwise the sha256 and size of the first
    good download are recorded in ``checksums_tsv`` when the server stated the size and the
    body matched it. ``deadline`` (seconds, None: none) bounds the whole download;
    ``min_rate`` (bytes/s over ``rate_window`` seconds) drops a stalled transfer, which is
    retried like a cut one. A failure leaves at ``out`` only a file that was there before and
    that no known checksum contradicts; never a partial one.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    out = Path(out)
    name = out.name
    if not urls:
        raise DownloadError(f"no URL given for {out}")
    rows = read_checksums(checksums_tsv)
    row = rows.get(name, {})
    known_sha = (row.get("sha256") or "").strip().lower() or None
    known_size = int(row["size"]) if (row.get("size") or "").strip().isdigit() else None
    if sha256 and known_sha and sha256.strip().lower() != known_sha:
        raise DownloadError(
            f"{name}: the sha256 given ({sha256}) differs from the one in {checksums_tsv} "
            f"({known_sha}); fix one of them"
        )
    expected = (sha256 or "").strip().lower() or known_sha
    if expected is None and require_checksum:
        raise DownloadError(
            f"{', '.join(urls)}: no sha256 is known for {name} and checksums are required; "
            f"give one (--sha256, config downloads.{name}.sha256) or record it in "
            f"{checksums_tsv or DEFAULT_CHECKSUMS}"
        )

    kept = False
    if out.exists():
        if expected is not None:
            if sha256_file(out) == expected:
                log.info("%s is already present with the expected sha256; not downloading", out)
                return out
            out.unlink()  # contradicts the known checksum: never leave it looking good
        else:
            kept = True  # unverifiable, maybe good: replaced only by a verified download
            log.info("%s exists but no checksum is known to verify it: downloading again, "
                     "keeping it until the new file passed every check", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(out.parent, name)
    kind = file_kind(out)
    failures = []
    limits = _Limits(name, deadline, min_rate, rate_window)
    # io's atomic writer: a temporary '.{name}.*.part' beside the file, renamed over it
    # once every check passed, removed on an error or SIGTERM; locked while in use
    # (remove_stale_parts leaves a locked part alone)
    with sbio.atomic_path(out, suffix=".part") as tmp, open(tmp, "wb") as sink, \
            _removed_on_sigterm():
        fcntl.flock(sink.fileno(), fcntl.LOCK_EX)
        for url in urls:
            log.info("downloading %s from %s", out, url)
            try:
                got_sha, size, size_verified = _fetch(
                    url, sink, kind, retries, backoff, timeout, chunk_size, limits
                )
                if expected is not None and got_sha != expected:
                    raise _UrlFailed(f"sha256 mismatch: expected {expected}, got {got_sha}")
                if known_size is not None and size != known_size:
                    raise _UrlFailed(f"size mismatch: expected {known_size} bytes, got {size}")
            except _UrlFailed as exc:
                log.warning("%s: %s", url, exc)
                failures.append(f"{url}: {exc}")
                continue
            break
        else:
            detail = "\n  ".join(failures)
            note = f"\n  the existing {out} was left as it was" if kept else ""
            raise DownloadError(
                f"could not download {name} from {len(urls)} URL(s):\n  {detail}{note}"
            )
        sink.flush()
    log.info("downloaded %s (%d bytes, sha256 %s) from %s", out, size, got_sha, url)
    trusted = expected is not None or size_verified
    if checksums_tsv is not None and known_sha is None and trusted:
        # A checksum verified against the caller's, or the first one seen whole: keep it.
        record_checksum(checksums_tsv, name, got_sha, size, url)
        if expected is None:
            log.warning(
                "no checksum was known for %s: recorded sha256 %s and size %d in %s "
                "(first download; commit it so later downloads are verified)",
                name, got_sha, size, checksums_tsv,
            )
    elif expected is None and not size_verified:
        log.warning(
            "no checksum known for %s and the server did not state its size, so a cut body "
            "cannot be told from a whole one: sha256 %s and size %d bytes NOT recorded; "
            "check the file, then pin them (--sha256, downloads.%s.sha256 in config.yaml, "
            "or a row of %s)", name, got_sha, size, name, checksums_tsv or DEFAULT_CHECKSUMS,
        )
    elif expected is None:
        log.warning("no checksum known for %s and none recorded: sha256 %s, size %d bytes",
                    name, got_sha, size)
    return out
