"""Where the Parquet files live: a local directory, or any filesystem ``pyarrow.fs`` opens.

Both backends publish a file so that no reader ever sees part of it, and never over an existing
file:

* local: written to ``.part-N.parquet.tmp``, fsynced, hard-linked to ``part-N.parquet`` (a link
  fails when the name exists, where a rename would silently replace it), the temporary name
  removed and the directory fsynced;
* object stores (``s3://...``): S3 has no rename - a "move" is a copy and a delete - but an object
  appears only when its upload completes, so the file is uploaded straight to its final key.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from tradecli.errors import TradeError
from tradecli.state import data_dir, fsync_dir, state_dir
from tradecli.tickstore.layout import PartFile, is_tmp, parse_part, partition, tmp_name, valid_date

IO_ERROR = 74


class StoreError(TradeError):
    """A store operation that failed on the filesystem (exit status 74)."""

    exit_code = IO_ERROR


def default_path() -> str:
    return str(data_dir() / "store")


def mask_uri(uri: str) -> tuple[str, str | None]:
    """The URI with any password replaced by ``***``, and the password (to mask in logs)."""
    parts = urlsplit(uri)
    if parts.password:
        secret = parts.password
        netloc = parts.netloc.replace(f":{secret}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl(), unquote(secret)
    return uri, None


class Backend(ABC):
    """The dataset's files, by partition."""

    display: str  # how the store is named in messages (credentials masked)
    local: bool

    @abstractmethod
    def list_types(self) -> list[str]: ...

    @abstractmethod
    def list_dates(self, rtype: str) -> list[str]: ...

    @abstractmethod
    def list_entries(self, rtype: str, day: str) -> list[tuple[str, int]]:
        """(name, size) of every file in a partition, temporary ones included."""

    @abstractmethod
    def open_input(self, rel: str) -> pa.NativeFile: ...

    @abstractmethod
    def publish(self, rel_dir: str, name: str, data: pa.Buffer | bytes) -> None:
        """Make ``rel_dir/name`` appear whole and durable; refuse to replace an existing file."""

    @abstractmethod
    def remove(self, rel_dir: str, names: list[str]) -> None: ...

    @abstractmethod
    def remove_partition(self, rtype: str, day: str) -> None: ...

    @abstractmethod
    def wal_dir(self) -> Path:
        """Where this store's write-ahead log lives when ``--wal-dir`` is not given (local disk)."""

    @abstractmethod
    @contextmanager
    def maintenance_lock(self) -> Iterator[None]:
        """Held by ``compact`` and ``prune`` so two of them never rewrite the same partition."""

    def partitions(self) -> Iterator[tuple[str, str]]:
        """Every (record type, date) partition, in order."""
        for rtype in self.list_types():
            for day in self.list_dates(rtype):
                yield rtype, day

    def max_seq(self) -> int:
        """The highest sequence number of any part file in the store (0 when there is none)."""
        highest = 0
        for rtype, day in self.partitions():
            for f in self.list_files(rtype, day):
                highest = max(highest, f.last or 0)
        return highest

    def list_files(self, rtype: str, day: str) -> list[PartFile]:
        return [PartFile.of(n, s) for n, s in self.list_entries(rtype, day) if n.endswith(".parquet")]

    def path_of(self, rel: str) -> str:
        return f"{self.display.rstrip('/')}/{rel}"

    def remove_stale_tmp(self, rtype: str, day: str, names: set[str] | None = None) -> int:
        """Remove leftover in-flight files (all of them, or only those named)."""
        stale = [n for n, _ in self.list_entries(rtype, day) if is_tmp(n) and (names is None or n in names)]
        if stale:
            self.remove(partition(rtype, day), stale)
        return len(stale)


