"""Where audit files live: the names of a rotated series and reading their lines.

Owns the file naming, documented in ``docs/audit.md``:

* the live file is the configured path, e.g. ``audit.jsonl``;
* when it rotates it is renamed, once and for good, to ``audit.jsonl.000001``,
  ``audit.jsonl.000002``, ... (a higher number is newer; the live file is newest of all);
* a "series" is a live file and its rotated files; one series holds one chain (or, after
  an unreadable previous file, a chain and its successor).

Readers order a series by these names; the chain inside the files proves the order, so a
renamed or missing file shows up as a break, not as a silent reordering.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from diode.errors import AuditError

from .entry import MAX_LINE_BYTES

_ROTATED_RE = re.compile(r"(?P<base>.+)\.(?P<index>\d+)")
INDEX_WIDTH = 6


def rotated_path(live: Path, index: int) -> Path:
    return live.with_name(f"{live.name}.{index:0{INDEX_WIDTH}d}")


def rotated_files(live: Path) -> list[tuple[int, Path]]:
    """The rotated files of ``live``'s series, oldest first."""
    found: list[tuple[int, Path]] = []
    directory = live.parent
    if not directory.is_dir():
        return found
    prefix = live.name + "."
    for name in os.listdir(directory):
        if name.startswith(prefix):
            suffix = name[len(prefix) :]
            if suffix.isdigit():
                found.append((int(suffix), directory / name))
    found.sort()
    return found


@dataclass(frozen=True, slots=True)
class Series:
    """The files of one series, oldest first; ``name`` is the live file's path."""

    name: str
    files: tuple[Path, ...]


def _series_key(path: Path) -> tuple[Path, int | None]:
    match = _ROTATED_RE.fullmatch(path.name)
    if match is not None:
        return path.with_name(match["base"]), int(match["index"])
    return path, None


def _looks_like_audit(name: str) -> bool:
    match = _ROTATED_RE.fullmatch(name)
    base = match["base"] if match is not None else name
    return base.endswith(".jsonl")


def expand_inputs(inputs: Sequence[str | Path]) -> list[Series]:
    """Turn files, directories and glob patterns into series, each ordered oldest first.

    A directory contributes every ``*.jsonl`` and ``*.jsonl.N`` file in it. Files are
    grouped by series (``x.jsonl`` with ``x.jsonl.000001``...), so the logs of a sender and
    a receiver given together are verified as two chains.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(
                path / name for name in sorted(os.listdir(path)) if _looks_like_audit(name)
            )
        elif path.exists():
            paths.append(path)
        elif glob.has_magic(str(item)):
            matches = sorted(glob.glob(str(item)))
            if not matches:
                raise AuditError(f"no audit file matches {item}")
            paths.extend(Path(m) for m in matches)
        else:
            raise AuditError(f"audit file {item} does not exist")
    groups: dict[Path, list[tuple[int, Path]]] = {}
    for path in dict.fromkeys(paths):
        base, index = _series_key(path)
        # the live file has no number: it sorts after every rotated one
        order = index if index is not None else 1 << 62
        groups.setdefault(base, []).append((order, path))
    return [
        Series(name=str(base), files=tuple(p for _, p in sorted(members)))
        for base, members in groups.items()
    ]


@dataclass(frozen=True, slots=True)
class RawLine:
    """One line of a file. ``complete`` is False for a last line without its newline."""

    number: int
    data: bytes
    complete: bool
    #: the line was longer than ``MAX_LINE_BYTES``; ``data`` holds only its start
    oversize: bool = False


def iter_lines(path: Path) -> Iterator[RawLine]:
    """The lines of ``path`` without their newlines, never holding more than one line."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise AuditError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        number = 0
        while True:
            data = handle.readline(MAX_LINE_BYTES + 1)
            if not data:
                return
            number += 1
            if data.endswith(b"\n"):
                yield RawLine(number, data[:-1], True)
                continue
            if len(data) <= MAX_LINE_BYTES:
                yield RawLine(number, data, False)  # end of file inside a line
                return
            # skip the rest of an oversize line without holding it
            rest = data
            while rest and not rest.endswith(b"\n"):
                rest = handle.readline(MAX_LINE_BYTES + 1)
            yield RawLine(number, data[:MAX_LINE_BYTES], bool(rest), oversize=True)
