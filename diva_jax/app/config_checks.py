"""Config validation for the runs: typed checks that name the config field, raising
`ConfigError` (printed as one line by the binaries) before anything is written."""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional

import numpy as np

from diva_jax.app.errors import ConfigError
from diva_jax import data
from diva_jax.data import loading
import diva_jax


class ConfigMismatchError(ConfigError):
  """The workdir holds results of a different config."""


# ----------------------------------------------------------------------------------------
# Config validation: everything is checked before anything is written.
# ----------------------------------------------------------------------------------------


def _as_int(value) -> Optional[int]:
  if isinstance(value, (bool, np.bool_)):
    return None
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
    return int(value)
  return None


def check_int(config, name: str, minimum: Optional[int] = None) -> int:
  """config[name] as an int (integer-valued, >= minimum), else ConfigError naming the field."""
  value = config[name]
  out = _as_int(value)
  if out is None or (minimum is not None and out < minimum):
    bound = f" >= {minimum}" if minimum is not None else ""
    raise ConfigError(f"{name} must be an integer{bound}, got {value!r}.")
  return out


def check_ints(config, name: str, minimum: Optional[int] = None, *,
               nonempty: bool = False) -> list[int]:
  """config[name], a sequence of integers >= minimum."""
  values = config[name]
  if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
    raise ConfigError(f"{name} must be a tuple of integers, got {values!r}.")
  out = [_as_int(v) for v in values]
  if (nonempty and not out) or any(v is None or (minimum is not None and v < minimum)
                                   for v in out):
    bound = f" >= {minimum}" if minimum is not None else ""
    raise ConfigError(f"{name} must be a{' non-empty' if nonempty else ''} tuple of "
                      f"integers{bound}, got {tuple(values)!r}.")
  return out


def check_float(config, name: str, *, low: Optional[float] = None, low_open: bool = False,
                high: Optional[float] = None, high_open: bool = False,
                value=None) -> float:
  """config[name] as a finite float in the given interval, else ConfigError naming it."""
  value = config[name] if value is None else value
  ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
  v = float(value) if ok else math.nan
  ok = ok and math.isfinite(v)
  if ok and low is not None:
    ok = v > low if low_open else v >= low
  if ok and high is not None:
    ok = v < high if high_open else v <= high
  if not ok:
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    where = (f" in {lo}, {hi}" if lo and hi else f" {'>' if low_open else '>='} {low:g}" if lo
             else f" {'<' if high_open else '<='} {high:g}" if hi else "")
    raise ConfigError(f"{name} must be a finite number{where}, got {value!r}.")
  return v


def check_choice(config, name: str, choices: Iterable[str], value=None) -> str:
  value = config[name] if value is None else value
  choices = tuple(choices)
  if value not in choices:
    raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
  return value


def check_subset(config, name: str, allowed) -> tuple:
  """config[name]: a non-empty list of entries of `allowed`; returns it as a tuple."""
  values, allowed = tuple(config[name]), tuple(allowed)
  if not values or any(v not in allowed for v in values):
    raise ConfigError(f"{name} must be a non-empty subset of {allowed}, got {values}.")
  return values


def check_dataset(name) -> None:
  """A dataset name `diva_jax.data.load` knows (this package's, or the TFDS catalog's)."""
  if not isinstance(name, str) or not name:
    raise ConfigError(f"dataset must be a dataset name, got {name!r}.")
  base = name.split(":")[0].split("/")[0]
  if base in data.known_datasets() or base in loading._catalog():  # pylint: disable=protected-access
    return
  raise ConfigError(f"unknown dataset {name!r}: this package provides "
                    f"{list(data.known_datasets())}; any other name must be in the TFDS catalog "
                    "(e.g. 'mnist', 'cifar10').")


def check_detection_views(config) -> None:
  """config.detection_views (bool) and view_shift (in (0, 0.5)); views need last-layer
  features."""
  if not isinstance(config.detection_views, bool):
    raise ConfigError(f"detection_views must be True or False, got {config.detection_views!r}.")
  check_float(config, "view_shift", low=0.0, high=0.5, low_open=True, high_open=True)
  if config.detection_views and config.linearize != "last_layer":
    raise ConfigError("detection_views averages last-layer features: it needs linearize = "
                      f"'last_layer', got {config.linearize!r}.")


def check_settings(config, name: str = "settings") -> list:
  """config[name]: a non-empty list of 'dataset:max_train' entries (0 = all) -> [(dataset,
  max_train)], each dataset checked by `check_dataset`."""
  entries = tuple(config[name])
  if not entries:
    raise ConfigError(f"{name} must list at least one 'dataset:max_train' entry.")
  out = []
  for s in entries:
    dataset, _, max_train = str(s).partition(":")
    if not dataset or not max_train.isdigit():
      raise ConfigError(f"{name} entries are 'dataset:max_train' (0 = all), got {s!r}.")
    check_dataset(dataset)
    out.append((dataset, int(max_train)))
  return out


def check_common(config) -> None:
  """The fields the binaries share (those present in `config`)."""
  has = lambda k: k in config
  if has("dataset") and not (has("core_npz") and config.core_npz):
    check_dataset(config.dataset)
  for name, minimum in (("max_train", 0), ("max_test", 0), ("image_size", 8),
                        ("batch_size", 1), ("seed", 0), ("jacobian_width", 1)):
    if has(name):
      check_int(config, name, minimum)
  if has("backbone"):
    check_choice(config, "backbone", ("efficientnet_lite0", "pixels"))
  if has("linearize"):
    check_choice(config, "linearize", ("last_layer", "last_layer+jacobian"))
    if config.linearize == "last_layer+jacobian" and config.backbone == "pixels":
      raise ConfigError("linearize='last_layer+jacobian' needs a network backbone, not "
                        "'pixels'.")
  if has("loss"):
    check_choice(config, "loss", diva_jax.LOSSES)
  if has("temperature"):
    check_float(config, "temperature", low=0.0, low_open=True)
  if has("reg"):
    if isinstance(config.reg, str):
      raise ConfigError(f"reg must be a number: > 0 for a given reg, 0.0 to choose it by "
                        f"exact LOO; got {config.reg!r}.")
    check_float(config, "reg", low=0.0)
  if has("detection_reg_multiplier"):  # 0.0: the library's rule (auto_reg_multiplier)
    check_float(config, "detection_reg_multiplier", low=0.0)
  if has("derivative_reg_multiplier"):
    check_float(config, "derivative_reg_multiplier", low=0.0, low_open=True)
  for name in ("data_dir", "cache_dir"):
    if has(name) and not isinstance(config[name], str):
      raise ConfigError(f"{name} must be a string path ('' = default), got {config[name]!r}.")
