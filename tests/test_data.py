"""pydarknet.data: list and label files, augmentation geometry, and the batch loader."""
from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydarknet.data import Augment, DataLoader, _jitter_hsv, _place_boxes, label_path, load_sample, read_labels, read_list
from pydarknet.errors import DataError, LabelError

GEOMETRY_ONLY = Augment(jitter=0.3, hue=0.0, saturation=1.0, exposure=1.0, flip=True)


def write_sample(root, name, bgr, label_text):
    """Write images/<name>.png and labels/<name>.txt under root; returns the image path."""
    (root / "images").mkdir(exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    path = root / "images" / f"{name}.png"
    cv2.imwrite(str(path), bgr)
    if label_text is not None:
        (root / "labels" / f"{name}.txt").write_text(label_text)
    return str(path)


def rectangle_image(w, h, x0, y0, x1, y1, bgr=(0, 0, 255)):
    """Grey image with one filled rectangle covering pixels [x0, x1) x [y0, y1), and its label line."""
    image = np.full((h, w, 3), 60, np.uint8)
    image[y0:y1, x0:x1] = bgr
    label = f"0 {(x0 + x1) / 2 / w} {(y0 + y1) / 2 / h} {(x1 - x0) / w} {(y1 - y0) / h}\n"
    return image, label


def red_extent(image_chw):
    """Pixel bounds [x0, x1) x [y0, y1) of the pixels that are more red rectangle than grey background."""
    red = (image_chw[0] > 0.6) & (image_chw[1] < 0.12) & (image_chw[2] < 0.12)
    ys, xs = np.nonzero(red)
    if not len(xs):
        return None
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


# --- list and label files ------------------------------------------------------------------------------

def test_read_list_skips_blank_lines(tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text("/a/images/1.jpg\n\n  \n/a/images/2.jpg  \r\n")
    assert read_list(listing) == ["/a/images/1.jpg", "/a/images/2.jpg"]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_list(tmp_path / "missing.txt")


@pytest.mark.parametrize("image, expected", [
    ("/coco/images/train2014/COCO_1.jpg", "/coco/labels/train2014/COCO_1.txt"),
    ("/voc/VOC2007/JPEGImages/000001.jpg", "/voc/VOC2007/labels/000001.txt"),
    ("data/images/a.JPEG", "data/labels/a.txt"),
    ("images/a.png", "labels/a.txt"),
    ("/x/images/a.PNG", "/x/labels/a.txt"),
    ("/x/images/a.bmp", "/x/labels/a.txt"),
    ("/x/images/a.jpeg", "/x/labels/a.txt"),
    ("/x/myimages/a.jpg", "/x/myimages/a.txt"),  # only a whole folder name is swapped
    ("/x/images.old/a.jpg", "/x/images.old/a.txt"),
    ("/x/y/a.jpg", "/x/y/a.txt"),  # no image folder: the label sits next to the image
    ("a.jpg", "a.txt"),
    ("/d/images/v.1/a.b.jpg", "/d/labels/v.1/a.b.txt"),  # only the last extension goes
])
def test_label_path(image, expected):
    assert label_path(image) == expected


def test_read_labels_values_and_missing_file(tmp_path):
    labels = tmp_path / "a.txt"
    labels.write_text("0 0.5 0.5 0.2 0.4\n\n2 0 1 1 0.001\n")
    rows = read_labels(labels, 3)
    assert rows.dtype == np.float32 and rows.shape == (2, 5)
    np.testing.assert_allclose(rows, [[0, 0.5, 0.5, 0.2, 0.4], [2, 0, 1, 1, 0.001]])
    empty = read_labels(tmp_path / "none.txt", 3)
    assert empty.shape == (0, 5) and empty.dtype == np.float32


@pytest.mark.parametrize("bad_line, what", [
    ("0 0.5 0.5 0.2", "5 fields"),
    ("0 0.5 0.5 0.2 0.2 7", "5 fields"),
    ("cat 0.5 0.5 0.2 0.2", "not an integer"),
    ("0 0.5 half 0.2 0.2", "not numbers"),
    ("3 0.5 0.5 0.2 0.2", "class 3 out of range"),
    ("-1 0.5 0.5 0.2 0.2", "class -1 out of range"),
    ("0 1.2 0.5 0.2 0.2", "cx=1.2"),
    ("0 0.5 -0.1 0.2 0.2", "cy=-0.1"),
    ("0 0.5 0.5 0 0.2", "w=0"),
    ("0 0.5 0.5 0.2 1.5", "h=1.5"),
    ("0 nan 0.5 0.2 0.2", "cx=nan"),
])
def test_read_labels_error_names_file_and_line(tmp_path, bad_line, what):
    labels = tmp_path / "bad.txt"
    labels.write_text(f"1 0.5 0.5 0.2 0.2\n\n{bad_line}\n")
    with pytest.raises(LabelError) as info:
        read_labels(labels, 3)
    message = str(info.value)
    assert message.startswith(f"{labels}:3: "), message
    assert what in message


# --- augmentation --------------------------------------------------------------------------------------

def test_augment_options_and_validation():
    aug = Augment.from_net_options({"hue": ".1", "saturation": "1.5", "exposure": "1.2", "flip": "0",
                                    "angle": "0"}, jitter=0.3)
    assert aug == Augment(jitter=0.3, hue=0.1, saturation=1.5, exposure=1.2, flip=False)
    assert Augment.from_net_options({}) == Augment(jitter=0.2, hue=0.0, saturation=1.0, exposure=1.0, flip=True)
    for bad in ({"jitter": 0.5}, {"saturation": 0.8}, {"hue": -0.1}):
        with pytest.raises(ValueError):
            Augment(**bad)


def test_no_augmentation_is_a_plain_stretch(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (30, 40, 3), np.uint8)
    bgr = cv2.resize(small, (200, 150), interpolation=cv2.INTER_CUBIC)
    path = write_sample(tmp_path, "plain", bgr, None)
    image, truth = load_sample(path, 1, 160, 128, Augment.none(), None, max_boxes=4)
    expected = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (160, 128), interpolation=cv2.INTER_LINEAR)
    assert image.dtype == np.float32 and image.shape == (3, 128, 160)
    np.testing.assert_allclose(image, expected.transpose(2, 0, 1) / 255.0, atol=2 / 255)
    assert truth.shape == (4, 5) and not truth.any()


@pytest.mark.parametrize("scale", [1, 4])  # 4: big enough for the shrink-by-area step before the warp
def test_augmented_box_matches_the_pixels(tmp_path, scale):
    bgr, label = rectangle_image(400 * scale, 300 * scale, 100 * scale, 50 * scale, 220 * scale, 200 * scale)
    path = write_sample(tmp_path, "rect", bgr, label)
    flipped = unflipped = 0
    for seed in range(40):
        image, truth = load_sample(path, 1, 160, 128, GEOMETRY_ONLY, np.random.default_rng(seed), max_boxes=5)
        assert image.shape == (3, 128, 160) and 0.0 <= image.min() and image.max() <= 1.0
        assert not truth[1:].any()
        extent = red_extent(image)
        assert extent is not None and truth[0, 2] > 0
        x, y, w, h, cls = truth[0]
        box = ((x - w / 2) * 160, (y - h / 2) * 128, (x + w / 2) * 160, (y + h / 2) * 128)
        np.testing.assert_allclose(extent, box, atol=1.0, err_msg=f"seed {seed}")
        assert cls == 0
        # The rectangle is left of centre in the source: a mirrored sample has it right of centre
        # unless the crop moved it a lot.
        centre_in_source = ((100 + 220) / 2 / 400)
        if x > centre_in_source + 0.15:
            flipped += 1
        elif x < centre_in_source - 0.05:
            unflipped += 1
    assert flipped > 5 and unflipped > 5


def test_box_leaving_the_image_is_dropped_and_a_cut_box_is_clipped(tmp_path):
    # A thin rectangle at the left edge: a crop that starts right of it removes it entirely.
    bgr, label = rectangle_image(400, 300, 0, 100, 24, 200)
    path = write_sample(tmp_path, "edge", bgr, label)
    dropped = kept = 0
    for seed in range(60):
        aug = Augment(jitter=0.3, hue=0.0, saturation=1.0, exposure=1.0, flip=False)
        image, truth = load_sample(path, 1, 128, 128, aug, np.random.default_rng(seed), max_boxes=3)
        extent = red_extent(image)
        if not truth[0].any():
            dropped += 1
            assert extent is None or extent[2] - extent[0] <= 1, f"seed {seed}: object visible but dropped"
        else:
            kept += 1
            x, y, w, h, _ = truth[0]
            assert 0.0 <= x - w / 2 and x + w / 2 <= 1.0 and 0.0 <= y - h / 2 and y + h / 2 <= 1.0
            assert extent is not None
            np.testing.assert_allclose(extent[::2], ((x - w / 2) * 128, (x + w / 2) * 128), atol=1.0)
    assert dropped > 5 and kept > 5


def test_place_boxes_clips_drops_and_flips():
    labels = np.array([[0, 0.5, 0.5, 0.2, 0.2],     # inside
                       [1, 0.05, 0.5, 0.1, 0.2],    # left of the crop: dropped
                       [2, 0.95, 0.5, 0.2, 0.2]],   # cut by the crop's right side: clipped
                      np.float32)
    truth = np.full((4, 5), 7, np.float32)
    n = _place_boxes(labels, left=0.2, top=0.0, crop_w=0.7, crop_h=1.0, flip=False, truth_out=truth)
    assert n == 2
    np.testing.assert_allclose(truth[0], [(0.5 - 0.2) / 0.7, 0.5, 0.2 / 0.7, 0.2, 0], atol=1e-6)
    left = (0.85 - 0.2) / 0.7
    np.testing.assert_allclose(truth[1], [(left + 1) / 2, 0.5, 1 - left, 0.2, 2], atol=1e-6)
    assert not truth[2:].any()
    flipped = np.zeros((4, 5), np.float32)
    _place_boxes(labels, left=0.2, top=0.0, crop_w=0.7, crop_h=1.0, flip=True, truth_out=flipped)
    np.testing.assert_allclose(flipped[:2, 0], 1 - truth[:2, 0], atol=1e-6)
    np.testing.assert_allclose(flipped[:2, 1:], truth[:2, 1:], atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0.001, 1), st.floats(0.001, 1)),
                min_size=1, max_size=12),
       st.floats(-0.45, 0.45), st.floats(-0.45, 0.45), st.floats(-0.45, 0.45), st.floats(-0.45, 0.45),
       st.booleans())
