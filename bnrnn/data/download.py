"""Fetch and verify dataset files: the one place where bnrnn touches the network.

Every dataset module describes its files as :class:`RemoteFile` (name, URL, MD5) and calls
:func:`fetch`, which

1. uses ``root/<name>`` when the user pointed ``data.root`` at a local copy,
2. otherwise uses ``cache_dir/<name>``, downloading it first if it is missing,
3. verifies the MD5 in both cases, and
4. raises :class:`DataError` with the file, the expected and actual checksum and the fix.

A local copy that is deliberately not the canonical file — a few hundred lines of a corpus,
like the test fixtures in ``tests/fixtures/`` — says so with a ``SUBSET.md5`` file beside it
(``md5sum`` format); the files it lists are verified against it instead, with a warning, so a
subset is never mistaken for the full corpus and never read unverified.

Downloads go to a temporary file that is renamed only after the checksum matched, so an
interrupted download never leaves a half-written file behind.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("bnrnn")
SUBSET_MANIFEST = "SUBSET.md5"


class DataError(RuntimeError):
    """A dataset file is missing, corrupt or cannot be downloaded; the message says the fix."""


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name inside the dataset directory
    url: str
    md5: str


def digest(path: str | Path, algorithm: str, chunk: int = 1 << 20) -> str:
    """The hex digest of the file at ``path`` under ``algorithm`` (a :mod:`hashlib` name), read
    in chunks so a corpus shard never sits in memory whole."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5sum(path: str | Path) -> str:
    return digest(path, "md5")


def sha256sum(path: str | Path) -> str:
    return digest(path, "sha256")


def verify(path: Path, md5: str, *, hint: str) -> Path:
    """Return ``path`` if its MD5 is ``md5``; else raise :class:`DataError` naming both sums."""
    actual = md5sum(path)
    if actual != md5:
        raise DataError(
            f"checksum mismatch for {path}: expected md5 {md5}, got {actual}. "
            f"The file is corrupt or a different version. {hint}"
        )
    return path


def download(url: str, dest: Path, md5: str | None = None, *, hint: str, timeout: float = 60.0,
             check: Callable[[Path], object] | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically (temp file + rename) after verifying it: by its
    MD5, or by ``check(path)`` (which raises :class:`DataError`) for other kinds of checksum."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        if check is not None:
            check(Path(tmp))
        elif (actual := md5sum(tmp)) != md5:
            raise DataError(
                f"checksum mismatch for {dest.name} downloaded from {url}: expected md5 {md5}, "
                f"got {actual}. {hint}"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise DataError(f"could not download {dest.name} from {url} ({e}). {hint}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def subset_md5(root: Path, name: str) -> str | None:
    """The MD5 that ``root/SUBSET.md5`` lists for ``name``, or None (no manifest, or not listed)."""
    manifest = root / SUBSET_MANIFEST
    if not manifest.is_file():
        return None
    for line in manifest.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == name:
            return parts[0].lower()
    return None


def fetch(
    file: RemoteFile,
    *,
    root: str | Path | None,
    cache_dir: str | Path,
    download_ok: bool = True,
    root_key: str = "data.root",
) -> Path:
    """Return a verified local path for ``file`` (see the module docstring for the order)."""
    hint = (
        f"Point {root_key} at a directory holding a verified copy of {file.name} "
        f"(e.g. {root_key}=/path/to/<dataset>), or delete the file to download it again."
    )
    if root is not None:
        path = Path(root).expanduser() / file.name
        if not path.is_file():
            raise DataError(
                f"missing dataset file {path} ({root_key}={root}). Put {file.name} there "
                f"(md5 {file.md5}), or unset {root_key} to download it from {file.url}."
            )
        md5 = subset_md5(path.parent, file.name)
        if md5 is not None and md5 != file.md5:
            log.warning("%s is a subset, not the canonical file (md5 %s): verified against %s. "
                        "Results from it are not comparable with the paper's.", path, file.md5,
                        path.parent / SUBSET_MANIFEST)
            return verify(path, md5, hint=hint)
        return verify(path, file.md5, hint=hint)
    path = Path(cache_dir).expanduser() / file.name
    if path.is_file():
        return verify(path, file.md5, hint=hint)
    if not download_ok:
        raise DataError(f"missing dataset file {path} and downloads are disabled. {hint}")
    return download(file.url, path, file.md5, hint=hint)
