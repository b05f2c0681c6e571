"""Files on disk: where llm-tuning caches, output names that never overwrite, and writes that a crash cannot leave
half done: single files and whole folders are written under a temporary name beside their own, flushed to the
disk (fsync) and renamed; a folder can carry a manifest (its files, sizes and sha256) that says it is complete.
A write that fails for want of room or permission is a one-line UserError naming the path."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import resource
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

PARTIAL_SUFFIX = ".partial"  # what is being written: never read, deleted when found later
REPLACED_SUFFIX = ".replaced"  # a folder set aside while its new version is renamed into place
MANIFEST_FILE = "manifest.json"
# a write failed because of the disk or the rights on it, not because of llm-tuning
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}


def cache_dir() -> Path:
    """Converted models and tokenised data: LLM_TUNING_CACHE, or ~/.cache/llm-tuning."""
    return Path(os.environ.get("LLM_TUNING_CACHE") or Path.home() / ".cache" / "llm-tuning")


def free_path(path: Path) -> Path:
    """`path`, or `name-1.ext`, `name-2.ext` ... when it exists."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def fsync(path: Path) -> None:
    """Flush a file's or a folder's content (a folder: its entries, so that a rename in it lasts) to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_file_whole(path: Path, content: str | bytes) -> None:
    """Write `path` so that it is either its old self or entirely `content`, even if the process dies midway. The
    temporary name carries the process id: processes that write the same file (a shared cache) never mix."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    with write_errors(path):
        try:
            partial.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
            move_into_place(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


def move_into_place(source: Path, target: Path) -> None:
    """Rename the finished file `source` over `target` (in the same file system), flushed to the disk first: `target`
    is its old self or the new file, never a part of it."""
    fsync(source)
    os.replace(source, target)
    fsync(target.parent)


def write_json(path: Path, value) -> None:
    """`value` as indented JSON, written whole."""
    write_file_whole(path, json.dumps(value, indent=2, ensure_ascii=False))


@contextmanager
def folder_written_whole(target: Path, manifest: bool = False) -> Iterator[Path]:
    """Yields an empty `TARGET.partial` folder to write into; when the block ends without an error its files are
    flushed to the disk, it gets a manifest.json if asked, and it replaces `target`. So `target` is never
    half-written: an interrupted write leaves only the .partial folder (deleted on the next try); a failed one
    removes it."""
    partial = partial_path(target)
    shutil.rmtree(partial, ignore_errors=True)
    with write_errors(target):
        partial.mkdir(parents=True)
        try:
            yield partial
            if manifest:
                write_manifest(partial)
            sync_tree(partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        replaced = target.with_name(target.name + REPLACED_SUFFIX)
        if target.exists():
            shutil.rmtree(replaced, ignore_errors=True)
            target.rename(replaced)  # set aside, not deleted, until the new folder is in place
        partial.rename(target)
        fsync(target.parent)
        shutil.rmtree(replaced, ignore_errors=True)


@contextmanager
def files_written_whole(folder: Path) -> Iterator[Path]:
    """Yields an empty folder to write files into; when the block ends without an error each of them, flushed to
    the disk, replaces its namesake in `folder` by a rename: every file is either old or new, never half-written."""
    staging = folder / ("files" + PARTIAL_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)
    with write_errors(folder):
        staging.mkdir(parents=True)
        try:
            yield staging
            sync_tree(staging)
            for item in sorted(staging.iterdir()):
                os.replace(item, folder / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        fsync(folder)


def sync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):  # files before the folders holding them
        fsync(path)
    fsync(folder)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_entries(folder: Path, names: list[str] | None = None) -> dict:
    """{relative path: {size, sha256}} for `names` in `folder`, or for every file under it."""
    if names is None:
        names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    return {name: {"size": (folder / name).stat().st_size, "sha256": sha256(folder / name)} for name in names}


def write_manifest(folder: Path, names: list[str] | None = None) -> None:
    """FOLDER/manifest.json: the files that make the folder complete (`names`, or all of them) with sizes and
    sha256; written last, so that its presence says the rest was written whole."""
    write_json(folder / MANIFEST_FILE, {"files": manifest_entries(folder, names)})


def manifest_problem(folder: Path) -> str | None:
    """What is wrong with `folder` against its manifest.json, in a few words, or None when it is complete."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return f"no {MANIFEST_FILE} (it was not written whole)"
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is damaged"
    for name, expected in files.items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected["size"]:
            return f"{name} has {size} bytes instead of {expected['size']} (truncated or changed)"
        if sha256(file) != expected["sha256"]:
            return f"{name} does not match its sha256 in {MANIFEST_FILE} (damaged or changed)"
    return None


@contextmanager
def write_errors(path: Path) -> Iterator[None]:
    """A write in the block that fails for want of room or rights (a full disk, the file size limit, a read-only
    folder) becomes a one-line UserError naming `path`; any other failure is left as it is."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        reason = write_failure(Path(path), error)
        if reason is None:
            raise
        raise UserError(f"cannot write {path}: {reason}") from error


def write_failure(path: Path, error: Exception) -> str | None:
    """Why a write under `path` failed, when the disk or its rights are the reason; None otherwise. torch.save
    hides the errno ("unexpected pos ..."), so then the disk itself is asked."""
    code = error.errno if isinstance(error, OSError) else None
    found = re.search(r"os error (\d+)", str(error))  # safetensors' I/O errors
    code = code or (int(found.group(1)) if found else None)
    if code is None:
        code = disk_problem(path)
    if code not in WRITE_ERRNOS:
        return None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if code == errno.EFBIG and limit != resource.RLIM_INFINITY:
        return f"{os.strerror(code)} (the file size limit, ulimit -f, is {limit} bytes)"
    return os.strerror(code)


def disk_problem(path: Path) -> int | None:
    """The errno a write under `path` would fail with for want of room or rights, found by asking the disk."""
    folder = next((p for p in [path, *path.parents] if p.is_dir()), None)
    if folder is None:
        return None
    disk = os.statvfs(folder)
    if disk.f_bavail * disk.f_frsize < 1 << 20:
        return errno.ENOSPC
    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return errno.EFBIG
    if not os.access(folder, os.W_OK):
        return errno.EACCES
    return None
