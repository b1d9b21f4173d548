"""Standard-format loaders (IDX, CIFAR batches), checksums, downloads and their errors, on small files
written here in the real formats."""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlens import DataIntegrityError, DataUnavailableError
from cnnlens.data import (
    CIFAR10_FOLDER,
    CIFAR100_ARCHIVE,
    CIFAR100_FILES,
    CIFAR100_FOLDER,
    CIFAR100_META,
    MNIST_FILES,
    FileSpec,
    cifar_loader,
    clear_cache,
    dataset_info,
    default_data_dir,
    download_file,
    idx_loader,
    load,
    md5sum,
    read_cifar_batch,
    read_cifar_meta,
    read_idx,
)

_IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise ``array`` in the IDX format (magic 0x0000, type code, ndim, big-endian sizes and values)."""
    header = bytes([0, 0, _IDX_CODES[array.dtype.type], array.ndim])
    sizes = np.asarray(array.shape, dtype=">u4").tobytes()
    return header + sizes + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def tiny_mnist(folder: Path, n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[FileSpec, ...]]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    image_path = write_idx(folder / "tiny-images-idx3-ubyte.gz", images)
    label_path = write_idx(folder / "tiny-labels-idx1-ubyte.gz", labels)
    specs = (FileSpec(image_path.name, md5sum(image_path)), FileSpec(label_path.name, md5sum(label_path)))
    return images, labels, specs


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNLENS_OFFLINE", "1")
    clear_cache()


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(list(_IDX_CODES)),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4).map(tuple),
    compress=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_read_idx_round_trips_every_type(
    tmp_path_factory: pytest.TempPathFactory, dtype: type, shape: tuple[int, ...], compress: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    array = (rng.normal(size=shape) * 100).astype(dtype)
    path = write_idx(tmp_path_factory.mktemp("idx") / "a.idx.gz", array, compress)
    result = read_idx(path)
    assert result.dtype == np.dtype(dtype) and result.shape == shape
    np.testing.assert_array_equal(result, array)


def test_idx_loader_reads_verified_files(tmp_path: Path) -> None:
    images, labels, specs = tiny_mnist(tmp_path / "tiny")
    data = idx_loader("tiny", {"train": specs})("train", tmp_path)
    assert data.images.shape == (12, 1, 28, 28) and data.images.dtype == torch.float32
    np.testing.assert_allclose(data.images[:, 0].numpy(), images / 255.0, atol=1e-7)
    assert data.labels.tolist() == labels.tolist() and data.name == "tiny"
    with pytest.raises(ValueError, match="data set 'tiny' has files for splits 'train'; received split='test'"):
        idx_loader("tiny", {"train": specs})("test", tmp_path)


def test_checksum_mismatch_is_an_error(tmp_path: Path) -> None:
    _, _, (image_spec, label_spec) = tiny_mnist(tmp_path / "tiny")
    wrong = FileSpec(image_spec.filename, "0" * 32)
    with pytest.raises(DataIntegrityError, match=r"tiny-images-idx3-ubyte.gz does not match its published "
                                                 r"checksum \(MD5 [0-9a-f]{32}, expected 0{32}\).*Delete it"):
        idx_loader("tiny", {"train": (wrong, label_spec)})("train", tmp_path)


def test_real_mnist_file_with_wrong_content_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    for spec in MNIST_FILES["test"]:
        write_idx(folder / spec.filename, np.zeros((3, 28, 28) if "images" in spec.filename else 3, np.uint8))
    with pytest.raises(DataIntegrityError, match="t10k-images-idx3-ubyte.gz does not match its published checksum"):
        load("mnist", "test", data_dir=tmp_path)


def test_truncated_and_corrupt_idx_files(tmp_path: Path) -> None:
    array = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    cut_stream = tmp_path / "cut.gz"
    cut_stream.write_bytes(gzip.compress(idx_bytes(array))[:-12])
    with pytest.raises(DataIntegrityError, match="cut.gz is not a valid IDX file: its gzip stream is damaged"):
        read_idx(cut_stream)
    short_data = tmp_path / "short.gz"
    short_data.write_bytes(gzip.compress(idx_bytes(array)[:-7]))
    with pytest.raises(DataIntegrityError, match=r"declares shape \(3, 4, 5\) \(60 bytes of data\) but it holds "
                                                 r"53 bytes \(truncated"):
        read_idx(short_data)
    bad_magic = tmp_path / "magic.idx"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(DataIntegrityError, match="does not start with the IDX magic 0x0000"):
        read_idx(bad_magic)
    bad_type = tmp_path / "type.idx"
    bad_type.write_bytes(b"\x00\x00\x07\x01" + bytes(8))
    with pytest.raises(DataIntegrityError, match="type code 0x07 is not one of"):
        read_idx(bad_type)
    # a verified-but-wrong pairing (labels for a different number of images) is also caught
    images, _, (image_spec, _) = tiny_mnist(tmp_path / "pair")
    labels_path = write_idx(tmp_path / "pair" / "few-labels.gz", np.zeros(5, np.uint8))
    with pytest.raises(DataIntegrityError, match="should hold 12 labels in 0..9 to match"):
        idx_loader("pair", {"train": (image_spec, FileSpec(labels_path.name, None))})("train", tmp_path)


def test_missing_mnist_files_name_files_folder_and_option(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as caught:
        load("mnist", "train", data_dir=tmp_path)
    message = str(caught.value)
    assert f"needs files that are not in {tmp_path / 'mnist'}" in message
    assert "train-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message
    assert "t10k" not in message  # only the requested split's files
    assert "--data-dir DIR" in message and "CNNLENS_OFFLINE" in message
    with pytest.raises(DataUnavailableError, match="fashion-mnist.*t10k-labels-idx1-ubyte.gz"):
        load("fashion-mnist", "test", data_dir=tmp_path)
    assert dataset_info("mnist").needs_files
    with pytest.raises(ValueError, match="unknown transform 'pad64'"):  # checked before looking for files
        load("mnist", "train", data_dir=tmp_path, transforms=["pad64"])


def test_download_from_a_mirror_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNNLENS_OFFLINE")
    source = write_idx(tmp_path / "mirror" / "tiny-labels-idx1-ubyte.gz", np.arange(7, dtype=np.uint8))
    url = source.as_uri()
    target = tmp_path / "data"
    bad = FileSpec(source.name, "f" * 32, (url,))
    failure = download_file(bad, target)
    assert "does not match its published checksum" in failure and not (target / source.name).exists()
    assert list(target.iterdir()) == []  # no partial file left behind
    good = FileSpec(source.name, md5sum(source), ("file:///nonexistent/mirror/x.gz", url))
    assert download_file(good, target) == ""
    assert md5sum(target / source.name) == good.md5


def test_load_downloads_missing_files_when_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNNLENS_OFFLINE")
    _, labels, specs = tiny_mnist(tmp_path / "mirror")
    online = {"train": tuple(FileSpec(s.filename, s.md5, ((tmp_path / "mirror" / s.filename).as_uri(),))
                             for s in specs)}
    data = idx_loader("tiny", online)("train", tmp_path / "cache")
    assert data.labels.tolist() == labels.tolist()
    assert (tmp_path / "cache" / "tiny" / specs[0].filename).is_file()


def cifar_batch(n: int, seed: int) -> tuple[np.ndarray, list[int], bytes]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    # the published batches are Python-2 pickles (protocol 2) of dicts with bytes keys
    payload = pickle.dumps({b"batch_label": b"test", b"labels": labels, b"data": data, b"filenames": []},
                           protocol=2)
    return data, labels, payload


def write_cifar(folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, list[int], tuple[FileSpec, ...]]:
    folder.mkdir(parents=True, exist_ok=True)
    datas, all_labels, specs = [], [], []
    for seed, name in enumerate(names):
        data, labels, payload = cifar_batch(4 + seed, seed)
        (folder / name).write_bytes(payload)
        datas.append(data)
        all_labels += labels
        specs.append(FileSpec(name, md5sum(folder / name)))
    return np.concatenate(datas), all_labels, tuple(specs)


def test_cifar_loader_reads_batches_channel_first(tmp_path: Path) -> None:
    data, labels, specs = write_cifar(tmp_path / "tinycifar" / CIFAR10_FOLDER, ("data_batch_1", "data_batch_2"))
    dataset = cifar_loader("tinycifar", {"train": specs})("train", tmp_path)
    assert dataset.images.shape == (9, 3, 32, 32) and dataset.labels.tolist() == labels
    # pixel (row 3, column 5) of the green plane is entry 1024 + 3 * 32 + 5 of the row
    assert float(dataset.images[2, 1, 3, 5]) == pytest.approx(data[2, 1024 + 3 * 32 + 5] / 255.0)


def test_cifar_archive_is_extracted(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    data, labels, specs = write_cifar(staging / CIFAR10_FOLDER, ("test_batch",))
    root = tmp_path / "data" / "tinycifar"
    root.mkdir(parents=True)
    archive_path = root / "tiny.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        archive.add(staging / CIFAR10_FOLDER, arcname=CIFAR10_FOLDER)
    archive_spec = FileSpec(archive_path.name, md5sum(archive_path))
    dataset = cifar_loader("tinycifar", {"test": specs}, archive_spec)("test", tmp_path / "data")
    assert dataset.labels.tolist() == labels
    assert (root / CIFAR10_FOLDER / "test_batch").is_file()
    wrong = FileSpec(archive_path.name, "1" * 32)
    (root / CIFAR10_FOLDER / "test_batch").unlink()
    with pytest.raises(DataIntegrityError, match="tiny.tar.gz does not match its published checksum"):
        cifar_loader("tinycifar", {"test": specs}, wrong)("test", tmp_path / "data")


class _RunsCode:
    """Unpickling this would call os.system: a tampered batch must be refused before that."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("echo unsafe",)