def test_placed_boxes_always_lie_inside_the_network_input(boxes, left, right, top, bottom, flip):
    labels = np.array([(1, *b) for b in boxes], np.float32)
    truth = np.zeros((8, 5), np.float32)
    n = _place_boxes(labels, left, top, 1 - left - right, 1 - top - bottom, flip, truth)
    assert n <= 8 and not truth[n:].any()
    x, y, w, h, cls = truth[:n].T
    assert (w >= 0.001 - 1e-6).all() and (h >= 0.001 - 1e-6).all() and (cls == 1).all()
    assert (x - w / 2 >= -1e-6).all() and (x + w / 2 <= 1 + 1e-6).all()
    assert (y - h / 2 >= -1e-6).all() and (y + h / 2 <= 1 + 1e-6).all()


def test_boxes_are_shuffled_before_truncation(tmp_path):
    lines = "".join(f"{c} {0.05 + 0.1 * c} 0.5 0.05 0.1\n" for c in range(10))
    path = write_sample(tmp_path, "many", np.full((100, 100, 3), 90, np.uint8), lines)
    kept_sets = set()
    for seed in range(20):
        _, truth = load_sample(path, 10, 64, 64, Augment.none(), np.random.default_rng(seed), max_boxes=3)
        assert truth.shape == (3, 5) and (truth[:, 2] > 0).all()
        kept_sets.add(tuple(sorted(truth[:, 4].astype(int))))
    assert len(kept_sets) > 5


