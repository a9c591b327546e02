"""A table as a curation source: a CSV or Parquet file with one label column.

Numeric and boolean columns are features; text and categorical columns are one-hot encoded
(one column per distinct value, named ``column=value``); an id column, if named, is kept
apart. Missing values are refused with the rows and columns named (impute them before
curating: which imputation is right depends on the data). The features are then the
preprocessing that `diva_jax.find_label_issues` documents for tabular arrays:
`standardize_table` (each column centred and scaled to unit variance, the whole divided by
sqrt(d), a column of ones appended), so that every column weighs alike in the ridge fit.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import numpy as np

from diva_jax import _optional
from diva_jax.data.user_common import _check_unique
from diva_jax.data.user_common import _listing
from diva_jax.data.user_common import _one_sample_warning

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_MAX_LEVELS = 1000  # a categorical column with more distinct values is refused


class UserTable(NamedTuple):
  """Labelled rows of a table.

  Attributes:
    features: ``[n, d + 1]`` float32, `standardize_table` of the encoded columns.
    labels: ``[n]`` int64 indices into ``class_names``.
    class_names: the sorted distinct labels, as strings.
    ids: per row, the id column if given, else the row number ``"0"`` .. ``"n-1"``.
    records: per row, ``"column=value; ..."`` of its original cells (for the report).
    columns: the encoded feature columns' names (without the bias column).
    warnings: human-readable notes.
  """
  features: np.ndarray
  labels: np.ndarray
  class_names: list[str]
  ids: list[str]
  records: list[str]
  columns: list[str]
  warnings: list[str]


def standardize_table(x: np.ndarray, *others: np.ndarray):
  """Each column centred and scaled by the first array's mean and std (a constant column
  keeps scale 1), divided by sqrt(d), with a column of ones: float32 arrays."""
  x = np.asarray(x, np.float64)
  mean, std = x.mean(0), x.std(0)
  std = np.where(std > 0, std, 1.0)
  d = x.shape[1]
  out = []
  for a in (x,) + others:
    z = (np.asarray(a, np.float64) - mean) / std / np.sqrt(d)
    out.append(np.concatenate([z, np.ones((len(z), 1))], 1).astype(np.float32))
  return out if others else out[0]


def _read(path: str):
  pd = _optional.require("pandas", "reading a table source")
  kind = TABLE_SUFFIXES.get(os.path.splitext(path)[1].lower())
  if kind is None or not os.path.isfile(path):
    raise ValueError(f"{path!r} is not an existing .csv or .parquet file")
  if kind == "parquet":
    _optional.require("pyarrow", "reading a Parquet table")
    return pd.read_parquet(path)
  try:
    return pd.read_csv(path)
  except pd.errors.EmptyDataError:
    raise ValueError(f"{path!r} is empty: expected a header row and data rows") from None
  except pd.errors.ParserError as e:
    raise ValueError(f"{path!r} is not a readable CSV table: {str(e).splitlines()[0]}") from None


def load_table(path: str, *, label_column: str, id_column: str = "",
               max_rows: int = 0) -> UserTable:
  """Reads a labelled table (CSV or Parquet) into standardised features.

  Args:
    path: a ``.csv`` (header row required) or ``.parquet`` file.
    label_column: the column holding the labels (any type; mapped to their sorted values).
    id_column: optional column of unique row ids ("" = row numbers).
    max_rows: keep the first rows only (0 = all).

  Returns:
    A :class:`UserTable`.

  Raises:
    ValueError: a missing label or id column (the columns are listed), missing values (rows
      and columns named), fewer than 2 classes, no feature column, a categorical column with
      more than 1,000 distinct values, duplicate ids.
  """
  df = _read(path)
  cols = [str(c) for c in df.columns]
  df.columns = cols
  for what, name in (("label_column", label_column), ("id_column", id_column)):
    if name and name not in cols:
      raise ValueError(f"{path!r}: {what} {name!r} is not a column; "
                       f"{_listing(cols, 'columns')}")
  if not label_column:
    raise ValueError(f"{path!r}: a table source needs label_column (one of its "
                     f"{_listing(cols, 'columns')})")
  if max_rows:
    df = df.iloc[:max_rows]
  if len(df) < 3:
    raise ValueError(f"{path!r} has {len(df)} data row(s); leave-one-out needs at least 3")
  feature_cols = [c for c in cols if c not in (label_column, id_column)]
  if not feature_cols:
    raise ValueError(f"{path!r}: no feature column besides the label"
                     + (" and id" if id_column else "") + " column")
  missing = df[[label_column] + feature_cols].isna()
  if missing.values.any():
    rows = np.flatnonzero(missing.values.any(1)).tolist()
    bad_cols = [c for c in missing.columns if missing[c].any()]
    raise ValueError(f"{path!r} has missing values: {_listing(rows, 'rows')} in "
                     f"{_listing(bad_cols, 'columns')}; impute or drop them first")
  blocks, names, warnings = [], [], []
  pd = _optional.require("pandas", "reading a table source")
  for c in feature_cols:
    col = df[c]
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
      blocks.append(col.to_numpy(np.float64)[:, None])
      names.append(c)
      continue
    values = col.astype(str).to_numpy()
    levels = sorted(set(values))
    if len(levels) > _MAX_LEVELS:
      raise ValueError(f"{path!r}: column {c!r} is not numeric and has {len(levels)} distinct "
                       f"values (at most {_MAX_LEVELS} are one-hot encoded); drop it or "
                       "encode it first")
    blocks.append((values[:, None] == np.array(levels)[None, :]).astype(np.float64))
    names += [f"{c}={v}" for v in levels]
    if len(levels) > 50:
      warnings.append(f"column {c!r}: {len(levels)} categories one-hot encoded")
  raw = np.concatenate(blocks, 1)
  if not np.all(np.isfinite(raw)):
    rows = np.flatnonzero(~np.all(np.isfinite(raw), 1)).tolist()
    raise ValueError(f"{path!r}: numeric cells must be finite; {_listing(rows, 'rows')} hold "
                     "Inf")
  label_values = df[label_column].to_numpy()
  keys = [str(v) for v in label_values]
  class_names = sorted(set(keys), key=_label_sort_key)
  if len(class_names) < 2:
    raise ValueError(f"{path!r}: label_column {label_column!r} holds {len(class_names)} "
                     "class; at least 2 are needed")
  index = {k: i for i, k in enumerate(class_names)}
  labels = np.array([index[k] for k in keys], np.int64)
  ids = ([str(v) for v in df[id_column].to_numpy()] if id_column
         else [str(i) for i in range(len(df))])
  _check_unique(ids, path)
  counts = np.bincount(labels, minlength=len(class_names))
  warnings += [_one_sample_warning(name, "row")
               for name, k in zip(class_names, counts) if k == 1]
  records = ["; ".join(f"{c}={v}" for c, v in zip(feature_cols, row))
             for row in df[feature_cols].astype(str).to_numpy()]
  return UserTable(standardize_table(raw), labels, class_names, ids, records, names,
                   warnings)


def _label_sort_key(k: str):
  """Numeric labels in numeric order ("2" before "10"), then the rest as text."""
  try:
    return (0, float(k), "")
  except ValueError:
    return (1, 0.0, k)
