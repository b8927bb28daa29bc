"""Issue 10 items 2 and 7: outputs never replace non-regular files, never create missing
directories silently, and are written atomically (nothing partial left behind)."""

from __future__ import annotations

import os

import pytest

from symbnmf._errors import OutputExistsError, OutputPathError
from symbnmf._output import atomic_output, check_output, write_text


def test_refuses_device_even_with_force():
    with pytest.raises(OutputPathError, match="not a regular file"):
        check_output("/dev/null", force=True)


def test_refuses_directory_symlink_and_fifo(tmp_path):
    with pytest.raises(OutputPathError, match="directory"):
        check_output(tmp_path, force=True)
    target = tmp_path / "t.txt"
    target.write_text("keep")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with pytest.raises(OutputPathError, match="symbolic link"):
        write_text(link, "x", force=True)
    assert target.read_text() == "keep"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputPathError):
        check_output(fifo, force=True)


def test_missing_parent_is_an_error_not_created(tmp_path):
    with pytest.raises(OutputPathError, match="does not exist"):
        write_text(tmp_path / "nodir" / "x.py", "x", force=False)
    assert not (tmp_path / "nodir").exists()
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(OutputPathError):
        write_text(f / "x.py", "x", force=True)


def test_existing_file_needs_force(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("old")
    with pytest.raises(OutputExistsError):
        write_text(f, "new", force=False)
    write_text(f, "new", force=True)
    assert f.read_text() == "new"


def test_interrupted_write_leaves_target_and_no_temporary(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_output(f, force=True) as fh:
        fh.write("half")
        raise KeyboardInterrupt
    assert f.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
