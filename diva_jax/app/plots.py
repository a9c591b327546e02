"""Figures a person would rather look at than read (matplotlib, Agg backend)."""

from __future__ import annotations

import numpy as np
from diva_jax import io_utils
import io


def save_png(path: str, fig, write: bool = True) -> None:
  """Writes `fig` as a PNG atomically (if `write`: process 0), then closes it."""
  if write:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    io_utils.atomic_write_bytes(path, buf.getvalue())
  _plt().close(fig)


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def derivative_histogram(derivative, noisy_mask, title: str, cut: float = 0.0,
                         cut_label: str = "sign rule (0)"):
  """Histogram of the dataset derivative, clean vs mislabelled (the paper's Fig. 3), with
  the cut the run flagged at (a dashed line: `cut`, named by `cut_label`)."""
  plt = _plt()
  d = np.asarray(derivative, np.float64)
  noisy = np.asarray(noisy_mask, bool)
  fig, ax = plt.subplots(figsize=(6, 3.6))
  lo, hi = np.percentile(d, [0.5, 99.5])
  bins = np.linspace(lo, hi, 60)
  ax.hist(d[~noisy], bins=bins, alpha=0.65, label=f"clean ({(~noisy).sum()})", color="tab:blue")
  if noisy.any():
    ax.hist(d[noisy], bins=bins, alpha=0.65, label=f"mislabelled ({noisy.sum()})",
            color="tab:red")
  ax.axvline(cut, color="k", lw=0.8, ls="--", label=f"cut: {cut_label}")
  ax.set_xlabel("dataset derivative dL_loo / da_i  (> 0: the sample hurts)")
  ax.set_ylabel("samples")
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  return fig


def image_grid(images, captions, title: str, ncols: int = 8):
  """A grid of images with a caption under each."""
  plt = _plt()
  n = len(images)
  nrows = max(1, -(-n // ncols))
  fig, axes = plt.subplots(nrows, ncols, figsize=(1.5 * ncols, 1.75 * nrows + 0.4))
  axes = np.atleast_1d(axes).ravel()
  for ax in axes:
    ax.axis("off")
  for ax, im, cap in zip(axes, images, captions):
    im = np.asarray(im)
    if im.ndim == 3 and im.shape[-1] == 1:
      im = im[..., 0]
    ax.imshow(im, cmap="gray" if im.ndim == 2 else None)
    ax.set_title(cap, fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def extension_curves(budgets, curves: dict, full_pool_error: float | None, core_error: float,
                     title: str):
  """Test error vs number of added samples (the paper's Fig. 4)."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 3.8))
  for name, errs in curves.items():
    ax.plot(budgets, 100 * np.asarray(errs), marker="o", label=name)
  ax.axhline(100 * core_error, color="gray", ls=":", label="core only")
  if full_pool_error is not None:
    ax.axhline(100 * full_pool_error, color="k", ls="--", label="core + whole pool")
  ax.set_xlabel("samples added from the pool")
  ax.set_ylabel("test error (%)")
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  return fig


def bar_counts(counts: dict, title: str):
  plt = _plt()
  fig, ax = plt.subplots(figsize=(5, 3))
  ax.bar(list(counts), list(counts.values()), color="tab:green")
  ax.set_ylabel("samples picked")
  ax.set_title(title)
  fig.tight_layout()
  return fig


def sweep_plot(run_names, metrics: dict):
  """One panel per metric: its value in each run of a sweep (missing values left out)."""
  plt = _plt()
  k = len(metrics)
  fig, axes = plt.subplots(k, 1, figsize=(max(5, 0.6 * len(run_names) + 2), 2.2 * k),
                           sharex=True, squeeze=False)
  x = np.arange(len(run_names))
  for ax, (name, values) in zip(axes[:, 0], metrics.items()):
    v = np.array([np.nan if u is None else float(u) for u in values])
    ax.bar(x, np.nan_to_num(v), color=np.where(np.isnan(v), "lightgrey", "tab:blue"))
    ax.set_ylabel(name, fontsize=8)
  axes[-1, 0].set_xticks(x)
  axes[-1, 0].set_xticklabels(run_names, rotation=60, ha="right", fontsize=7)
  fig.suptitle(f"sweep: {len(run_names)} runs")
  fig.tight_layout()
  return fig
