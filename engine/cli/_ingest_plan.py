"""``engine ingest``'s plan and progress: the input cut into shards (byte ranges of plain
files cut at line boundaries, whole compressed files) and the checkpoint file that records,
per shard, the offset before which the server has settled every line (atomically
replaced, mode 0600; for exactly the files it was written for)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import suppress

import msgspec

from engine.cli._args import UsageError
from engine.cli._ingest_read import is_zst

_MIN_SHARD_BYTES = 1 << 20


class Shard(msgspec.Struct, kw_only=True):
    path: str
    start: int  # byte offset (of the decompressed stream for .zst files)
    end: int | None  # None: to the end of the file
    done: int  # every line before this offset is settled: acknowledged, or dead-lettered


class _FileSig(msgspec.Struct, kw_only=True):
    path: str
    size_bytes: int
    mtime_ns: int


class Checkpoint(msgspec.Struct, kw_only=True):
    version: int = 1
    files: list[_FileSig]
    shards: list[Shard]


def file_signature(path: str) -> _FileSig:
    st = os.stat(path)
    return _FileSig(path=os.path.abspath(path), size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)


def plan_shards(paths: list[str], processes: int) -> list[Shard]:
    """Compressed files whole; plain files cut into about ``processes`` ranges in total."""
    plain_bytes = sum(os.path.getsize(p) for p in paths if not is_zst(p))
    target_bytes = max(_MIN_SHARD_BYTES, plain_bytes // max(1, processes) + 1)
    shards: list[Shard] = []
    for path in map(os.path.abspath, paths):
        if is_zst(path):
            shards.append(Shard(path=path, start=0, end=None, done=0))
        else:
            shards.extend(_cut(path, target_bytes))
    return shards


def _cut(path: str, target_bytes: int) -> Iterator[Shard]:
    size = os.path.getsize(path)
    start = 0
    with open(path, "rb") as f:
        while start < size:
            f.seek(min(size, start + target_bytes))
            f.readline()  # move the cut to the next line boundary
            end = min(size, f.tell()) if start + target_bytes < size else size
            yield Shard(path=path, start=start, end=end, done=start)
            start = end


def load_checkpoint(path: str, paths: list[str]) -> Checkpoint | None:
    """The saved progress for exactly these files, None if there is none; a checkpoint for
    other or changed files is an error naming the file (resuming it would skip data)."""
    try:
        with open(path, "rb") as f:
            saved = msgspec.json.decode(f.read(), type=Checkpoint)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        raise UsageError(f"ingest: checkpoint {path} cannot be read ({exc}); delete it to start "
                         "over") from None
    current = [file_signature(p) for p in paths]
    if saved.files != current:
        changed = next((c.path for s, c in zip(saved.files, current) if s != c), path)
        raise UsageError(f"ingest: checkpoint {path} was written for other input files ({changed} "
                         "differs); delete it to start over")
    return saved


def save_checkpoint(path: str, checkpoint: Checkpoint) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(checkpoint))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C or a full disk mid-save: the previous checkpoint stands
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_checkpoint_folder(path: str) -> None:
    """Refuse a checkpoint that could not be written, before anything is sent."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--checkpoint {path}: cannot write in {folder} (no such folder, or "
                         "not writable); pass --checkpoint a path in a writable folder")


def default_checkpoint_path(paths: list[str]) -> str:
    return os.path.abspath(paths[0]) + ".ingest-checkpoint"


def rerun_hint(checkpoint_path: str) -> str:
    if os.path.exists(checkpoint_path):
        return f"the same command resumes from the checkpoint {checkpoint_path}"
    return "no line was acknowledged yet: the same command starts over"
