"""The content-addressed blob store: programs, inputs, outputs and specs, named by sha256.

An upload is streamed to a temporary file in ``<root>/.tmp`` while it is hashed and counted; it
becomes visible only after its sha256 matches the name it was uploaded under, by an atomic
rename into ``<root>/<aa>/<bb>/<sha256>``. A crash mid-upload leaves only a temporary file
(swept at start-up), never a visible blob with the wrong bytes.

The size limit bounds one blob, not the store: uploads are refused (:class:`StoreFull`, HTTP
507) while the disk holding the store has less than ``min_free_bytes`` free (by default one
blob's limit), checked before an upload starts and again as it streams, so many or parallel
uploads cannot fill the disk the market's logs and Redis may share.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meshcompute.core.spec import is_sha256_hex
from meshcompute.errors import BadInput, NotFound, ServiceUnavailable

_CHUNK = 1 << 20
_STALE_TMP_S = 3600
_SPACE_CHECK_BYTES = 16 << 20
_FSYNC_THREADS = 16
"""A streaming upload re-checks the free space each time this many more bytes arrived."""


class HashMismatch(BadInput):
    """Uploaded bytes do not hash to the name they were uploaded under (HTTP 400)."""


class BlobTooLarge(BadInput):
    """An upload exceeds the store's per-blob size limit (HTTP 413)."""


class StoreFull(ServiceUnavailable):
    """The disk under the store is nearly full; uploads wait for space (HTTP 507)."""


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path``."""
    return int(shutil.disk_usage(path).free)


class BlobStore:
    """Blobs on disk under ``root``; ``max_bytes`` bounds one blob, ``min_free_bytes`` (default
    ``max_bytes``) is the free space every upload leaves on the disk."""

    def __init__(self, root: Path, max_bytes: int, *, min_free_bytes: int | None = None) -> None:
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_bytes)
        self.min_free_bytes = self.max_bytes if min_free_bytes is None else int(min_free_bytes)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._sweep_stale_uploads()

    def __repr__(self) -> str:
        return f"<BlobStore {self.root} max {self.max_bytes} bytes>"

    def path(self, sha256: str) -> Path:
        check_name(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {sha256} is not in the store") from None

    def read(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {sha256} is not in the store") from None

    def iter_chunks(self, sha256: str) -> Iterator[bytes]:
        """The blob's bytes in chunks (for a streamed download)."""
        try:
            source = self.path(sha256).open("rb")
        except FileNotFoundError:
            raise NotFound(f"blob {sha256} is not in the store") from None
        with source:
            yield from iter(lambda: source.read(_CHUNK), b"")

    def put_bytes(self, data: bytes) -> tuple[str, bool]:
        """Store ``data``; returns (sha256, created)."""
        sha = hashlib.sha256(data).hexdigest()
        if len(data) > self.max_bytes:
            raise BlobTooLarge(
                f"blob of {len(data)} bytes exceeds the limit of {self.max_bytes} bytes"
            )
        if self.exists(sha):
            return sha, False
        self._check_space(len(data))
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="up-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return sha, self._publish(Path(tmp), sha)

    def put_many(self, blobs: list[bytes]) -> list[tuple[str, bool]]:
        """Store several blobs; returns (sha256, created) for each, in order. Every new blob
        is written, then all are fsynced at once (a few threads: the file system commits
        them together instead of one journal commit each), then each is published, so a
        crash leaves none of them half-visible. Limits as :meth:`put_bytes`, checked for all
        before anything is written."""
        named = [(hashlib.sha256(data).hexdigest(), data) for data in blobs]
        for _sha, data in named:
            if len(data) > self.max_bytes:
                raise BlobTooLarge(
                    f"blob of {len(data)} bytes exceeds the limit of {self.max_bytes} bytes"
                )
        new: dict[str, bytes] = {sha: data for sha, data in named if not self.exists(sha)}
        self._check_space(sum(len(data) for data in new.values()))
        written: dict[str, Path] = {}
        try:
            for sha, data in new.items():
                fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="up-")
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                written[sha] = Path(tmp)
            _fsync_all(list(written.values()))
        except BaseException:
            for tmp in written.values():
                tmp.unlink(missing_ok=True)
            raise
        created = {sha: self._publish(tmp, sha) for sha, tmp in written.items()}
        return [(sha, created.pop(sha, False)) for sha, _data in named]

    async def put_stream(
        self, sha256: str, chunks: AsyncIterator[bytes], *, declared_size: int | None = None
    ) -> bool:
        """Stream an upload claimed to be ``sha256``; returns whether it was new.

        Raises :class:`BlobTooLarge` as soon as the bytes pass the limit (or up front when the
        declared size does) and :class:`HashMismatch` when the bytes hash differently.
        """
        check_name(sha256)
        if declared_size is not None and declared_size > self.max_bytes:
            raise BlobTooLarge(
                f"upload of {declared_size} bytes exceeds the limit of {self.max_bytes} bytes"
            )
        self._check_space(declared_size or 0)
        digest = hashlib.sha256()
        size = 0
        checked = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="up-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise BlobTooLarge(
                            f"upload exceeds the limit of {self.max_bytes} bytes"
                        )
                    if size - checked >= _SPACE_CHECK_BYTES:
                        self._check_space(0)
                        checked = size
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            got = digest.hexdigest()
            if got != sha256:
                raise HashMismatch(
                    f"uploaded bytes hash to {got}, not to the blob name {sha256}"
                )
            return self._publish(tmp, sha256)
        finally:
            tmp.unlink(missing_ok=True)

    def _check_space(self, incoming: int) -> None:
        """StoreFull unless ``incoming`` more bytes still leave ``min_free_bytes`` free."""
        free = free_bytes(self._tmp)
        if free - incoming < self.min_free_bytes:
            raise StoreFull(
                f"blob store {self.root} is nearly full ({free} bytes free, uploads keep "
                f"{self.min_free_bytes} free); try again later"
            )

    def size_or_zero(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return 0

    def delete(self, sha256: str) -> bool:
        """Remove a blob (garbage collection); True when it was there."""
        try:
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def names(self) -> Iterator[str]:
        """Every stored blob's name (walks the store; uploads in progress are not named)."""
        for first in self.root.iterdir():
            if len(first.name) != 2 or not first.is_dir():
                continue
            for second in first.iterdir():
                if not second.is_dir():
                    continue
                for entry in second.iterdir():
                    if is_sha256_hex(entry.name) and entry.is_file():
                        yield entry.name

    def _publish(self, tmp: Path, sha256: str) -> bool:
        target = self.path(sha256)
        if target.exists():
            tmp.unlink(missing_ok=True)
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        return True

    def _sweep_stale_uploads(self) -> None:
        cutoff = time.time() - _STALE_TMP_S
        for entry in self._tmp.iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
            except FileNotFoundError:
                continue


def _fsync_all(paths: list[Path]) -> None:
    """fsync every file, several at a time."""

    def sync(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    if len(paths) <= 1:
        for path in paths:
            sync(path)
        return
    with ThreadPoolExecutor(max_workers=min(_FSYNC_THREADS, len(paths))) as pool:
        list(pool.map(sync, paths))


def check_name(sha256: str) -> None:
    if not is_sha256_hex(sha256):
        raise BadInput(f"blob name must be 64 lowercase hex characters, got {sha256[:80]!r}")