def test_colour_jitter_keeps_grey_grey_and_scales_exposure(tmp_path):
    path = write_sample(tmp_path, "grey", np.full((50, 50, 3), 128, np.uint8), None)
    aug = Augment(jitter=0.0, hue=0.5, saturation=1.5, exposure=1.5, flip=False)
    values = []
    for seed in range(30):
        image, _ = load_sample(path, 1, 32, 32, aug, np.random.default_rng(seed))
        assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
        np.testing.assert_allclose(image, image[0, 0, 0], atol=1e-5)  # hue and saturation leave grey alone
        values.append(float(image[0, 0, 0]))
    grey = 128 / 255
    assert min(values) >= grey / 1.5 - 1e-4 and max(values) <= grey * 1.5 + 1e-4
    assert min(values) < grey - 0.03 and max(values) > grey + 0.03


_FAULTS_PER_SAMPLE = """
import resource, sys
import cv2, numpy as np
from pydarknet import data
if sys.argv[2] == "keep":
    assert data._keep_freed_memory()
cv2.setNumThreads(1)
aug = data.Augment(jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5, flip=True)
rng = np.random.default_rng(0)
for _ in range(3):
    data.load_sample(sys.argv[1], 1, 416, 416, aug, rng)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    data.load_sample(sys.argv[1], 1, 416, 416, aug, rng)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt: Linux with glibc only")
def test_loader_worker_reuses_freed_memory_instead_of_faulting_it_in_again(tmp_path):
    """A loader worker (_worker_main) keeps the memory it frees: its next sample's arrays come from the heap,
    not from fresh pages the kernel must fault in and zero (about a quarter of a worker's time on COCO photos)."""
    rng = np.random.default_rng(1)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (9, 9), 3)
    path = write_sample(tmp_path, "photo", photo, "0 0.5 0.5 0.3 0.4\n")
    assert load_sample(path, 1, 416, 416, Augment.none(), None)[1][0, 2] > 0  # its label was read
    faults = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", _FAULTS_PER_SAMPLE, path, mode], capture_output=True,
                             text=True, check=True)
        faults[mode] = float(out.stdout.split()[-1])
    # A 416 x 416 x 3 float32 array is 508 pages: by default each sample faults in thousands.
    assert faults["default"] > 1000, faults
    assert faults["keep"] < faults["default"] / 10, faults