def _write_all(fd: int, data: pa.Buffer | bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class LocalBackend(Backend):
    local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.display = str(root)

    def _dir(self, rel: str) -> Path:
        return self.root / rel

    def _names(self, path: Path, prefix: str) -> list[str]:
        try:
            with os.scandir(path) as entries:
                return sorted(
                    e.name[len(prefix) :] for e in entries if e.name.startswith(prefix) and e.is_dir()
                )
        except FileNotFoundError:
            return []
        except OSError as err:
            raise StoreError(f"cannot list {path}: {err.strerror}") from err

    def list_types(self) -> list[str]:
        return self._names(self.root, "type=")

    def list_dates(self, rtype: str) -> list[str]:
        return [d for d in self._names(self.root / f"type={rtype}", "date=") if valid_date(d)]

    def list_entries(self, rtype: str, day: str) -> list[tuple[str, int]]:
        path = self._dir(partition(rtype, day))
        out = []
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    with suppress(FileNotFoundError):
                        if entry.is_file():
                            out.append((entry.name, entry.stat().st_size))
        except FileNotFoundError:
            return []
        except OSError as err:
            raise StoreError(f"cannot list {path}: {err.strerror}") from err
        return sorted(out)

    def open_input(self, rel: str) -> pa.NativeFile:
        path = self._dir(rel)
        try:
            return pa.OSFile(str(path), "r")
        except FileNotFoundError:
            raise
        except OSError as err:
            raise StoreError(f"cannot read {path}: {err}") from err

    def _makedirs(self, path: Path) -> None:
        makedirs_durable(path)

    def publish(self, rel_dir: str, name: str, data: pa.Buffer | bytes) -> None:
        directory = self._dir(rel_dir)
        target = directory / name
        tmp = directory / tmp_name(name)
        try:
            self._makedirs(directory)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, target)
            except FileExistsError:
                os.unlink(tmp)
                raise StoreError(
                    f"{target} already exists: is another trade store writing to {self.display}?"
                ) from None
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                if target.exists():  # a filesystem without hard links: check, then rename
                    os.unlink(tmp)
                    raise StoreError(f"{target} already exists") from None
                os.replace(tmp, target)
            else:
                os.unlink(tmp)
            fsync_dir(directory)
        except StoreError:
            raise
        except OSError as err:
            raise StoreError(f"cannot write {target}: {err.strerror or err}") from err

    def remove(self, rel_dir: str, names: list[str]) -> None:
        directory = self._dir(rel_dir)
        for name in names:
            try:
                os.unlink(directory / name)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise StoreError(f"cannot remove {directory / name}: {err.strerror}") from err
        if names:
            with suppress(FileNotFoundError):
                fsync_dir(directory)

    def remove_partition(self, rtype: str, day: str) -> None:
        directory = self._dir(partition(rtype, day))
        self.remove(partition(rtype, day), [n for n, _ in self.list_entries(rtype, day)])
        try:
            directory.rmdir()
            fsync_dir(directory.parent)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise StoreError(f"cannot remove {directory}: {err.strerror}") from err

    def wal_dir(self) -> Path:
        return self.root / "_tradecli" / "wal"

    @contextmanager
    def maintenance_lock(self) -> Iterator[None]:
        path = self.root / "_tradecli" / "maintenance.lock"
        with exclusive_lock(path, "a trade store compact or prune is already running on " + self.display):
            yield


