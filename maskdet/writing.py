"""Every file maskdet writes goes through here, and text from files is made safe where it lands.

**Writes are owned.** A file is written to a temporary file in its own folder and renamed into place:
a reader never sees half a file, a full disk never leaves a truncated one, and a symlink planted under
the final name (a downloaded sweep folder whose ``comparison.md`` points at ``~/.bashrc``) is *replaced*,
never written through (``rename`` does not follow the link that stands at its target). A folder that
is itself a symlink is refused for the same reason.

**Text from files is data.** Class names, override values, paths and demographic values come from files
that someone else may have written. Where they land they are escaped: CSV cells that a spreadsheet would
evaluate as a formula (OWASP's rule: a leading ``=``, ``+``, ``-``, ``@``, tab or carriage return) get a
leading ``'``; markdown cells are HTML-escaped, with ``|`` escaped and newlines removed.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from maskdet.errors import MaskdetError

if TYPE_CHECKING:
    import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class UnsafeWriteError(MaskdetError):
    """A write that would go through a symlinked folder."""


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w"):
    """Open a temporary file beside ``path`` (``mode`` "w" or "wb"); on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent.is_symlink():
        raise UnsafeWriteError(f"Refusing to write {path}: its folder {path.parent} is a symbolic link (to "
                               f"{os.readlink(path.parent)}), so the file would land outside this folder. "
                               "Replace the link with a real folder, or write the results elsewhere.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.chmod(tmp, 0o644)  # mkstemp makes files private; reports are for everyone who can read the folder
        os.replace(tmp, path)  # replaces a symlink standing at path; never follows it
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def temporary_sibling(final: Path):
    """A new folder beside ``final`` (named ``.<final's name>-<random>``, as ``remove_orphans`` expects) to
    build into; renamed to ``final`` when the block succeeds, so a reader never sees half a folder, and removed
    when it fails. When ``final`` appeared meanwhile (a parallel job built the same thing) ours is dropped.
    Callers hold ``FileLock(f"{final}.lock")`` around it, so that an orphan is told from a live build."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():  # not "another process won the race"
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_orphans(folder: Path) -> None:
    """Remove the temporary files and folders (``.<final name>-<random>``) that interrupted builds left
    in ``folder``. One is an orphan when nobody holds the lock of its final name: a live build holds it
    from before its temporary is made until after it is renamed or removed."""
    from filelock import FileLock, Timeout

    for tmp in Path(folder).glob(".*-*"):
        final = Path(folder) / tmp.name[1:].rsplit("-", 1)[0]
        try:
            with FileLock(f"{final}.lock", timeout=0):
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)
        except Timeout:  # being built now
            continue


def write_text(path: str | Path, text: str) -> Path:
    with atomic_file(path) as handle:
        handle.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_file(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def csv_cell(value):
    """A cell a spreadsheet shows as text: strings starting like a formula get a leading apostrophe. A carriage
    return becomes a newline: Python's csv module (3.11) quotes cells with ``\\n`` but not a lone ``\\r``, which
    readers then take for the end of a row."""
    if not isinstance(value, str):
        return value
    if value.startswith(FORMULA_START):
        value = "'" + value
    return value.replace("\r\n", "\n").replace("\r", "\n")


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every text cell, header and index label passed through ``csv_cell``."""
    import pandas as pd  # here: the settings checks import this module and answer without pandas

    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or isinstance(out[column].dtype, pd.StringDtype):
            out[column] = out[column].map(csv_cell)
    out.columns = [csv_cell(c) for c in out.columns]
    if out.index.dtype == object:
        out.index = out.index.map(csv_cell).rename(out.index.name)
    return out


def write_csv(frame: pd.DataFrame, path: str | Path, index: bool = False, **options) -> Path:
    """``frame`` as CSV, written atomically, with formula-like text escaped."""
    with atomic_file(path) as handle:
        csv_safe(frame).to_csv(handle, index=index, **options)
    return Path(path)


def save_figure(fig, path: str | Path, **options) -> Path:
    """A matplotlib figure written atomically (the format is the file's extension)."""
    path = Path(path)
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format=path.suffix.lstrip(".") or "png", **options)
    return path


def file_name_part(text, limit: int | None = None) -> str:
    """``text`` as one file or folder name: letters, digits and ``. _ -``, each run of other characters (``/``,
    spaces, quotes, newlines...) as one ``_``; "empty" when nothing but dots is left, so that a stranger's class
    name or photo name never becomes ``..`` or a path."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")[:limit]
    return name if name.strip(".") else "empty"


def percent(value: float) -> str:
    """A share as a percentage for reports: two decimals at most, trailing zeros dropped (0.125 -> "12.5 %")."""
    return f"{100 * value:.2f}".rstrip("0").rstrip(".") + " %"


def one_line(text) -> str:
    """``text`` with control characters (newlines, tabs, escapes) folded into single spaces."""
    return _CONTROL.sub(" ", str(text)).strip()


def plot_text(text) -> str:
    """``text`` from a file as matplotlib text: one line, and ``$`` escaped (it would start mathtext, and a
    malformed formula fails the whole figure)."""
    return one_line(text).replace("$", r"\$")


def md(text) -> str:
    """``text`` safe inside a markdown table cell or line: one line, HTML-escaped, ``|`` escaped."""
    return html.escape(one_line(text), quote=False).replace("|", "\\|")
