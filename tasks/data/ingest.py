"""ImageFolder ingestion: scan a user's directory, reject bad files by name, describe each image.

A directory holds one subfolder per class (the folder name is the class name); images may sit
at any depth below their class folder. Every problem found is named with the file's path
relative to the root and what is wrong with it. Files can be skipped (and counted) only when
the dataset's params say ``skip_bad_files: true``; structural problems (no class folders, an
empty class folder) are never skipped, since skipping them would change the label space.

An unlabelled folder (``data.source.unlabeled``) has no classes: every image at any depth is
one class, ``unlabeled``; its subfolder names are only where the files sit.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.data.manifest import GREY_MODES

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
SHOWN_PROBLEMS = 10  # at most this many named in one error message
UNLABELED = "unlabeled"  # the one class of an unlabelled folder


class IngestError(ValueError):
    """A dataset directory has files that cannot be used; the message names each one."""


@dataclass(frozen=True)
class BadFile:
    path: str  # relative to the dataset root
    problem: str

    def __str__(self) -> str:
        return f"{self.path!r}: {self.problem}"


@dataclass(frozen=True)
class ImageInfo:
    """What the manifest records about one decoded image."""

    width: int
    height: int
    channels: int
    mode: str
    sha256: str
    mean: float
    std: float
    bytes: int = 0  # the file's size: what its shard will hold for it


@dataclass
class FolderScan:
    root: Path
    classes: tuple[str, ...]
    files: list[tuple[str, str]]  # (path relative to root, class name)
    bad: list[BadFile]  # skippable problems, one per file
    fatal: list[BadFile]  # problems that no params setting may skip


def pixel_sha256(pixels: np.ndarray, mode: str) -> str:
    """Hash of decoded pixels, mode and shape: re-encoded copies count as duplicates."""
    header = f"{mode}:{'x'.join(map(str, pixels.shape))}:".encode()
    return hashlib.sha256(header + np.ascontiguousarray(pixels).tobytes()).hexdigest()


def intensity_stats(pixels: np.ndarray) -> tuple[float, float]:
    values = pixels.astype(np.float32)
    return float(values.mean()), float(values.std())


def name_problem(name: str) -> str | None:
    """Names that break tools downstream: control characters, undecodable bytes."""
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in name):
        return "file name is not valid UTF-8"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        return "file name has control or invisible characters"
    if name != name.strip():
        return "file name starts or ends with white space"
    return None


def _inside(path: Path, root: Path) -> bool:
    """The link stays in the dataset, or points into a DVC cache (``cache.type: symlink``)."""
    real = path.resolve()
    if real.is_relative_to(root):
        return True
    parts = real.parts
    return any(parts[i : i + 2] == (".dvc", "cache") for i in range(len(parts) - 1))


def scan_image_folder(root: Path, unlabeled: bool = False) -> FolderScan:
    """List the class folders and candidate image files; name every structural problem.
    ``unlabeled``: the whole tree is the one class ``unlabeled``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise IngestError(f"{root}: dataset directory not found")
    real_root = root.resolve()
    scan = FolderScan(root, (), [], [], [])
    if unlabeled:
        scan.classes = (UNLABELED,)
        if _scan_class(root, real_root, "", scan, UNLABELED) == 0:
            raise IngestError(f"{root}: no image files (an unlabelled folder, at any depth)")
        return scan
    class_dirs = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue  # .dvc, .DS_Store, .gitignore and the like
        rel = entry.name
        if entry.is_symlink() and not _inside(Path(entry.path), real_root):
            scan.fatal.append(BadFile(rel, "symlink points outside the dataset root"))
        elif entry.is_dir():
            problem = name_problem(entry.name)
            if problem:
                scan.fatal.append(BadFile(rel, f"class folder: {problem}"))
            else:
                class_dirs.append(entry.name)
        else:
            scan.bad.append(BadFile(rel, "file outside any class folder"))
    if not class_dirs and not scan.fatal:
        raise IngestError(f"{root}: no class folders (expected one subfolder per class)")
    scan.classes = tuple(class_dirs)
    for name in class_dirs:
        found = _scan_class(root, real_root, name, scan)
        if found == 0:
            scan.fatal.append(BadFile(name, "empty class folder (no image files)"))
    return scan


def _scan_class(
    root: Path, real_root: Path, name: str, scan: FolderScan, label: str | None = None
) -> int:
    """Files below ``root/name`` (every depth) as images of class ``label`` (default
    ``name``); returns how many."""
    label = label or name
    found = 0
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
        here = Path(dirpath)
        real = here.resolve()
        if real in seen:  # a link back to an ancestor
            dirnames[:] = []
            continue
        seen.add(real)
        for d in list(dirnames):
            sub = here / d
            rel = sub.relative_to(root).as_posix()
            if d.startswith("."):
                dirnames.remove(d)
            elif sub.is_symlink() and not _inside(sub, real_root):
                scan.bad.append(BadFile(rel, "symlink points outside the dataset root"))
                dirnames.remove(d)
        dirnames.sort()
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            path = here / filename
            rel = path.relative_to(root).as_posix()
            problem = _file_problem(path, filename, real_root)
            if problem:
                scan.bad.append(BadFile(rel, problem))
            else:
                scan.files.append((rel, label))
                found += 1
    return found


def _file_problem(path: Path, filename: str, real_root: Path) -> str | None:
    problem = name_problem(filename)
    if problem:
        return problem
    if path.is_symlink() and not _inside(path, real_root):
        return "symlink points outside the dataset root"
    if not path.exists():
        return "broken symlink"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file (extension {path.suffix or 'none'!r}; expected one of " + (
            ", ".join(sorted(IMAGE_SUFFIXES)) + ")"
        )
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    return None


def inspect_image(path: Path, max_pixels: int) -> ImageInfo:
    """Decode one image fully (truncation shows only then) and describe it; raises ValueError."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ValueError(
                        f"image too large ({width}x{height} = {width * height:,} pixels > "
                        f"data.max_image_pixels {max_pixels:,}; a decompression bomb?)"
                    )
                img.load()
                mode, channels = img.mode, len(img.getbands())
                grey = mode in GREY_MODES
                pixels = np.asarray(img.convert("L" if grey else "RGB"))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(f"image too large, refused as a decompression bomb ({exc})") from None
        except UnidentifiedImageError:
            raise ValueError("not a readable image (no image format recognises it)") from None
        except (OSError, SyntaxError, EOFError) as exc:
            raise ValueError(f"unreadable or truncated image ({exc})") from None
    mean, std = intensity_stats(pixels)
    sha256 = pixel_sha256(pixels, mode)
    return ImageInfo(width, height, channels, mode, sha256, mean, std, path.stat().st_size)


def describe_error(bad: list[BadFile], root: Path, what: str) -> str:
    shown = "; ".join(str(b) for b in bad[:SHOWN_PROBLEMS])
    more = f"; and {len(bad) - SHOWN_PROBLEMS} more" if len(bad) > SHOWN_PROBLEMS else ""
    return f"{what}: {len(bad)} bad file(s) in {root}: {shown}{more}"
