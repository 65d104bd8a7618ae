"""pydarknet.synth: the built-in synthetic data set is deterministic, complete and well labelled."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pydarknet import synth
from pydarknet.data import label_path, read_labels, read_list
from pydarknet.datafile import read_data_file, read_names


def test_generation_is_deterministic_and_complete(tmp_path):
    first = synth.ensure_dataset(tmp_path / "a", n_train=6, n_valid=3)
    second = synth.ensure_dataset(tmp_path / "b", n_train=6, n_valid=3)
    assert first.name == "synth.data" and first.is_file()

    options = read_data_file(first)
    assert options["classes"] == "5" and options["eval"] == "voc" and options["prefix"] == "synth"
    assert Path(options["backup"]) == (tmp_path / "a" / "backup").resolve()
    assert read_names(options["names"]) == list(synth.CLASS_NAMES)
    train, valid = read_list(options["train"]), read_list(options["valid"])
    assert len(train) == 6 and len(valid) == 3 and not set(train) & set(valid)

    other = read_data_file(second)
    for mine, theirs in zip(train + valid, read_list(other["train"]) + read_list(other["valid"])):
        assert os.path.isabs(mine) and os.path.isfile(mine)
        assert Path(mine).read_bytes() == Path(theirs).read_bytes()
        assert Path(label_path(mine)).read_text() == Path(label_path(theirs)).read_text()
    assert not list((tmp_path / "a").glob("*.tmp-*"))  # the temporary folder was renamed into place


def test_labels_are_in_range_and_objects_are_not_tiny(tmp_path):
    data = read_data_file(synth.ensure_dataset(tmp_path, n_train=40, n_valid=5))
    counts = []
    for image in read_list(data["train"]):
        labels = read_labels(label_path(image), len(synth.CLASS_NAMES))  # raises if out of range
        counts.append(len(labels))
        for _, _, _, w, h in labels:
            assert max(w, h) >= 0.08 * 160 / 256  # >= 8% of the shorter side, images are 160..256 px
    assert min(counts) >= 1 and max(counts) <= 5 and len(set(counts)) >= 3


def test_render_image_draws_what_the_labels_say():
    seen_classes = set()
    for seed in range(40):
        image, labels = synth.render_image(np.random.default_rng(seed))
        h, w = image.shape[:2]
        assert image.dtype == np.uint8 and 160 <= w <= 256 and 160 <= h <= 256
        for cls, cx, cy, bw, bh in labels:
            seen_classes.add(cls)
            x0, x1 = round((cx - bw / 2) * w), round((cx + bw / 2) * w)
            y0, y1 = round((cy - bh / 2) * h), round((cy + bh / 2) * h)
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert min(x1 - x0, y1 - y0) >= 4
    assert seen_classes == set(range(len(synth.CLASS_NAMES)))


def test_second_call_reuses_and_incomplete_folder_is_regenerated(tmp_path):
    data = synth.ensure_dataset(tmp_path, n_train=2, n_valid=1)
    folder = data.parent
    stamp = (folder / "images" / "train_00000.jpg").stat().st_mtime_ns
    assert synth.ensure_dataset(tmp_path, n_train=2, n_valid=1) == data
    assert (folder / "images" / "train_00000.jpg").stat().st_mtime_ns == stamp

    (folder / ".complete").unlink()  # as if a foreign, unfinished folder sat there
    (folder / "images" / "train_00000.jpg").write_bytes(b"junk")
    assert synth.ensure_dataset(tmp_path, n_train=2, n_valid=1) == data
    assert (folder / "images" / "train_00000.jpg").read_bytes()[:2] == b"\xff\xd8"  # a JPEG again


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_generate", crash)
    with pytest.raises(KeyboardInterrupt):
        synth.ensure_dataset(tmp_path, n_train=2, n_valid=1)
    assert list(tmp_path.iterdir()) == []


def test_default_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("PYDARKNET_CACHE", str(tmp_path / "mine"))
    assert synth.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("PYDARKNET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert synth.default_cache_dir() == tmp_path / "xdg" / "pydarknet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert synth.default_cache_dir() == Path.home() / ".cache" / "pydarknet"


def test_cache_path_with_spaces_is_refused(tmp_path):
    with pytest.raises(ValueError, match="whitespace"):
        synth.ensure_dataset(tmp_path / "my cache", n_train=1, n_valid=1)