# --- loader --------------------------------------------------------------------------------------------

@pytest.fixture()
def small_set(tmp_path):
    rng = np.random.default_rng(5)
    paths = []
    for i in range(12):
        w, h = int(rng.integers(80, 200)), int(rng.integers(80, 200))
        bgr, label = rectangle_image(w, h, w // 4, h // 4, w // 2, h // 2, bgr=(0, 200, 0))
        paths.append(write_sample(tmp_path, f"ok{i}", bgr, label + "1 0.7 0.7 0.2 0.2\n"))
    return tmp_path, paths


def test_loader_shapes_dtypes_and_set_size(small_set):
    _, paths = small_set
    with DataLoader(paths, num_classes=2, batch=3, net_w=96, net_h=64, aug=Augment(), max_boxes=7,
                    workers=0) as loader:
        x, truth = loader.next_batch()
        assert x.shape == (3, 3, 64, 96) and x.dtype == np.float32 and x.flags.c_contiguous
        assert truth.shape == (3, 7, 5) and truth.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert (truth[:, :2, 2] > 0).all() and not truth[:, 2:].any()
        loader.set_size(128, 96)
        x, truth = next(iter(loader))
        assert x.shape == (3, 3, 96, 128) and truth.shape == (3, 7, 5)


def test_loader_is_deterministic_and_workers_make_the_same_batches(small_set):
    _, paths = small_set

    def batches(workers, seed):
        out = []
        with DataLoader(paths, num_classes=2, batch=4, net_w=64, net_h=64, aug=Augment(), workers=workers,
                        seed=seed) as loader:
            for i in range(7):
                if i == 2:
                    loader.set_size(96, 96)  # grows the shared buffers
                if i == 5:
                    loader.set_size(64, 32)
                x, truth = loader.next_batch()
                out.append((x.copy(), truth.copy()))
        return out

    reference = batches(0, seed=1)
    assert [x.shape for x, _ in reference] == [(4, 3, 64, 64)] * 2 + [(4, 3, 96, 96)] * 3 + [(4, 3, 32, 64)] * 2
    for (x0, t0), (x1, t1) in zip(reference, batches(0, seed=1)):
        assert np.array_equal(x0, x1) and np.array_equal(t0, t1)
    for (x0, t0), (x1, t1) in zip(reference, batches(2, seed=1)):
        assert np.array_equal(x0, x1) and np.array_equal(t0, t1)
    other = batches(0, seed=2)
    assert not np.array_equal(reference[0][0], other[0][0])


@pytest.mark.parametrize("workers", [0, 2])
def test_replicas_make_exactly_the_chunks_of_one_process(small_set, workers):
    """2 data-parallel replicas, each making its share of every iteration's 4 chunks (batch_numbers), hand out
    the very chunks (images and augmentation) that one process makes, whatever the workers."""
    from pydarknet.distributed import LaunchInfo, Replica

    _, paths = small_set
    chunks, iterations = 4, 3

    def made(rank, size):
        rep = Replica(LaunchInfo(rank, size, rank, size, "test"))
        share = chunks // size
        numbers = lambda k: rep.chunk_numbers(k // share, chunks)[k % share]  # noqa: E731
        with DataLoader(paths, num_classes=2, batch=2, net_w=64, net_h=64, aug=Augment(jitter=0.2), seed=5,
                        workers=workers if rank == 0 else 0, batch_numbers=numbers) as loader:
            return [tuple(a.copy() for a in loader.next_batch()) for _ in range(iterations * share)]

    one = made(0, 1)
    ranks = [made(r, 2) for r in (0, 1)]
    for it in range(iterations):
        expected = one[it * chunks:(it + 1) * chunks]
        got = ranks[0][it * 2:(it + 1) * 2] + ranks[1][it * 2:(it + 1) * 2]
        for (x0, t0), (x1, t1) in zip(expected, got):
            assert np.array_equal(x0, x1) and np.array_equal(t0, t1)
    assert not np.array_equal(ranks[0][0][0], ranks[1][0][0])


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_are_skipped_logged_and_listed(small_set, workers, caplog):
    root, paths = small_set
    corrupt = root / "images" / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 this is not a jpeg")
    malformed = write_sample(root, "malformed", np.zeros((40, 40, 3), np.uint8), "0 0.5 0.5\n")
    out_of_range = write_sample(root, "range", np.zeros((40, 40, 3), np.uint8),
                                "0 0.5 0.5 0.1 0.1\n1 0.5 0.5 1.7 0.1\n")
    missing = str(root / "images" / "missing.jpg")
    bad = [str(corrupt), malformed, out_of_range, missing]
    bad_list = root / "backup" / "run" / "bad.list"
    caplog.set_level(logging.WARNING, logger="pydarknet.data")
    with DataLoader(bad + paths[:2], num_classes=2, batch=8, net_w=32, net_h=32, aug=Augment(),
                    workers=workers, seed=0, bad_list=bad_list) as loader:
        for _ in range(6):
            x, truth = loader.next_batch()
            # every sample is one of the good images: each has its two boxes
            assert (truth[:, 0, 2] > 0).all()
    assert sorted(bad_list.read_text().splitlines()) == sorted(bad)
    assert loader.bad_paths == set(bad)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{label_path(malformed)}:1:" in messages
    assert f"{label_path(out_of_range)}:2: w=1.7 outside (0, 1]" in messages
    assert "corrupt.jpg: cannot decode image" in messages
    assert messages.count("missing.jpg: image not found") == 1  # reported once, not at every draw


def test_loader_with_only_bad_images_fails_clearly(tmp_path):
    (tmp_path / "images").mkdir()
    bad = tmp_path / "images" / "x.jpg"
    bad.write_bytes(b"nope")
    with DataLoader([str(bad)], num_classes=1, batch=2, net_w=32, net_h=32, aug=Augment(), workers=0) as loader:
        with pytest.raises(DataError, match="no usable image"):  # a DarknetError: the CLI prints it cleanly
            loader.next_batch()


def test_workers_stop_and_buffers_go_at_close(small_set):
    _, paths = small_set
    loader = DataLoader(paths, num_classes=2, batch=2, net_w=64, net_h=64, aug=Augment(), workers=2)
    x, _ = loader.next_batch()
    assert x.shape == (2, 3, 64, 64)
    processes = list(loader._processes)
    buffers = [f.path for f in loader._slot_files]
    assert len(processes) == 2 and all(p.is_alive() for p in processes)
    assert buffers and all(os.path.exists(b) for b in buffers)
    del x
    loader.close()
    assert not any(p.is_alive() for p in processes)
    assert not any(os.path.exists(b) for b in buffers)
    loader.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        loader.next_batch()


def test_workers_stop_when_the_loader_is_garbage_collected(small_set):
    _, paths = small_set
    loader = DataLoader(paths, num_classes=2, batch=2, net_w=32, net_h=32, aug=Augment(), workers=1)
    loader.next_batch()
    processes = list(loader._processes)
    del loader
    import gc
    gc.collect()
    for p in processes:
        p.join(timeout=5)
    assert not any(p.is_alive() for p in processes)


@pytest.mark.parametrize("hue, expected", [(1 / 3, (0, 1, 0)), (-1 / 3, (0, 0, 1)), (0.5, (0, 1, 1))])
def test_hue_shift_turns_the_colour_wheel(hue, expected):
    red = np.zeros((4, 4, 3), np.float32)
    red[..., 0] = 1.0
    np.testing.assert_allclose(_jitter_hsv(red, hue, 1.0, 1.0), np.broadcast_to(expected, red.shape), atol=1e-5)


@pytest.mark.parametrize("hue, saturation, exposure", [(0.1, 1.5, 1.5), (-0.1, 1 / 1.5, 1 / 1.5), (0.5, 1.2, 0.8),
                                                       (-0.5, 0.9, 1.3), (0.0, 1.0, 1.0)])
def test_colour_jitter_matches_the_hsv_formula(hue, saturation, exposure):
    """Against colorsys in float64: hue turned (wrapped), saturation scaled and capped at 1, value scaled, the
    result clipped to 0..1; the BGR variant the loader uses gives the same bits, channels swapped."""
    import colorsys  # noqa: PLC0415

    rng = np.random.default_rng(7)
    rgb = rng.random((12, 12, 3), dtype=np.float32)
    rgb[0, :3] = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5]]  # greys: hue undefined, saturation 0
    expected = np.empty(rgb.shape, np.float64)
    for y, x in np.ndindex(rgb.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*rgb[y, x].astype(np.float64))
        expected[y, x] = colorsys.hsv_to_rgb((h + hue) % 1.0, min(s * saturation, 1.0), v * exposure)
    got = _jitter_hsv(rgb, hue, saturation, exposure)
    np.testing.assert_allclose(got, np.clip(expected, 0.0, 1.0), atol=2e-5)
    swapped = _jitter_hsv(np.ascontiguousarray(rgb[..., ::-1]), hue, saturation, exposure, bgr=True)
    assert np.array_equal(swapped[..., ::-1], got)
