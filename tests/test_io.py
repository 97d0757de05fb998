"""Atomic writes: the content lands whole, a symlinked output stays a link, an overwritten file
keeps its permissions, and a failed write leaves nothing behind."""
import os

import pytest

from adaptive_lm.errors import AdaptiveLMError, UsageError
from adaptive_lm.io import atomic_write_bytes, check_output


def test_atomic_write_replaces_content_and_leaves_no_temp_file(tmp_path):
    out = tmp_path / "a.bin"
    atomic_write_bytes(out, b"one")
    atomic_write_bytes(out, b"two")
    assert out.read_bytes() == b"two" and sorted(os.listdir(tmp_path)) == ["a.bin"]


def test_a_symlinked_output_stays_a_link_and_its_target_gets_the_data(tmp_path):
    real = tmp_path / "real" / "data.txt"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    atomic_write_bytes(check_output(link, force=True), b"new")
    assert link.is_symlink() and real.read_bytes() == b"new" and link.read_bytes() == b"new"
    assert sorted(os.listdir(real.parent)) == ["data.txt"]


def test_an_overwritten_file_keeps_its_mode_but_not_setuid(tmp_path):
    out = tmp_path / "script.sh"
    out.write_bytes(b"#!/bin/sh\n")
    out.chmod(0o750)
    atomic_write_bytes(out, b"#!/bin/sh\necho hi\n")
    assert out.stat().st_mode & 0o7777 == 0o750
    out.chmod(0o4755)
    atomic_write_bytes(out, b"#!/bin/sh\n")
    assert out.stat().st_mode & 0o7777 == 0o755


def test_a_broken_link_or_a_link_to_a_device_is_refused_as_an_output(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "gone.txt")
    with pytest.raises(UsageError, match="broken symbolic link"):
        check_output(tmp_path / "dangling", force=True)
    (tmp_path / "null").symlink_to("/dev/null")
    with pytest.raises(UsageError, match="not a regular file"):
        check_output(tmp_path / "null", force=True)


def test_a_write_into_a_missing_folder_is_one_error(tmp_path):
    with pytest.raises(AdaptiveLMError, match="cannot write"):
        atomic_write_bytes(tmp_path / "missing" / "x", b"x")
