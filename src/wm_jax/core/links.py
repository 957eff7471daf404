"""Links from a derived run folder (a temperature sweep's τ, a §5 iteration) to what it reuses
of its parent's: files hard-linked or symlinked, never copied where a link will do, and copies
that a kill cannot leave half-made."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def symlink(target: Path, link: Path) -> None:
    """A relative symlink `link` -> `target`, unless `link` exists already."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists() and not link.is_symlink():
        os.symlink(os.path.relpath(target, link.parent), link)


def link_file(source: Path, dest: Path) -> None:
    """Hard link (no extra disk); a copy, renamed into place, where links are not possible."""
    if dest.exists():
        return
    try:
        os.link(source, dest)
    except OSError:
        temp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(source, temp)
        os.replace(temp, dest)


def link_store(source: Path, dest: Path) -> int:
    """Every episode file of store `source` into store `dest` (with its manifest and meta)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "meta.json"):  # the manifest saves re-hashing every file
        if (source / name).is_file() and not (dest / name).exists():
            shutil.copyfile(source / name, dest / name)
    files = sorted(source.glob("episode_*.npz"))
    for path in files:
        link_file(path, dest / path.name)
    return len(files)


def copy_tree(source: Path, dest: Path) -> None:
    """`source` copied to `dest` via a temporary folder, so a kill never leaves half a copy."""
    temp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(temp, ignore_errors=True)
    shutil.copytree(source, temp, ignore=shutil.ignore_patterns(".*"))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(temp, dest)
