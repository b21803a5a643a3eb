"""Download Sleep-EDF Expanded's recordings, each verified against the dataset's ``SHA256SUMS.txt``.

The downloads are pooch's (as MNE's): a file is streamed to a temporary name in the output folder, its
sha256 checked, and only then renamed into place; a failed, refused or interrupted download leaves
nothing under the final name (pooch removes the temporary file; a killed process can leave one in the
hidden folder :data:`PARTIAL`, which every command skips and the next fetch clears). A file already
present whose sha256 matches is not downloaded again. Each download is tried ``1 + retries`` times,
waiting 1, 2, 4 ... seconds (at most :data:`MAX_WAIT`) in between. The list itself is kept as
``SHA256SUMS.txt`` in the output folder, so that a run without network can still verify files downloaded
by hand.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sleepstage_cli import fsutil
from sleepstage_cli.digests import file_sha256
from sleepstage_cli.errors import InputError, SleepstageError
from sleepstage_cli.io.sleepedf_files import ListedFile, parse_sums

DEFAULT_BASE_URL = "https://physionet.org/files/sleep-edfx/1.0.0/"
INDEX = "SHA256SUMS.txt"
PARTIAL = ".fetch-partial"
"""The hidden folder in the output folder where downloads stream before they are verified and moved."""
NEEDED = "fetch-needed.txt"
"""Written into the output folder when files cannot be downloaded: their URLs, one a line."""
MAX_WAIT = 30.0
TIMEOUT = 60.0


class Offline(SleepstageError):
    """The server cannot be reached (no network, DNS failure, connection refused)."""


@dataclass
class FetchResult:
    """What happened to one file: ``downloaded``, ``present`` (verified, kept) or ``failed``."""

    file: ListedFile
    status: str
    size: int = 0
    error: str | None = None
    attempts: int = 0


@dataclass
class Hooks:
    """How the core reports: a file starts, bytes arrive, a file ends, a retry waits; ``sleep`` waits."""

    start: Callable[[ListedFile], None] = lambda f: None
    advance: Callable[[ListedFile, int, int], None] = lambda f, done, total: None
    done: Callable[[FetchResult], None] = lambda r: None
    retry: Callable[[ListedFile, str, float], None] = lambda f, why, wait: None
    sleep: Callable[[float], None] = field(default=time.sleep)


class _Bytes:
    """The progress-bar object pooch's HTTPDownloader updates (total, update, reset, close)."""

    def __init__(self, file: ListedFile, hook: Callable[[ListedFile, int, int], None]) -> None:
        self.file, self.hook, self.total, self.count = file, hook, 0, 0

    def update(self, n: int) -> None:
        self.count += n
        self.hook(self.file, min(self.count, self.total or self.count), self.total)

    def reset(self) -> None:
        self.count = 0

    def close(self) -> None:
        pass


def url_of(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path


def _quiet_pooch():
    import pooch

    pooch.get_logger().setLevel("WARNING")  # no "Downloading data from ..." lines of its own
    return pooch


def _is_offline(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, (requests.ConnectionError, requests.Timeout)) and not isinstance(
        exc, requests.exceptions.ChunkedEncodingError)


def _reason(exc: BaseException) -> str:
    """One short phrase for a download failure."""
    import requests

    if isinstance(exc, ValueError) and not isinstance(exc, requests.RequestException):
        return "its sha256 does not match the one SHA256SUMS.txt lists (the download is corrupt)"
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason or ''}".strip()
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the connection broke off mid-file"
    if _is_offline(exc):
        text = str(exc)
        for hint in ("Connection refused", "Name or service not known", "Temporary failure in name resolution",
                     "timed out", "Network is unreachable"):
            if hint in text:
                return hint.lower()
        return "cannot connect"
    return f"{type(exc).__name__}: {exc}"


def read_index(base_url: str, out: Path, needed: str, retries: int = 2, hooks: Hooks | None = None) -> tuple[
        list[ListedFile], str]:
    """The dataset's file list: downloaded (kept as ``out/SHA256SUMS.txt``), or that copy when offline.

    Returns the files and a note ('' or where the list came from). Without network and without a kept
    copy, raises :class:`Offline` naming the URLs needed (``needed`` describes the files by pattern) and
    the folder where files downloaded by hand go.
    """
    import requests

    pooch, hooks = _quiet_pooch(), hooks or Hooks()
    url, kept = url_of(base_url, INDEX), out / INDEX
    for attempt in range(retries + 1):
        try:
            buffer = io.BytesIO()
            pooch.HTTPDownloader(progressbar=False, timeout=TIMEOUT)(url, buffer, None)
            files = parse_sums(buffer.getvalue().decode("utf-8", errors="replace"), url)
            with fsutil.atomic_open(kept, "wb") as fh:
                fh.write(buffer.getvalue())
            return files, ""
        except requests.HTTPError as exc:
            raise InputError(f"{_reason(exc)}; is --base-url the folder of sleep-edfx 1.0.0 "
                             f"(such as {DEFAULT_BASE_URL})?", url) from None
        except requests.RequestException as exc:
            if not _is_offline(exc) or attempt == retries:
                if kept.is_file():
                    return parse_sums(kept.read_text(encoding="utf-8", errors="replace"), str(kept)), (
                        f"cannot reach {url} ({_reason(exc)}); using the list kept in {kept}")
                raise Offline(f"cannot reach {url} ({_reason(exc)}): no network? On a machine with internet, "
                              f"download {url} and the files it lists for your choice ({needed}) from {base_url}; "
                              f"put them in {out}, keeping the dataset's folders ({kept}, "
                              f"{out / 'sleep-cassette'}/..., {out / 'sleep-telemetry'}/...), and run this "
                              f"command again: files present are verified, not downloaded") from None
            wait = min(2.0 ** attempt, MAX_WAIT)
            hooks.retry(ListedFile(INDEX, "", "", 0, 0, ""), _reason(exc), wait)
            hooks.sleep(wait)
    raise AssertionError("unreachable")


