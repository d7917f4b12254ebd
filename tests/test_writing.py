"""maskdet.writing: every file is written whole, never through a planted symlink, and text from files lands
escaped (CSV formulas, markdown and HTML)."""

from __future__ import annotations

import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from maskdet.writing import UnsafeWriteError, md, save_figure, write_csv, write_text  # noqa: E402


def test_a_planted_symlink_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("comparison.md", "comparison.csv", "figure.png"):
        (run / name).symlink_to(victim)
    write_text(run / "comparison.md", "report\n")
    write_csv(pd.DataFrame({"a": [1]}), run / "comparison.csv")
    fig = plt.figure()
    save_figure(fig, run / "figure.png")
    plt.close(fig)
    assert victim.read_text() == "precious\n"
    assert not any((run / n).is_symlink() for n in ("comparison.md", "comparison.csv", "figure.png"))
    assert (run / "comparison.md").read_text() == "report\n"
    assert (run / "figure.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_a_symlinked_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "explain").symlink_to(outside)
    with pytest.raises(UnsafeWriteError, match="symbolic link"):
        write_text(tmp_path / "run" / "explain" / "notes.txt", "x")
    assert list(outside.iterdir()) == []


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("old\n")

    with pytest.raises(TypeError):  # the write fails half-way: nothing replaces the old file
        write_text(path, 5)  # type: ignore[arg-type]
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["metrics.csv"]


def test_csv_cells_a_spreadsheet_would_evaluate_are_escaped(tmp_path):
    names = ["=HYPERLINK(\"http://x\",\"y\")", "@SUM(A1)", "+cmd|' /C calc'!A0", "-2+3", "\tx", "\rx", "with_mask"]
    frame = pd.DataFrame({"label_name": names, "n": range(len(names)), "=head": names})
    write_csv(frame, tmp_path / "p.csv")
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["label_name", "n", "'=head"]
    cells = [r[0] for r in rows[1:]]
    assert cells[:5] == ["'" + n for n in names[:5]]
    assert cells[5] == "'\nx"  # a lone carriage return would end the row in most readers
    assert cells[6] == "with_mask"
    assert [r[1] for r in rows[1:]] == [str(i) for i in range(len(names))]  # numbers untouched


def test_markdown_cells_are_escaped():
    assert md("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert md("a|b\nc") == "a\\|b c"
    assert "\n" not in md("x\r\n| evil | row |")
