"""Weight files fetched once into a local cache, checked against their publisher's hash.

Where a file lives: `<cache>/<file name of its URL>`, `<cache>` being the `cache_dir` argument,
else `$RESNET_WEIGHTS_DIR`, else `~/.keras/resnet-weights` (`$KERAS_HOME/resnet-weights` where
`KERAS_HOME` is set, as Keras places its own downloads).

How it gets there: downloaded from `$RESNET_WEIGHTS_MIRROR/<host>/<path>` where that variable is
set (a mirror of the publishers' hosts, for machines behind a firewall), else from the URL
itself, into `.<file name>.<pid>.partial` in the cache; renamed to its name only once it is
whole (as many bytes as the server announced) and its hash matches. Any failure removes the
partial file, so the cache holds whole, checked files only. (A partial file left by a process
that was killed is removed by the next download, once that process has ended.)

A cached file is checked against its hash every time it is used, and used without the network
when it matches. Offline without a cached file, the error names the URL and the path at which
to place the file by hand.

The download itself is Python's `urllib`, with a progress bar on stderr: `keras.utils.get_file`
writes straight to the final name, keeps a file whose hash does not match, does not notice a
connection that closes early, and shows its progress on stdout, so it does not give the
guarantees above.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from resnet.storage.owners import alive

CACHE_ENV = "RESNET_WEIGHTS_DIR"
MIRROR_ENV = "RESNET_WEIGHTS_MIRROR"
TIMEOUT_SECONDS = 60
_CHUNK = 1 << 20
_HASH = re.compile(r"(?P<algorithm>sha256|md5):(?P<digest>[0-9a-f]+)")
_DIGEST_LENGTHS = {"sha256": 64, "md5": 32}
_PARTIAL = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.partial")


class WeightsDownloadError(OSError):
    """A weights file could not be fetched or did not match its hash; nothing was cached."""


def check_hash_spec(value: str | None, argument: str = "hash") -> str | None:
    """Returns `value` if it is None, `"sha256:<hex>"` (at least 8 digits: torch hub file names
    carry a prefix) or `"md5:<32 hex digits>"`, else raises `ValueError`."""
    match = _HASH.fullmatch(value) if isinstance(value, str) else None
    if value is not None:
        length, full = (len(match["digest"]), _DIGEST_LENGTHS[match["algorithm"]]) if match else (0, 0)
        if not (8 <= length <= full) or (match["algorithm"] == "md5" and length != full):
            raise ValueError(
                f"`{argument}` must be 'sha256:' and 8 to 64 lowercase hex digits, or 'md5:' and 32; "
                f"received {value!r}."
            )
    return value


def cache_dir(directory: str | os.PathLike | None = None) -> str:
    """The directory weight files are cached in; see the module docstring."""
    if directory is None:
        directory = os.environ.get(CACHE_ENV) or os.path.join(
            os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"), "resnet-weights"
        )
    return os.path.abspath(os.path.expanduser(os.fspath(directory)))


def cached_path(url: str, directory: str | os.PathLike | None = None) -> str:
    """Where the file of `url` is cached (whether or not it is there yet)."""
    return os.path.join(cache_dir(directory), _file_name(url))


def source_url(url: str) -> str:
    """`url`, or its place on the mirror that `$RESNET_WEIGHTS_MIRROR` names: `<mirror>/<host>/<path>`."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    scheme = urllib.parse.urlsplit(mirror).scheme
    if scheme not in ("http", "https", "file"):
        raise ValueError(
            f"${MIRROR_ENV} must be an http://, https:// or file:// URL such as http://mirror:8000/; "
            f"received {mirror!r}."
        )
    parts = urllib.parse.urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


