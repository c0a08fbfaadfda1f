"""Data layouts, their errors, and the decode cache, on folders written with Pillow."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_at_once, shape_image, write_class_folders
from PIL import Image

from trainables.data import DataError, DataSpec, SplitSource, list_images
from trainables.files import shown
from trainables.images import decode, load_arrays


def spec(root: Path, **kw) -> DataSpec:
    args = {"train": SplitSource(Path(".")), "validation": 0.25, "test": 0.25}
    return DataSpec(root=root, **{**args, **kw})


def test_one_tree_split_by_stratified_seeded_fractions(image_tree: Path) -> None:
    listing = list_images(spec(image_tree), seed=1)
    assert listing.classes == ("circle", "square", "stripes")
    sizes = {n: len(s.files) for n, s in listing.splits.items()}
    assert sum(sizes.values()) == 37 and (sizes["test"], sizes["validation"]) == (10, 9)
    for split in listing.splits.values():  # stratified: every class in every split
        assert set(split.labels.tolist()) == {0, 1, 2}
    assert listing.ignored == 1  # notes.txt
    again = list_images(spec(image_tree), seed=1)
    assert again.splits["test"].files == listing.splits["test"].files
    other = list_images(spec(image_tree), seed=2)
    assert other.splits["test"].files != listing.splits["test"].files


def test_split_folders_and_flat_folder_with_pattern(tmp_path: Path) -> None:
    write_class_folders(tmp_path / "train", 6)
    write_class_folders(tmp_path / "test", 3)
    flat = tmp_path / "validation"
    flat.mkdir()
    rng = np.random.default_rng(0)
    for cls in ("circle", "square", "stripes"):
        for i in range(2):
            shape_image(cls, rng).save(flat / f"{cls}{i:02d}-000.png")
    (flat / "README.md").write_text("no class here")
    listing = list_images(spec(
        tmp_path, train=SplitSource(Path("train")), test=SplitSource(Path("test")),
        validation=SplitSource(Path("validation"), r"^(circle|square|stripes)\d")), seed=0)
    assert [len(s.files) for s in listing.splits.values()] == [18, 6, 9]
    assert listing.splits["validation"].labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert listing.ignored == 1


def test_listed_classes_select_folders(image_tree: Path) -> None:
    listing = list_images(spec(image_tree, classes=("square", "circle"), test=None), seed=0)
    assert listing.classes == ("square", "circle")
    assert set(listing.splits) == {"train", "validation"}


@pytest.mark.parametrize("prepare, message", [
    (lambda root: shutil.rmtree(root), "does not exist"),
    (lambda root: shutil.rmtree(root) or root.write_text(""), "is a file, not a folder"),
    (lambda root: [shutil.rmtree(p) for p in root.iterdir()], "no images found"),
    (lambda root: [shutil.rmtree(root / c) for c in ("square", "stripes")], "at least 2"),
    # an entry the system cannot look at (here a name past its limit; for a user, a folder
    # without permission or a stale mount): named, not a traceback
    (lambda root: (root / "odd").symlink_to("n" * 300), "cannot be read: .*File name too long"),
])
def test_unusable_data_is_a_clear_error(image_tree: Path, prepare, message: str) -> None:
    prepare(image_tree)
    with pytest.raises(DataError, match=message):
        list_images(spec(image_tree), seed=0)


def test_class_missing_from_a_split(tmp_path: Path) -> None:
    write_class_folders(tmp_path / "train", 4)
    write_class_folders(tmp_path / "test", 2, classes=("circle", "square"))
    with pytest.raises(DataError, match="'stripes' has no images in the test split"):
        list_images(spec(tmp_path, train=SplitSource(Path("train")),
                         test=SplitSource(Path("test"))), seed=0)


def test_a_fraction_too_small_for_every_class_names_the_key_and_its_value(tmp_path: Path
                                                                        ) -> None:
    """3 images of each of 3 classes: a test split of 0.25 takes 3 (one a class), and 0.25
    of the 9 leaves a validation split of 2 of the 6 left, fewer than the classes."""
    write_class_folders(tmp_path, 3)
    with pytest.raises(DataError, match=r"^data\.validation: 0\.25 of the images cannot be "
                                        r"carved from the 6 training images left, .*each of the "
                                        r"3 classes needs an image on both sides"):
        list_images(spec(tmp_path), seed=0)


def test_decoded_once_cached_and_corrupt_files_skipped(image_tree: Path, tmp_path: Path) -> None:
    listing = list_images(spec(image_tree, validation=0.5, test=None), seed=0)
    train = listing.splits["train"]
    broken = [f for f in train.files if f.endswith("broken.jpg")]
    cache = tmp_path / "cache"
    arrays = load_arrays(train, 10, "rgb", cache)
    assert arrays.images.shape == (len(train.files) - len(broken), 10, 10, 3)
    assert arrays.images.dtype == np.uint8 and list(arrays.skipped) == broken
    cached = sorted(cache.iterdir())
    stamps = [p.stat().st_mtime_ns for p in cached]
    again = load_arrays(train, 10, "rgb", cache)
    assert [p.stat().st_mtime_ns for p in sorted(cache.iterdir())] == stamps
    np.testing.assert_array_equal(again.images, arrays.images)
    gray = load_arrays(train, 8, "grayscale", cache)
    assert gray.images.shape[1:] == (8, 8, 1)


def test_a_split_is_never_in_memory_while_it_is_decoded(tmp_path: Path) -> None:
    # all the images decoded first, then copied into the array written, held a split of
    # 25,000 photos twice (2.3 GB at the peak for 1.0 GB of 4,000 images at 300 px); then
    # the array written at the end held it once (431 MB for 3,000 images at 224 px)
    import io
    import tracemalloc

    from PIL import Image

    from trainables.data import Split

    for i in range(150):
        Image.new("RGB", (64, 64), (i, i // 2, i // 3)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    names = [str(tmp_path / f"{i}.png") for i in range(150)] + [str(tmp_path / "broken.png")]
    split = Split(tuple(names), np.arange(151, dtype=np.int32) % 2)
    load_arrays(split, 4, "rgb", tmp_path / "warm")  # Pillow's plugins loaded, not traced
    tracemalloc.start()
    try:
        # 7.4 MB, large beside what other threads of the tests' process allocate meanwhile
        arrays = load_arrays(split, 128, "rgb", tmp_path / "cache")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert arrays.images.shape == (150, 128, 128, 3) and arrays.skipped == (names[-1],)
    assert (arrays.images[7] == (7, 3, 2)).all() and list(arrays.labels) == [0, 1] * 75
    assert peak < arrays.images.nbytes / 3, (peak, arrays.images.nbytes)
    # the file NumPy would have written of the images kept (its header says 150, not 151)
    saved = io.BytesIO()
    np.save(saved, np.asarray(arrays.images))
    assert arrays.source is not None and arrays.source.read_bytes() == saved.getvalue()


def test_a_photo_over_pillows_warning_limit_is_decoded_without_a_warning(tmp_path: Path) -> None:
    """90 megapixels (Pillow warns of a decompression bomb over 89) is a large photo, not
    an attack: decoded, resized and kept, and nothing printed. Over twice the limit Pillow
    refuses it, and it is skipped."""
    import warnings

    from PIL import Image

    from trainables.data import Split

    Image.new("L", (9500, 9500), 128).save(tmp_path / "large.png")
    Image.new("L", (13500, 13500), 128).save(tmp_path / "bomb.png")
    split = Split((str(tmp_path / "large.png"), str(tmp_path / "bomb.png")),
                  np.array([0, 1], np.int32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arrays = load_arrays(split, 8, "grayscale", tmp_path / "cache")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert arrays.images.shape == (1, 8, 8, 1) and (arrays.images == 128).all()
    assert arrays.skipped == (str(tmp_path / "bomb.png"),)


def test_a_large_jpeg_decoded_at_a_reduced_scale_matches_a_full_decode(tmp_path: Path) -> None:
    """libjpeg's DCT scaling (decoding 400 px at 1/2 for 150) gives the pixels a full
    decode and resize would, within a few levels of 255."""
    from PIL import Image

    from trainables.images import decode

    smooth = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 8, 3), np.uint8))
    smooth.resize((400, 300), Image.Resampling.BICUBIC).save(tmp_path / "photo.jpg", quality=90)
    reduced = decode(str(tmp_path / "photo.jpg"), 150, "rgb")
    with Image.open(tmp_path / "photo.jpg") as img:
        full = np.asarray(img.convert("RGB").resize((150, 150), Image.Resampling.BILINEAR))
    assert reduced.shape == (150, 150, 3)
    assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 3


def add_hidden_files(root: Path) -> None:
    """What a Mac, its zips and Jupyter leave in a data folder, none of it data: shadow files
    and copies of images under image suffixes, in class folders and as class folders."""
    (root / ".ipynb_checkpoints").mkdir()  # as a class folder, and in one, holding copies
    (root / "circle" / ".ipynb_checkpoints").mkdir()
    for copy in [root / ".ipynb_checkpoints" / "000-checkpoint.png",
                 root / "circle" / ".ipynb_checkpoints" / "000-checkpoint.png"]:
        copy.write_bytes((root / "circle" / "000.png").read_bytes())
    (root / "__MACOSX" / "circle").mkdir(parents=True)
    (root / "__MACOSX" / "circle" / "._000.png").write_bytes(b"\x00\x05\x16\x07 shadow")
    (root / "square" / "._000.png").write_bytes(b"\x00\x05\x16\x07 shadow")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")


def test_hidden_files_and_folders_are_not_data(image_tree: Path) -> None:
    """A class folder's `.ipynb_checkpoints` (copies of its images, which would have leaked
    between splits), one at the top (a class of its own, which Keras skips), a zip's
    `__MACOSX`, `._` shadow files and `.DS_Store`: the listing is the same as without them."""
    clean = list_images(spec(image_tree), seed=1)
    add_hidden_files(image_tree)
    listing = list_images(spec(image_tree), seed=1)
    assert listing.classes == clean.classes and listing.ignored == clean.ignored
    for name, split in clean.splits.items():
        assert listing.splits[name].files == split.files


def test_a_uri_root_is_read_through_tensorflow(image_tree: Path, tmp_path: Path) -> None:
    """The same tree copied to TensorFlow's in-memory file system (`ram://`, as a bucket's
    `gs://` would be read): the same listing, labels and pixels as from the local folder."""
    import tensorflow as tf

    uri = f"ram://{tmp_path.name}/images"
    local = list_images(spec(image_tree), seed=1)
    add_hidden_files(image_tree)  # skipped there too
    for path in sorted(image_tree.rglob("*")):
        if path.is_file():
            target = f"{uri}/{path.relative_to(image_tree).as_posix()}"
            tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
            tf.io.gfile.copy(str(path), target)
    remote = list_images(spec(uri), seed=1)
    assert remote.classes == local.classes and remote.ignored == local.ignored
    for name, split in local.splits.items():
        assert [f.removeprefix(uri) for f in remote.splits[name].files] == \
            [f.removeprefix(str(image_tree)) for f in split.files]
        assert np.array_equal(remote.splits[name].labels, split.labels)
    a = load_arrays(local.splits["train"], 12, "rgb", tmp_path / "cache-local")
    b = load_arrays(remote.splits["train"], 12, "rgb", tmp_path / "cache-remote")
    assert np.array_equal(a.images, b.images) and len(b.skipped) == 1  # broken.jpg
    with pytest.raises(DataError, match="does not exist"):
        list_images(spec(f"{uri}-missing"), seed=1)
    # said "does not exist" too: s3:// without tensorflow-io, a typo in the scheme
    with pytest.raises(DataError, match="^data folder nosuch://bucket/x cannot be read: "
                                        "TensorFlow has no file system for nosuch:// here"):
        list_images(spec("nosuch://bucket/x"), seed=1)


def test_an_empty_class_folder_is_an_error_naming_it(image_tree: Path) -> None:
    (image_tree / "hexagon").mkdir()
    (image_tree / "hexagon" / "notes.txt").write_text("no image here")
    with pytest.raises(DataError, match=f"class 'hexagon' has no images in the train split: "
                                        f"its folder {image_tree / 'hexagon'} holds no"):
        list_images(spec(image_tree), seed=0)
    # a class the space does not list may be empty: it is not used
    listing = list_images(spec(image_tree, classes=("circle", "square")), seed=0)
    assert listing.classes == ("circle", "square")


def test_a_16_bit_png_is_decoded_as_keras_decodes_it(tmp_path: Path) -> None:
    """A 16-bit grayscale PNG (a scan, say) keeps its picture: Pillow's own conversion clipped
    every value past 255, so all but the darkest pixels came out white."""
    values = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257 + 100).astype(np.uint16)
    path = tmp_path / "scan.png"
    Image.fromarray(values).save(path)
    keras_own = tf.io.decode_png(path.read_bytes(), channels=1, dtype=tf.uint8).numpy()
    np.testing.assert_array_equal(decode(str(path), 16, "grayscale"), keras_own)
    np.testing.assert_array_equal(decode(str(path), 16, "rgb"), np.repeat(keras_own, 3, -1))


def test_32_bit_and_float_images_are_read_as_16_bit_or_skipped(tmp_path: Path) -> None:
    """Pillow's conversion clipped 32-bit and float pixels to 0..255: a float TIFF in 0..1
    came out black, and trained as such. A 32-bit image whose values fit in 16 bits reads as
    its 16-bit PNG does; past 16 bits, and floats, have no one 8-bit reading: skipped."""
    values = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257 + 100).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "scan.png")
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "scan32.tif")
    np.testing.assert_array_equal(decode(str(tmp_path / "scan32.tif"), 16, "grayscale"),
                                  decode(str(tmp_path / "scan.png"), 16, "grayscale"))
    Image.fromarray(values.astype(np.int32) * 4).save(tmp_path / "past16.tif")
    Image.fromarray(values.astype(np.float32) / 65535).save(tmp_path / "floats.tif")
    assert decode(str(tmp_path / "past16.tif"), 16, "grayscale") is None
    assert decode(str(tmp_path / "floats.tif"), 16, "rgb") is None


def test_a_file_name_that_is_not_utf8_is_read(image_tree: Path, tmp_path: Path) -> None:
    """Linux file names are bytes: one from another system's encoding must neither crash the
    listing, the cache key nor a message, and its image is used."""
    name = os.fsencode(image_tree / "circle") + b"/caf\xe9.png"
    with open(name, "wb") as f:
        shape_image("circle", np.random.default_rng(5)).save(f, format="PNG")
    listing = list_images(spec(image_tree, validation=0.5, test=None), seed=0)
    every = [f for split in listing.splits.values() for f in split.files]
    odd = next(f for f in every if f.endswith(".png") and "caf" in f)
    assert os.fsencode(odd) == name and shown(odd).endswith("caf\ufffd.png")
    split = next(s for s in listing.splits.values() if odd in s.files)
    arrays = load_arrays(split, 8, "rgb", tmp_path / "cache")
    assert odd not in arrays.skipped and len(arrays.images) == len(split.files) - \
        sum(f.endswith("broken.jpg") for f in split.files)


WRITE_AT_ONCE = """
from trainables.digits import write_digits
step("imported")
print(write_digits(Path("digits")))
"""


def test_the_digits_written_by_searches_started_at_once(tmp_path: Path) -> None:
    """Three searches of the default space started at once in a new folder all find the
    digits whole, written by one of them. The others' renames of their copies into place
    failed ("Directory not empty"), which ended their searches."""
    written = [int(out) for out in run_at_once(WRITE_AT_ONCE, 3, tmp_path, ["imported"])]
    assert sorted(written) == [0, 0, 1797]
    assert len(list((tmp_path / "digits").rglob("*.png"))) == 1797
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["digits"]