def _download(file: ListedFile, base_url: str, out: Path, retries: int, hooks: Hooks) -> FetchResult:
    """One file, tried 1 + ``retries`` times with waits that double; a failure is returned, not raised."""
    pooch = _quiet_pooch()
    target = out / file.path
    for attempt in range(retries + 1):
        try:
            downloader = pooch.HTTPDownloader(progressbar=_Bytes(file, hooks.advance), timeout=TIMEOUT,
                                              chunk_size=1 << 16)
            staging = out / PARTIAL
            pooch.retrieve(url_of(base_url, file.path), known_hash=f"sha256:{file.sha256}", fname=target.name,
                           path=staging, downloader=downloader)
            _readable(staging / target.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / target.name, target)  # verified: now under its name
            return FetchResult(file, "downloaded", target.stat().st_size, attempts=attempt + 1)
        except (ValueError, OSError) as exc:  # requests' exceptions are OSErrors; a checksum mismatch a ValueError
            if isinstance(exc, OSError) and not _is_requests(exc):
                raise fsutil.WriteError(f"cannot write: {exc.strerror or exc}", target) from None
            if attempt == retries:
                return FetchResult(file, "failed", error=_reason(exc), attempts=attempt + 1)
            wait = min(2.0 ** attempt, MAX_WAIT)
            hooks.retry(file, _reason(exc), wait)
            hooks.sleep(wait)
    raise AssertionError("unreachable")


def _readable(path: Path) -> None:
    """The permissions of a file we create (pooch's temporary file is private, 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _is_requests(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, requests.RequestException)


def fetch_files(files: list[ListedFile], base_url: str, out: Path, retries: int = 3,
                hooks: Hooks | None = None) -> list[FetchResult]:
    """Each file present and verified, else downloaded and verified; the results in the order of ``files``.

    A file present with another sha256 is not fetch's (it names a file only once verified): it is left as it
    is and reported as failed, never overwritten. When the server cannot be reached at all the remaining
    files are not tried: they are returned as failed with the reason.
    """
    hooks = hooks or Hooks()
    shutil.rmtree(out / PARTIAL, ignore_errors=True)  # what a killed run left
    results: list[FetchResult] = []
    offline: str | None = None
    for file in files:
        hooks.start(file)
        target = out / file.path
        if target.is_file() and file_sha256(target) == file.sha256:
            result = FetchResult(file, "present", target.stat().st_size)
        elif target.exists():
            result = FetchResult(file, "failed", error=f"{target} is there with another sha256 than "
                                 "SHA256SUMS.txt lists; it was not written by fetch and is left as it is: move "
                                 "it away to download the dataset's file")
        elif offline:
            result = FetchResult(file, "failed", error=offline)
        else:
            result = _download(file, base_url, out, retries, hooks)
            if result.status == "failed" and result.error and _looks_offline(result.error):
                offline = result.error
        results.append(result)
        hooks.done(result)
    with contextlib.suppress(OSError):
        (out / PARTIAL).rmdir()
    return results


def _looks_offline(reason: str) -> bool:
    return reason in ("connection refused", "name or service not known", "temporary failure in name resolution",
                      "network is unreachable", "cannot connect", "timed out")


def write_needed(out: Path, base_url: str, results: list[FetchResult]) -> Path | None:
    """``out/fetch-needed.txt``: the URLs of the files not fetched (for a download by hand), or None."""
    failed = [r for r in results if r.status == "failed"]
    path = out / NEEDED
    if not failed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    fsutil.atomic_write_text(path, "".join(f"{url_of(base_url, r.file.path)}\n" for r in failed))
    return path


def record(results: list[FetchResult], base_url: str, selection: dict, missing: list[str], note: str) -> dict:
    """What ``fetch.json`` holds: the choice, and each file with its sha256 and status."""
    counts = {s: sum(r.status == s for r in results) for s in ("downloaded", "present", "failed")}
    return {"dataset": "sleep-edfx", "base_url": base_url, "selection": selection, "counts": counts,
            "bytes": sum(r.size for r in results), "nights_not_listed": missing, "index_note": note or None,
            "files": [{"path": r.file.path, "night": r.file.night_id, "sha256": r.file.sha256, "status": r.status,
                       "bytes": r.size, "attempts": r.attempts, "error": r.error} for r in results]}
