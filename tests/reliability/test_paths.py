"""protege.paths: OS errors on user paths become UserErrors naming the path and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protege.errors import UserError
from protege.paths import atomic_write_text, check_dir_creatable, ensure_dir, writing
from protege.store import RunStore


def test_folder_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    for call in (lambda: ensure_dir(tmp_path / "f" / "run"), lambda: check_dir_creatable(tmp_path / "f" / "run")):
        with pytest.raises(UserError, match="not a folder") as e:
            call()
        assert str(tmp_path / "f") in str(e.value) and "Fix:" in str(e.value)


def test_file_where_the_folder_should_be(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(UserError, match=r"cannot create the folder .*run: a file already exists"):
        ensure_dir(tmp_path / "run")
    with pytest.raises(UserError, match="a file already exists"):
        check_dir_creatable(tmp_path / "run")


def test_symlink_loop(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(UserError, match="symlink loop"):
        ensure_dir(tmp_path / "a" / "run")
    with pytest.raises(UserError, match="symlink loop"):
        check_dir_creatable(tmp_path / "a")


def test_disk_full_write_is_a_user_error():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(UserError, match="no space left") as e:
        with writing("/dev/full"), open("/dev/full", "wb") as f:  # writes to the device, never replaces it
            f.write(b"x" * 10)
    assert "/dev/full" in str(e.value)


def test_atomic_write_replaces_whole_files_and_refuses_special_ones(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp left
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UserError, match="not a regular file"):
        atomic_write_text(tmp_path / "pipe", "x")
    assert (tmp_path / "pipe").exists() and not (tmp_path / "pipe").is_file()  # untouched
    (tmp_path / "d").mkdir()
    with pytest.raises(UserError, match="not a regular file"):
        atomic_write_text(tmp_path / "d", "x")


def test_store_refuses_corrupt_manifest_and_records_no_refused_stage(tmp_path):
    store = RunStore(tmp_path / "run")
    store.ensure()
    with pytest.raises(UserError, match="bad input"):
        with store.stage("curate"):
            raise UserError("bad input")
    assert not store.manifest_file.exists()  # a refused stage leaves no trace
    store.manifest_file.write_text("{torn")
    with pytest.raises(UserError, match="manifest.json: unreadable"):
        store.load_manifest()


def test_check_writable_creates_nothing(tmp_path):
    store = RunStore(tmp_path / "a" / "b" / "run")
    store.check_writable()
    assert not (tmp_path / "a").exists()
    assert Path(tmp_path).exists()
