"""Finding, downloading and verifying the standard files of file-based data sets.

Every standard file has a published MD5 checksum (:class:`FileSpec`). A file found on disk is hashed and
compared before it is read; a mismatch is a :class:`cnnlens.DataIntegrityError`, never a silent use.
Missing files are downloaded from the listed mirrors (short timeout, verified before they are moved into
place) unless ``CNNLENS_OFFLINE=1`` is set; when they still are missing, a
:class:`cnnlens.DataUnavailableError` names each file, the folder to put it in and the ``--data-dir`` option.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .._errors import DataIntegrityError, DataUnavailableError

__all__ = ["FileSpec", "download_file", "downloads_enabled", "ensure_files", "md5sum", "verify_file"]

#: seconds to wait for a mirror before giving up on it
DOWNLOAD_TIMEOUT = 10.0


@dataclass(frozen=True)
class FileSpec:
    """One standard file: its name in the data folder, its published MD5, and where to download it.

    ``md5=None`` declares a file without a published checksum (e.g. a user's own IDX file): it is still
    checked structurally by its reader, but not hashed.
    """

    filename: str
    md5: str | None
    urls: tuple[str, ...] = ()


def md5sum(path: Path, chunk_size: int = 2**20) -> str:
    """Hex MD5 digest of the file at ``path``."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, spec: FileSpec) -> None:
    """Raise :class:`cnnlens.DataIntegrityError` if ``path`` does not have the published checksum."""
    if spec.md5 is None:
        return
    actual = md5sum(path)
    if actual != spec.md5:
        raise DataIntegrityError(
            f"{path} does not match its published checksum (MD5 {actual}, expected {spec.md5}): the file is "
            f"truncated, corrupt or a different version. Delete it and fetch {spec.filename} again"
            f"{' from ' + spec.urls[0] if spec.urls else ''}."
        )


def downloads_enabled() -> bool:
    """False when the environment variable ``CNNLENS_OFFLINE`` is set to a true value (1, yes, true)."""
    return os.environ.get("CNNLENS_OFFLINE", "").strip().lower() not in {"1", "yes", "true", "on"}


def ensure_files(
    dataset: str,
    folder: Path,
    specs: Sequence[FileSpec],
    *,
    data_dir: Path | None = None,
    alternative: str = "",
) -> list[Path]:
    """Make sure every file of ``specs`` is in ``folder`` with its published checksum.

    Missing files are downloaded when :func:`downloads_enabled`; each one is verified in a temporary file
    and only then moved into ``folder``. ``data_dir`` (the folder given by ``--data-dir``) lets the
    missing-files message show where ``folder`` sits inside it; ``alternative`` is appended to that message
    (e.g. "put the archive ... in ...").

    Returns
    -------
    list of Path
        The verified paths, in the order of ``specs``.

    Raises
    ------
    cnnlens.DataUnavailableError
        Some files are missing and could not be downloaded.
    cnnlens.DataIntegrityError
        A file on disk (or a downloaded one) does not match its checksum.
    """
    missing = [spec for spec in specs if not (folder / spec.filename).is_file()]
    failures: list[str] = []
    if missing and downloads_enabled():
        unreachable: set[str] = set()
        for spec in missing:
            failure = download_file(spec, folder, unreachable)
            if failure:
                failures.append(failure)
        missing = [spec for spec in specs if not (folder / spec.filename).is_file()]
    if missing:
        inside = folder.relative_to(data_dir) if data_dir is not None else Path(folder.name)
        raise DataUnavailableError(_missing_message(dataset, folder, inside, missing, failures, alternative))
    paths = [folder / spec.filename for spec in specs]
    for path, spec in zip(paths, specs, strict=True):
        verify_file(path, spec)
    return paths


def download_file(spec: FileSpec, folder: Path, unreachable: set[str] | None = None) -> str:
    """Download ``spec`` into ``folder`` from the first mirror that works, verified against its MD5.

    ``unreachable`` collects hosts that failed at the network level, so later files skip them. Returns ""
    on success, else a one-line reason (every mirror's error); the folder is left unchanged on failure.
    """
    unreachable = set() if unreachable is None else unreachable
    reasons = []
    for url in spec.urls:
        host = urlsplit(url).netloc
        if host in unreachable:
            reasons.append(f"{host} unreachable")
            continue
        try:
            _fetch(url, folder / spec.filename, spec)
            return ""
        except (OSError, DataIntegrityError) as error:
            network_failure = isinstance(error, urllib.error.URLError | TimeoutError | ConnectionError)
            if host and network_failure and not isinstance(error, urllib.error.HTTPError):
                unreachable.add(host)  # DNS, refused or timed out: skip this host for the other files
            reasons.append(f"{url}: {error}")
    return f"{spec.filename}: " + "; ".join(reasons) if reasons else ""


def _fetch(url: str, destination: Path, spec: FileSpec) -> None:
    """Download ``url`` to a temporary file next to ``destination``, verify it, then move it into place."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{spec.filename}.")
    temporary = Path(temporary_name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            shutil.copyfileobj(response, out)
        verify_file(temporary, spec)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def _missing_message(
    dataset: str,
    folder: Path,
    inside: Path,
    missing: Sequence[FileSpec],
    failures: Sequence[str],
    alternative: str,
) -> str:
    lines = [f"data set {dataset!r} needs files that are not in {folder}:"]
    for spec in missing:
        source = f" (from {spec.urls[0]})" if spec.urls else ""
        checksum = f", MD5 {spec.md5}" if spec.md5 else ""
        lines.append(f"  - {spec.filename}{source}{checksum}")
    lines.append(
        f"Put these files in {folder}, or pass --data-dir DIR (Python: data_dir=DIR, or set CNNLENS_DATA) "
        f"for a folder whose {inside.as_posix()}/ subfolder has them."
    )
    if alternative:
        lines.append(f"Alternatively, {alternative}.")
    if not downloads_enabled():
        lines.append("Automatic download is off (CNNLENS_OFFLINE is set).")
    elif failures:
        lines.append("Automatic download failed: " + " | ".join(failures))
    return "\n".join(lines)