class RemoteBackend(Backend):
    """Any ``pyarrow.fs`` filesystem other than the local one (S3, GCS, HDFS, ...)."""

    local = False

    def __init__(self, fs: pafs.FileSystem, root: str, display: str, identity: str | None = None) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.display = display
        self.identity = identity or display  # the masked URI with its endpoint: names the WAL

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _children(self, rel: str) -> list[pafs.FileInfo]:
        try:
            return list(self.fs.get_file_info(pafs.FileSelector(self._path(rel), allow_not_found=True)))
        except OSError as err:
            raise StoreError(f"cannot list {self.path_of(rel)}: {err}") from err

    def _names(self, rel: str, prefix: str) -> list[str]:
        names = []
        for info in self._children(rel):
            if info.type == pafs.FileType.Directory and info.base_name.startswith(prefix):
                names.append(info.base_name[len(prefix) :])
        return sorted(names)

    def list_types(self) -> list[str]:
        return self._names("", "type=")

    def list_dates(self, rtype: str) -> list[str]:
        return [d for d in self._names(f"type={rtype}", "date=") if valid_date(d)]

    def list_entries(self, rtype: str, day: str) -> list[tuple[str, int]]:
        infos = self._children(partition(rtype, day))
        return sorted((i.base_name, int(i.size or 0)) for i in infos if i.type == pafs.FileType.File)

    def open_input(self, rel: str) -> pa.NativeFile:
        try:
            return self.fs.open_input_file(self._path(rel))
        except FileNotFoundError:
            raise
        except OSError as err:
            if "NoSuchKey" in str(err) or "not found" in str(err).lower():
                raise FileNotFoundError(self.path_of(rel)) from err
            raise StoreError(f"cannot read {self.path_of(rel)}: {err}") from err

    def publish(self, rel_dir: str, name: str, data: pa.Buffer | bytes) -> None:
        path = self._path(f"{rel_dir}/{name}")
        try:
            if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
                raise StoreError(
                    f"{self.path_of(rel_dir + '/' + name)} already exists: "
                    f"is another trade store writing to {self.display}?"
                )
            with self.fs.open_output_stream(path) as out:
                out.write(data)
        except StoreError:
            raise
        except OSError as err:
            raise StoreError(f"cannot write {self.path_of(rel_dir + '/' + name)}: {err}") from err

    def remove(self, rel_dir: str, names: list[str]) -> None:
        for name in names:
            try:
                self.fs.delete_file(self._path(f"{rel_dir}/{name}"))
            except FileNotFoundError:
                pass
            except OSError as err:
                raise StoreError(f"cannot remove {self.path_of(rel_dir + '/' + name)}: {err}") from err

    def remove_partition(self, rtype: str, day: str) -> None:
        self.remove(partition(rtype, day), [n for n, _ in self.list_entries(rtype, day)])
        with suppress(OSError):
            self.fs.delete_dir(self._path(partition(rtype, day)))

    def max_seq(self) -> int:
        # one recursive listing instead of one request per partition
        highest = 0
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True))
        except OSError as err:
            raise StoreError(f"cannot list {self.display}: {err}") from err
        for info in infos:
            if info.type == pafs.FileType.File:
                seqs = parse_part(info.base_name)
                if seqs:
                    highest = max(highest, seqs[1])
        return highest

    def _slug(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.root).strip("_")[-60:]
        digest = hashlib.sha256(self.identity.encode()).hexdigest()[:12]
        return f"{safe}-{digest}"

    def wal_dir(self) -> Path:
        return state_dir("store") / "wal" / self._slug()

    @contextmanager
    def maintenance_lock(self) -> Iterator[None]:
        # Object stores have no locks; one machine's compact and prune still exclude each other.
        path = state_dir("store") / "locks" / f"{self._slug()}.lock"
        with exclusive_lock(path, "a trade store compact or prune is already running on " + self.display):
            yield


def makedirs_durable(path: Path) -> None:
    """Create missing directories and make each new entry durable in its parent."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with suppress(FileExistsError):
            directory.mkdir()
        fsync_dir(directory.parent)


@contextmanager
def exclusive_lock(path: Path, busy: str) -> Iterator[int]:
    """An advisory lock held while the block runs; ``busy`` is the error when someone holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise TradeError(f"{busy}" + (f" (pid {holder})" if holder else "")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield fd
    finally:
        os.close(fd)


def open_backend(path: str | None, log: Any = None) -> Backend:
    """The backend for PATH: a directory, a ``file://`` URI, or any URI pyarrow.fs understands.

    Object-store credentials come from the usual places (``AWS_ACCESS_KEY_ID`` and friends,
    ``~/.aws``); the endpoint may be given in the URI (``?endpoint_override=host:port&scheme=http``)
    or with ``AWS_ENDPOINT_URL``. A password in the URI is masked in every message.
    """
    text = path or os.environ.get("TRADE_STORE") or default_path()
    if "://" not in text:
        return LocalBackend(Path(text).expanduser())
    display, secret = mask_uri(text)
    secrets = [s for s in {secret, urlsplit(text).password} if s]  # as given, and decoded
    if log is not None:
        for value in secrets:
            log.add_secret(value)
    if text.startswith("file://"):
        return LocalBackend(Path(unquote(urlsplit(text).path)))
    try:
        fs, root = pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as err:
        message = str(err)
        for value in secrets:
            message = message.replace(value, "***")
        raise TradeError(f"cannot open store {display}: {message}", 2) from None
    if isinstance(fs, pafs.LocalFileSystem):
        return LocalBackend(Path(root))
    bare = urlsplit(display)
    return RemoteBackend(fs, root, bare._replace(query="", fragment="").geturl(), identity=display)