def file_digest(path: str, algorithm: str) -> str:
    """The hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_mismatch(path: str, expected: str | None) -> str | None:
    """None if the file at `path` matches `expected` (`"sha256:<prefix>"`, `"md5:<hex>"` or None),
    else what its digest is, in words."""
    if expected is None:
        return None
    algorithm, digest = expected.split(":")
    actual = file_digest(path, algorithm)
    if actual.startswith(digest):
        return None
    wanted = digest if len(digest) == _DIGEST_LENGTHS[algorithm] else f"one starting with {digest}"
    return f"its {algorithm} is {actual}, expected {wanted}"


def fetch(
    url: str,
    expected_hash: str | None,
    directory: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> str:
    """The local path of the file at `url`, downloaded into the cache unless already there.

    Args:
        url: The publisher's URL.
        expected_hash: `"sha256:<hex prefix>"`, `"md5:<hex>"`, or None (not checked).
        directory: The cache directory (default: see `cache_dir`).
        progress: Show a progress bar while downloading.
        log: Called with a line for each download and each cached file found damaged
            (default: print to stderr).

    Raises:
        WeightsDownloadError: The file could not be downloaded (the error names the URL tried
            and where to place the file by hand), arrived incomplete, or does not match its
            hash; nothing is left in the cache.
    """
    check_hash_spec(expected_hash, "expected_hash")
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    path = cached_path(url, directory)
    if os.path.isfile(path):
        damage = hash_mismatch(path, expected_hash)
        if damage is None:
            return path
        log(f"The cached {path} is damaged ({damage}); downloading it again.")
    source = source_url(url)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as error:
        raise WeightsDownloadError(
            f"Cannot create the weights cache ({error}); give another directory with `cache_dir` or ${CACHE_ENV}."
        ) from None
    _remove_abandoned_partials(os.path.dirname(path))
    partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.partial")
    log(f"Downloading {source} to {path}")
    try:
        _download(source, partial, url, path, progress)
        damage = hash_mismatch(partial, expected_hash)
        if damage is not None:
            raise WeightsDownloadError(
                f"The file downloaded from {source} is not the publisher's: {damage}. It was not kept; "
                f"nothing was written to {path}."
            )
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
    return path


def _file_name(url: str) -> str:
    name = os.path.basename(urllib.parse.urlsplit(url).path)
    if not name:
        raise ValueError(f"The weights URL {url!r} does not end in a file name.")
    return name


def _download(source: str, partial: str, url: str, path: str, progress: bool) -> None:
    """Writes the file at `source` to `partial`; raises `WeightsDownloadError` unless it all arrived.

    Network failures are told apart from failures to write the file (which name the file)."""
    by_hand = f"To use it without the network, download {url} elsewhere and place it at {path}"
    try:
        response = urllib.request.urlopen(source, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as error:
        raise WeightsDownloadError(
            f"Could not download {source}: HTTP {error.code} {error.reason}. {by_hand}."
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise WeightsDownloadError(f"Could not download {source} ({reason}): offline? {by_hand}.") from None
    received = 0
    with response, _writable(partial) as out:
        length = response.headers.get("Content-Length")
        announced = int(length) if length and length.isdigit() else None
        bar = _Progress(announced) if progress else None
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as error:
                raise WeightsDownloadError(
                    f"The download of {source} broke off after {received} bytes ({error}); nothing was kept. "
                    "Run again to retry."
                ) from None
            if not chunk:
                break
            out.write(chunk)
            received += len(chunk)
            if bar is not None:
                bar.update(received)
    if announced is not None and received != announced:
        raise WeightsDownloadError(
            f"The download of {source} ended after {received} of {announced} bytes; nothing was kept. "
            "Run again to retry."
        )


def _writable(path: str):
    """`path` opened for writing, or a `WeightsDownloadError` saying the cache cannot be written."""
    try:
        return open(path, "wb")
    except OSError as error:
        raise WeightsDownloadError(
            f"Cannot write to the weights cache ({error}); give another directory with `cache_dir` or ${CACHE_ENV}."
        ) from None


class _Progress:
    """A download's progress on stderr (stdout may carry a program's results): a bar redrawn in
    place on a terminal, else a line at every tenth of the file."""

    def __init__(self, total: int | None):
        self.total, self.shown = total, -1
        self.terminal = sys.stderr.isatty()

    def update(self, received: int) -> None:
        if self.total:
            tenth = received * 10 // self.total
            if self.terminal or tenth != self.shown:
                self.shown = tenth
                bar = "#" * (tenth * 3) + "." * (30 - tenth * 3)
                end = "\r" if self.terminal and received < self.total else "\n"
                text = f"  [{bar}] {received / 1e6:.1f} of {self.total / 1e6:.1f} MB"
                print(text, end=end, file=sys.stderr, flush=True)
        elif self.terminal:
            print(f"  {received / 1e6:.1f} MB", end="\r", file=sys.stderr, flush=True)


def _remove_abandoned_partials(directory: str) -> None:
    """Removes `.<name>.<pid>.partial` files whose process has ended (a download killed mid-way)."""
    for entry in os.listdir(directory):
        match = _PARTIAL.fullmatch(entry)
        if match and not alive(int(match["pid"]), started=None):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, entry))
