"""Files are written whole or not at all (``specdec.files``): a write that fails leaves the previous
file as it was and no temporary file behind, for the helper and for every library writer of a
file a later run reads (calibrations, caches, checkpoints, figures)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from specdec import files, plots
from specdec.drafters.layer_skip import save_skip_set
from specdec.jsonfile import JsonFile
from specdec.weights.tiny import tiny_tokenizer


def test_a_failed_write_leaves_the_previous_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "deeper" / "record.json"
    assert files.write_text_atomic(path, "first") == path  # the folder is created
    assert path.read_text() == "first"

    def half_then_fail(tmp):
        tmp.write_text("sec")  # a writer interrupted halfway
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        files.write_atomic(path, half_then_fail)
    assert path.read_text() == "first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]
    files.write_text_atomic(path, "second")
    assert path.read_text() == "second"
    assert path.stat().st_mode & 0o777 == 0o644


def _folder(path, **texts):
    path.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (path / name).write_text(text)
    return path


def _contents(path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_replaced_folder_keeps_what_keep_allows_and_leaves_nothing_beside_it(tmp_path):
    folder = _folder(tmp_path / "ckpt", weights="old", notes="mine")
    _folder(folder / "extra", deep="kept too")
    write = lambda new: (new / "weights").write_text("new")
    files.replace_folder(folder, write, lambda name: name != "weights")
    assert _contents(folder) == {"weights": "new", "notes": "mine", "extra/deep": "kept too"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging or old folder left
    assert folder.stat().st_mode & 0o777 == 0o755
    files.replace_folder(tmp_path / "fresh", lambda new: (new / "w").write_text("1"), lambda name: True)
    assert _contents(tmp_path / "fresh") == {"w": "1"}
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(FileExistsError, match="a_file: exists and is not a folder"):
        files.replace_folder(tmp_path / "a_file", write, lambda name: True)
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_a_failed_folder_write_or_swap_leaves_the_previous_folder(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "ckpt", config="old", weights="old")
    before = _contents(folder)

    def half_then_fail(new):
        (new / "config").write_text("new")  # a save interrupted halfway
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        files.replace_folder(folder, half_then_fail, lambda name: False)
    assert _contents(folder) == before and [p.name for p in tmp_path.iterdir()] == ["ckpt"]

    replace = files.os.replace

    def staging_cannot_move(source, target):  # the old folder moved aside, the new one not in
        if str(source).endswith(".tmp"):
            raise OSError("rename failed")
        replace(source, target)

    monkeypatch.setattr(files.os, "replace", staging_cannot_move)
    with pytest.raises(OSError, match="rename failed"):
        files.replace_folder(folder, lambda new: (new / "config").write_text("new"), lambda name: False)
    assert _contents(folder) == before and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def _figure(label: str):
    fig, ax = plt.subplots()
    ax.set_title(label)
    return fig


def _skip_set(folder, version):
    return [save_skip_set(folder / "skip.json", [version], target_name="t", rates=[0.5])]


def _json_entry(folder, version):
    store = JsonFile(folder / "cache.json", lambda entry: True, "cost cache", "an object")
    store.update("key", lambda _: {"version": version})
    return [store.path]


def _figure_files(folder, version):
    return plots.save(_figure(f"version {version}"), folder, "fig")


def _tokenizer_files(folder, version):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = f"template {version}"
    tokenizer.save_hf(folder)
    return sorted(folder.iterdir())


# writer(folder, version) -> the files it wrote
WRITERS = {
    "layer_skip calibration": _skip_set,
    "JsonFile entry": _json_entry,
    "figure": _figure_files,
    "tokenizer folder": _tokenizer_files,
}


@pytest.mark.parametrize("writer", WRITERS)
def test_library_writers_leave_the_previous_file_when_the_rename_fails(tmp_path, monkeypatch, writer):
    """Each writer run once; then again with other content while the final rename fails: every
    file keeps its first bytes (a writer that opened the file itself would have changed it)."""
    write = WRITERS[writer]
    written = write(tmp_path, 1)
    assert written and all(p.is_file() for p in written)
    first = {p: p.read_bytes() for p in written}

    def refuse(src, dst):
        raise OSError(f"rename onto {dst} refused")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError, match="refused"):
        write(tmp_path, 2)
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in written} == first
    assert not list(tmp_path.rglob("*.tmp"))
