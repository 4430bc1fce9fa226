"""Files and folders written safely: atomically (complete under the final name, or not at
all) or, for logs, one flushed line at a time whose readers skip a line torn by a kill."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

# Suffixes that image writers (and we) recognise by the end of the name, longest first.
_COMPOUND_SUFFIXES = (".nii.gz", ".tar.gz")


def split_suffix(path: Path) -> tuple[str, str]:
    """Split a file name into stem and suffix, keeping compound suffixes like .nii.gz whole."""
    name = path.name
    for suffix in _COMPOUND_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return path.stem, path.suffix


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` if the block succeeds.

    The temporary name keeps the suffix (image writers choose the format by it) and starts
    with a dot, so a crash or a full disk leaves no file under the final name, and the
    partial file is removed when the block raises.
    """
    final = Path(path)
    stem, suffix = split_suffix(final)
    temporary = final.with_name(f".{stem}.partial-{secrets.token_hex(4)}{suffix}")
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; rename it to `path` if the block succeeds.

    Named like `atomic_write`'s files, so `sweep_partials` finds what a killed process left.
    An empty folder already at `path` is replaced; the temporary folder is removed when the
    block raises. Its permissions are those of any new folder (mkdtemp's are private).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        yield staging
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def sweep_partials(folder: str | os.PathLike, stems: Iterable[str] | None = None) -> int:
    """Delete the temporary files and folders a killed process left in `folder`; returns how many.

    With `stems`, only the temporary files of those final names (e.g. the cases one worker
    owns), so that other workers writing into the same folder keep theirs.
    """
    prefixes = None if stems is None else tuple(f".{stem}.partial-" for stem in stems)
    count = 0
    for leftover in Path(folder).glob(".*.partial-*"):
        if prefixes is not None and not leftover.name.startswith(prefixes):
            continue
        with contextlib.suppress(FileNotFoundError):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
            count += 1
    return count


def create_once(path: str | os.PathLike, text: str) -> bool:
    """Write `text` to `path` unless a file is there already; returns whether this call wrote it.

    Of several processes racing to create one file, one wins and the others find its
    complete content: the file appears by a hard link, which never replaces a file.
    """
    final = Path(path)
    stem, suffix = split_suffix(final)
    temporary = final.with_name(f".{stem}.partial-{secrets.token_hex(4)}{suffix}")
    try:
        temporary.write_text(text)
        try:
            os.link(temporary, final)
        except FileExistsError:
            return False
        except OSError:
            # A filesystem without hard links: check, then rename (a narrow race, never a torn file).
            if final.exists():
                return False
            os.replace(temporary, final)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a log file and flush it to disk.

    One write per line: a kill leaves at worst a torn last line, which readers skip; the
    next line then starts on a line of its own.
    """
    torn = False
    with contextlib.suppress(OSError), open(path, "rb") as existing:
        existing.seek(-1, os.SEEK_END)  # OSError for an empty file: nothing torn
        torn = existing.read(1) != b"\n"
    with open(path, "a") as log:
        log.write(("\n" if torn else "") + line + "\n")
        log.flush()
        os.fsync(log.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a log written by `append_line`; a line torn by a kill is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def write_json(path: str | os.PathLike, data: object) -> None:
    """`data` as indented JSON, written atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """`text` written atomically, as UTF-8."""
    with atomic_write(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
