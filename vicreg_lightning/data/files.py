"""Checks of an image folder before anything trains on it: no symbolic-link loop, and no file that
cannot be an image (empty, unreadable, a dangling link, another kind of file, a truncated JPEG or
PNG). Each would otherwise show mid-epoch as a traceback, or not at all: a loop multiplies the
samples and can pull the validation images into training; libjpeg fills a truncated JPEG with
grey and only warns.

The file check opens every file and reads 32 bytes at each end, from a pool of threads; only a
JPEG or PNG whose end marker is not at its end (a truncated file, or a valid one with data appended,
as phones write motion photos) is decoded, to tell the two apart.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vicreg_lightning.errors import DataError

# The first bytes of each format torchvision's ImageFolder reads (IMG_EXTENSIONS).
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"GIF8",
               b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")
_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"
# Encoders may pad a file after its end marker; a truncated file has no marker near its end.
_TAIL = 32
# Named in an error; the rest are counted.
_SHOWN = 5


def _inside(real: str, others: Sequence[str]) -> str | None:
    """The folder of ``others`` that ``real`` is or lies in, or None."""
    return next((other for other in others if real == other or real.startswith(other + os.sep)), None)


def check_folder_walk(folder: Path, other_splits: Sequence[Path] = ()) -> None:
    """Refuse a folder whose walk (symbolic links followed, as torchvision's ImageFolder walks)
    enters a folder twice, a link loop or two links to one folder, or enters another split
    through a link to a folder or to a file."""
    seen: dict[str, str] = {}
    others = [os.path.realpath(p) for p in other_splits]
    for dirpath, _, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            raise DataError(
                f"{dirpath!r} is {seen[real]!r} again (a symbolic link loop, or two links to one folder): its "
                "images would be read more than once; remove the link"
            )
        other = _inside(real, others)
        if other is not None:
            raise DataError(
                f"{dirpath!r} leads into {other!r} (a symbolic link): its images would be trained on and "
                "validated on; remove the link"
            )
        seen[real] = dirpath
        for name in filenames if others else ():
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                continue
            target = os.path.realpath(path)
            if (other := _inside(target, others)) is not None:
                raise DataError(
                    f"{path!r} is a symbolic link to {target!r} in {other!r}: that image would be "
                    "trained on and validated on; remove the link"
                )


def _problem(path: str) -> str | None:
    """Why ``path`` cannot be an image, or None."""
    try:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):  # opening a FIFO would wait for a writer for ever
            return "not a regular file (a FIFO, socket or device)"
        size = status.st_size
        with open(path, "rb") as f:
            head = f.read(_TAIL)
            f.seek(max(0, size - _TAIL))
            tail = f.read(_TAIL)
    except FileNotFoundError:
        return "a dangling symbolic link" if os.path.islink(path) else "gone"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if size == 0:
        return "an empty file"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return None
    if not head.startswith(_SIGNATURES):
        return "not an image (unknown format)"
    if head.startswith(b"\xff\xd8") and _JPEG_END not in tail and not _decodes(path):
        return "a truncated JPEG (no end marker)"
    if head.startswith(b"\x89PNG") and _PNG_END not in tail and not _decodes(path):
        return "a truncated PNG (no end marker)"
    return None


def _decodes(path: str) -> bool:
    """Whether Pillow decodes the whole image (it refuses a truncated one)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def find_bad_images(paths: Sequence[str], threads: int = 16) -> list[tuple[str, str]]:
    """``[(path, reason)]`` for each file of ``paths`` that cannot be an image."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        problems = list(pool.map(_problem, paths, chunksize=256))
    return [(path, problem) for path, problem in zip(paths, problems) if problem is not None]


def describe_bad_images(bad: list[tuple[str, str]], total: int) -> str:
    shown = "; ".join(f"{path}: {reason}" for path, reason in bad[:_SHOWN])
    more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    return f"{len(bad)} of {total} image files cannot be read ({shown}{more})"