def test_cifar_corrupt_and_unsafe_batches(tmp_path: Path) -> None:
    _, _, payload = cifar_batch(3, 0)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataIntegrityError, match="truncated is not a valid CIFAR-10 batch: it cannot be unpickled"):
        read_cifar_batch(truncated)
    unsafe = tmp_path / "unsafe"
    unsafe.write_bytes(pickle.dumps({b"data": _RunsCode()}, protocol=2))
    with pytest.raises(DataIntegrityError, match=r"global \w+\.system is not allowed in a CIFAR batch"):
        read_cifar_batch(unsafe)
    wrong_keys = tmp_path / "keys"
    wrong_keys.write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8)}, protocol=2))
    with pytest.raises(DataIntegrityError, match="keys b'data' and b'labels'"):
        read_cifar_batch(wrong_keys)
    wrong_shape = tmp_path / "shape"
    wrong_shape.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataIntegrityError, match=r"should be uint8 of shape \(N, 3072\); found uint8 \(2, 100\)"):
        read_cifar_batch(wrong_shape)


def test_missing_cifar10_names_batches_and_archive(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as caught:
        load("cifar10", "test", data_dir=tmp_path)
    message = str(caught.value)
    assert "test_batch" in message and str(tmp_path / "cifar10" / CIFAR10_FOLDER) in message
    assert "cifar-10-python.tar.gz" in message and "--data-dir" in message
    assert "whose cifar10/cifar-10-batches-py/ subfolder has them" in message


def test_default_data_dir_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CNNLENS_DATA", str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"
    monkeypatch.delenv("CNNLENS_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "cnnlens"


# --- CIFAR-100 (python version: train, test, meta; fine labels) ------------------------------------------------


def cifar100_files(folder: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write ``train``/``test`` batches and ``meta`` in the layout of ``cifar-100-python`` (Python-2 pickles with
    bytes keys, fine and coarse labels); returns split -> (data, fine labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in sizes.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        batch = {b"filenames": [], b"batch_label": split.encode(), b"fine_labels": fine,
                 b"coarse_labels": [v // 5 for v in fine], b"data": data}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
        written[split] = (data, fine)
    meta = {b"fine_label_names": [f"class{c}".encode() for c in range(100)],
            b"coarse_label_names": [f"super{c}".encode() for c in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def _cifar100_unverified(archive: FileSpec | None = None) -> object:
    """The CIFAR-100 loader of cnnlens with md5=None specs (the files written here have no published checksum)."""
    unverified = {split: (FileSpec(specs[0].filename, None),) for split, specs in CIFAR100_FILES.items()}
    return cifar_loader("tiny100", unverified, archive, CIFAR100_FOLDER, label_key=b"fine_labels",
                        num_classes=100, meta=FileSpec("meta", None))


def test_cifar100_loader_reads_fine_labels_channel_first(tmp_path: Path) -> None:
    written = cifar100_files(tmp_path / "tiny100" / CIFAR100_FOLDER, {"train": 7, "test": 5})
    for split in ("train", "test"):
        dataset = _cifar100_unverified()(split, tmp_path)
        data, fine = written[split]
        assert dataset.images.shape == (len(fine), 3, 32, 32) and dataset.images.dtype == torch.float32
        assert dataset.labels.tolist() == fine and dataset.num_classes == 100 and dataset.split == split
        # pixel (row 7, column 30) of the blue plane is entry 2048 + 7 * 32 + 30 of the row
        assert float(dataset.images[3, 2, 7, 30]) == pytest.approx(data[3, 2048 + 7 * 32 + 30] / 255.0)
    names = read_cifar_meta(tmp_path / "tiny100" / CIFAR100_FOLDER / "meta")
    assert names[:2] == ["class0", "class1"] and len(names) == 100
    coarse = read_cifar_batch(tmp_path / "tiny100" / CIFAR100_FOLDER / "test", label_key=b"coarse_labels",
                              num_classes=20)[1]
    assert coarse.tolist() == [v // 5 for v in written["test"][1]]


def test_registered_cifar100_verifies_the_published_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``load("cifar100")`` checks train (or test) and meta against the MD5s torchvision publishes, then reads the
    fine labels; a file with another checksum is a DataIntegrityError."""
    assert dataset_info("cifar100").num_classes == 100 and dataset_info("cifar100").needs_files
    assert CIFAR100_ARCHIVE.md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    written = cifar100_files(tmp_path / "cifar100" / CIFAR100_FOLDER, {"train": 6, "test": 4})
    with pytest.raises(DataIntegrityError, match=r"cifar-100-python/train does not match its published checksum "
                                                 r"\(MD5 [0-9a-f]{32}, expected 16019d7e3df5f24257cddd939b257f8d\)"):
        load("cifar100", "train", data_dir=tmp_path)
    verified: list[tuple[str, str | None]] = []
    monkeypatch.setattr("cnnlens.data._download.verify_file",
                        lambda path, spec: verified.append((path.name, spec.md5)))
    clear_cache()
    test = load("cifar100", "test", data_dir=tmp_path)
    assert verified == [("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"), ("meta", CIFAR100_META.md5)]
    assert CIFAR100_META.md5 == "7973b15100ade9c7d40fb424638fde48"
    assert test.labels.tolist() == written["test"][1] and test.name == "cifar100"


def test_missing_cifar100_names_files_folder_and_archive(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as caught:
        load("cifar100", "train", data_dir=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "cifar100" / CIFAR100_FOLDER) in message
    assert f"- train, MD5 {CIFAR100_FILES['train'][0].md5}" in message and f"- meta, MD5 {CIFAR100_META.md5}" in message
    assert "- test," not in message  # only the requested split's files
    assert "cifar-100-python.tar.gz" in message and "--data-dir" in message
    assert "whose cifar100/cifar-100-python/ subfolder has them" in message


def test_cifar100_archive_is_extracted(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    written = cifar100_files(staging / CIFAR100_FOLDER, {"train": 3, "test": 2})
    root = tmp_path / "data" / "tiny100"
    root.mkdir(parents=True)
    archive_path = root / "tiny100.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        archive.add(staging / CIFAR100_FOLDER, arcname=CIFAR100_FOLDER)
    dataset = _cifar100_unverified(FileSpec(archive_path.name, md5sum(archive_path)))("train", tmp_path / "data")
    assert dataset.labels.tolist() == written["train"][1]
    assert sorted(p.name for p in (root / CIFAR100_FOLDER).iterdir()) == ["meta", "train"]


def test_cifar100_corrupt_files(tmp_path: Path) -> None:
    folder = tmp_path / "tiny100" / CIFAR100_FOLDER
    cifar100_files(folder, {"train": 3})
    # a CIFAR-10 batch (b"labels") in CIFAR-100's place
    _, _, payload = cifar_batch(3, 0)
    (folder / "train").write_bytes(payload)
    with pytest.raises(DataIntegrityError, match=r"train is not a valid CIFAR-100 batch: it should hold a dict with "
                                                 r"keys b'data' and b'fine_labels'"):
        _cifar100_unverified()("train", tmp_path)
    out_of_range = {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [5, 100]}
    (folder / "train").write_bytes(pickle.dumps(out_of_range, protocol=2))
    with pytest.raises(DataIntegrityError, match=r"b'fine_labels' should be 2 integers in 0..99; found range 5..100"):
        _cifar100_unverified()("train", tmp_path)
    cifar100_files(folder, {"train": 3})
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"a"] * 99}, protocol=2))
    with pytest.raises(DataIntegrityError, match=r"meta is not a valid CIFAR-100 meta file: b'fine_label_names' "
                                                 r"should list 100 class names; found 99 entries"):
        _cifar100_unverified()("train", tmp_path)
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": _RunsCode()}, protocol=2))
    with pytest.raises(DataIntegrityError, match=r"global \w+\.system is not allowed in a CIFAR batch"):
        read_cifar_meta(folder / "meta")
    with pytest.raises(ValueError, match="a CIFAR meta file lists the names of b'fine_labels', b'coarse_labels'"):
        cifar_loader("x", CIFAR100_FILES, label_key=b"labels", meta=CIFAR100_META)


def test_load_cifar100_recipe_reads_the_python_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_cifar100`` (the experiments' recipe) returns both splits of ``DIR/cifar100/cifar-100-python/``: the
    images equal the written uint8 rows reshaped by hand to (3, 32, 32) / 255 and the labels the fine labels."""
    from cnnlens.experiments._recipes import load_cifar100
    from cnnlens.experiments._registry import RunContext

    written = cifar100_files(tmp_path / "cifar100" / CIFAR100_FOLDER, {"train": 6, "test": 4}, seed=3)
    monkeypatch.setattr("cnnlens.data._download.verify_file", lambda path, spec: None)  # no published checksum
    clear_cache()
    loaded = load_cifar100(RunContext(tmp_path / "run", data_dir=tmp_path, progress=False), "test")
    assert isinstance(loaded, tuple)
    for dataset, split in zip(loaded, ("train", "test"), strict=True):
        data, fine = written[split]
        by_hand = np.stack([np.stack([row[c * 1024:(c + 1) * 1024].reshape(32, 32) for c in range(3)])
                            for row in data]) / 255.0
        np.testing.assert_allclose(dataset.images.numpy(), by_hand, rtol=0, atol=1e-7)
        assert dataset.labels.tolist() == fine and dataset.num_classes == 100
    clear_cache()


def test_load_cifar100_recipe_names_the_files_to_place(tmp_path: Path) -> None:
    from cnnlens.experiments._recipes import load_cifar100
    from cnnlens.experiments._registry import RunContext

    reason = load_cifar100(RunContext(tmp_path / "run", data_dir=tmp_path, progress=False), "the arm is skipped")
    assert isinstance(reason, str)
    assert "train, test and meta" in reason and str(tmp_path / "cifar100" / CIFAR100_FOLDER) in reason
    assert "cifar-100-python.tar.gz" in reason
    quick = load_cifar100(RunContext(tmp_path / "run", data_dir=tmp_path, quick=True, progress=False), "skipped")
    assert isinstance(quick, str) and "--quick" in quick
