"""Atomic writes: the content lands whole, a symlinked output stays a link, an overwritten file
keeps its permissions, and a failed write leaves nothing behind."""
import os

import pytest

from adaptive_lm.errors import AdaptiveLMError
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


def test_an_overwritten_file_keeps_its_mode(tmp_path):
    out = tmp_path / "script.sh"
    out.write_bytes(b"#!/bin/sh\n")
    out.chmod(0o750)
    atomic_write_bytes(out, b"#!/bin/sh\necho hi\n")
    assert out.stat().st_mode & 0o777 == 0o750


def test_a_write_into_a_missing_folder_is_one_error(tmp_path):
    with pytest.raises(AdaptiveLMError, match="cannot write"):
        atomic_write_bytes(tmp_path / "missing" / "x", b"x")
