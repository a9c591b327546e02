"""A self-contained HTML report of a label-issue curation run (presentation only).

``write_report`` turns a run's per-sample results into one HTML file that opens in any
browser without network access: no external JS/CSS (a Content-Security-Policy forbids any
fetch), thumbnails inlined as base64 PNG data URIs, the derivative histogram as inline SVG
drawn here in Python. The grid of the most harmful samples is paged by a small inline
script; only the visible page's ``<img>`` elements get their ``src`` set, so a report over
a large dataset stays quick to open. Every user-supplied string (class names, ids, paths,
warnings, summary keys) is HTML-escaped. The file is written atomically.
"""
from __future__ import annotations

import base64
import html
import io
from collections import Counter
from typing import Any, Optional, Sequence

import numpy as np

from diva_jax.io_utils import atomic_write_text

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{color:#8a4b00}
#grid{display:flex;flex-wrap:wrap;gap:8px}
.card{width:120px;border:1px solid #ccc;border-radius:4px;padding:4px;font-size:11px;
  overflow-wrap:anywhere;background:#fafafa}
.card.flagged{border-color:#c62828;background:#fff4f4}
.card img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;display:block;
  margin:0 auto 3px auto;background:#eee}
.card .id{font-weight:600}.badge{color:#c62828;font-weight:700}
.pager{margin:.6em 0}.pager button{margin-right:.4em}
"""

_JS = """
(function(){
  var grid=document.getElementById('grid'); if(!grid) return;
  var cards=grid.querySelectorAll('.card'), size=+grid.dataset.pageSize;
  var pages=Math.max(1,Math.ceil(cards.length/size)), page=0;
  function show(p){
    page=Math.min(Math.max(p,0),pages-1);
    for(var i=0;i<cards.length;i++){
      var on=i>=page*size&&i<(page+1)*size, img=cards[i].querySelector('img');
      cards[i].hidden=!on;
      if(img){ if(on){ if(img.getAttribute('src')!==img.dataset.src) img.src=img.dataset.src; }
               else if(img.hasAttribute('src')) img.removeAttribute('src'); }
    }
    var label='page '+(page+1)+' / '+pages;
    document.querySelectorAll('.page-label').forEach(function(e){e.textContent=label;});
    document.querySelectorAll('.prev').forEach(function(b){b.disabled=page===0;});
    document.querySelectorAll('.next').forEach(function(b){b.disabled=page===pages-1;});
  }
  document.querySelectorAll('.prev').forEach(function(b){b.onclick=function(){show(page-1);};});
  document.querySelectorAll('.next').forEach(function(b){b.onclick=function(){show(page+1);};});
  show(0);
})();
"""


def _esc(value: Any) -> str:
  """HTML-escapes ``str(value)`` (quotes included, so it is safe in attributes too)."""
  return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
  """Formats a summary value: floats to 4 significant digits, everything else via str."""
  if isinstance(value, (float, np.floating)):
    return f"{float(value):.4g}"
  return str(value)


def _name(class_names: Sequence[str], index: int) -> str:
  """The class name for ``index``, or ``#index`` when it is out of range (e.g. -1)."""
  return str(class_names[index]) if 0 <= index < len(class_names) else f"#{index}"


def png_data_uri(image: np.ndarray, max_px: int = 96) -> str:
  """Encodes one image as a ``data:image/png;base64,...`` URI, downscaled to <= ``max_px``.

  Args:
    image: ``[h, w, 3]``, ``[h, w, 4]``, ``[h, w, 1]`` or ``[h, w]`` uint8 pixels.
    max_px: the longest side after downscaling (never upscaled).

  Returns:
    The data URI.
  """
  from PIL import Image
  a = np.asarray(image)
  if a.dtype != np.uint8:
    a = np.clip(a, 0, 255).astype(np.uint8)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  img = Image.fromarray(a)
  if max(img.size) > max_px:
    img.thumbnail((max_px, max_px), Image.LANCZOS)
  buf = io.BytesIO()
  img.save(buf, format="PNG", optimize=False)
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def histogram_svg(derivative: np.ndarray, flagged: np.ndarray, bins: int = 50,
                  width: int = 680, height: int = 280) -> str:
  """The derivative histogram, flagged vs not flagged, as an inline ``<svg>`` element.

  The x range is the 0.5-99.5 percentile range of the finite values; values outside it are
  counted in the edge bins and the caption says how many (and the extremes); non-finite
  values are left out. The dashed line is the cut the flags were made at: the smallest
  flagged derivative (the automatic threshold), or 0 when nothing is flagged.

  Args:
    derivative: ``[n]`` dataset derivative.
    flagged: ``[n]`` bool.
    bins: number of bins.
    width: SVG width in px.
    height: SVG height in px.

  Returns:
    The SVG markup.
  """
  d = np.asarray(derivative, np.float64)
  f = np.asarray(flagged, bool)
  ok = np.isfinite(d)
  d, f = d[ok], f[ok]
  head = (f'<svg id="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" '
          f'height="{height}" role="img" aria-label="derivative histogram">')
  if d.size == 0:
    return head + '<text x="10" y="20">no finite derivative values</text></svg>'
  lo, hi = (float(v) for v in np.percentile(d, [0.5, 99.5]))
  if not hi > lo:
    lo, hi = lo - 0.5, hi + 0.5
  edges = np.linspace(lo, hi, bins + 1)
  clipped = np.clip(d, lo, hi)
  counts = [np.histogram(clipped[m], bins=edges)[0] for m in (~f, f)]
  top = max(1, int(max(c.max() for c in counts)))
  ml, mr, mt, mb = 50, 10, 24, 56
  pw, ph = width - ml - mr, height - mt - mb
  x = lambda v: ml + (v - lo) / (hi - lo) * pw  # noqa: E731
  y = lambda c: mt + ph - c / top * ph  # noqa: E731
  out = [head, f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fff" '
         f'stroke="#999"/>']
  for cls, colour, cnt in (("unflagged", "#1f77b4", counts[0]), ("flagged", "#d62728", counts[1])):
    out.append(f'<g class="{cls}" fill="{colour}" fill-opacity="0.65">')
    for i, c in enumerate(cnt):
      if c:
        out.append(f'<rect x="{x(edges[i]):.1f}" y="{y(c):.1f}" '
                   f'width="{max(x(edges[i + 1]) - x(edges[i]) - 0.5, 0.5):.1f}" '
                   f'height="{ph - (y(c) - mt):.1f}"><title>{int(c)} {cls}</title></rect>')
    out.append('</g>')
  cut = float(d[f].min()) if f.any() else 0.0
  if lo <= cut <= hi:
    out.append(f'<line id="cut" x1="{x(cut):.1f}" x2="{x(cut):.1f}" y1="{mt}" y2="{mt + ph}" '
               f'stroke="#000" stroke-dasharray="4 3"><title>cut at {cut:.3g}</title></line>')
  for i, v in enumerate(np.linspace(lo, hi, 5)):
    anchor = ("start", "middle", "middle", "middle", "end")[i]
    out.append(f'<text x="{x(v):.1f}" y="{mt + ph + 14}" font-size="10" '
               f'text-anchor="{anchor}">{v:.3g}</text>')
  below, above = int(np.sum(d < lo)), int(np.sum(d > hi))
  if below or above:
    out.append(f'<text id="clipped" x="{ml + pw / 2:.0f}" y="{height - 4}" font-size="10" '
               f'text-anchor="middle">the edge bins also hold {below} below {lo:.3g} (min '
               f'{float(d.min()):.3g}) and {above} above {hi:.3g} (max {float(d.max()):.3g})'
               '</text>')
  out.append(f'<text x="{ml - 4}" y="{mt + 4}" font-size="10" text-anchor="end">{top}</text>'
             f'<text x="{ml - 4}" y="{mt + ph}" font-size="10" text-anchor="end">0</text>'
             f'<text x="{ml + pw / 2:.0f}" y="{mt + ph + 30}" font-size="11" text-anchor="middle">'
             'dataset derivative (&gt; 0: the sample hurts)</text>'
             f'<text x="{ml + 6}" y="{mt - 8}" font-size="11" fill="#1f77b4">'
             f'not flagged ({int((~f).sum())})</text>'
             f'<text x="{ml + 160}" y="{mt - 8}" font-size="11" fill="#d62728">'
             f'flagged ({int(f.sum())})</text></svg>')
  return "".join(out)


# Readable names of the summary's keys (others: underscores become spaces).
_SUMMARY_LABELS = {
    "source": "source", "samples": "samples", "classes": "classes",
    "feature_dim": "feature dimension", "threshold": "threshold rule",
    "estimated_issues": "label issues estimated", "flagged": "flagged",
    "flagged_fraction": "flagged fraction",
    "flagged_by_sign_rule": "with derivative > eps (the sign rule)",
    "suggested_differs_from_given": "suggested label differs from given",
    "reg": "ridge reg", "detection_reg": "reg of the derivative",
    "skipped_files": "files skipped", "load_seconds": "load (s)",
    "embed_seconds": "embed (s)", "score_seconds": "score (s)",
    "classes_kept_whole": "classes kept whole in cleaned_labels.csv",
    "planted_file": "planted label errors: list", "planted_planted": "planted label errors",
    "planted_unmatched": "planted entries not in the source",
    "planted_f1": "F1 of the flags against the planted errors",
    "planted_precision": "precision against the planted errors",
    "planted_recall": "recall against the planted errors",
    "planted_auroc": "AUROC of the derivative against the planted errors",
}


def _class_table(class_names, given, suggested, flagged) -> str:
  """Rows: class, samples, flagged, most frequent relabelling among its flagged samples.

  A relabelling is a suggested class that differs from the given one; ties go to the class
  seen first in sample order.
  """
  rows = ["<table id=\"classes\"><tr><th>class</th><th>samples</th><th>flagged</th>"
          "<th>most frequent relabelling of the flagged (count)</th></tr>"]
  for c, name in enumerate(class_names):
    mine = given == c
    sug = Counter(suggested[mine & flagged & (suggested != c)].tolist()).most_common(1)
    best = f"{_esc(_name(class_names, sug[0][0]))} ({sug[0][1]})" if sug else "&mdash;"
    rows.append(f"<tr><td>{_esc(name)}</td><td class=\"num\">{int(mine.sum())}</td>"
                f"<td class=\"num\">{int((mine & flagged).sum())}</td><td>{best}</td></tr>")
  return "".join(rows) + "</table>"


def _grid(order, class_names, ids, given, suggested, derivative, flagged, loo_prob_given,
          thumbnails, page_size, thumb_px, records=None) -> str:
  """The paged card grid over ``order`` (already sorted and truncated)."""
  pager = ('<div class="pager"><button class="prev" type="button">&lsaquo; previous page'
           '</button><button class="next" type="button">next page &rsaquo;</button>'
           f'<span class="page-label">page 1 / {max(1, -(-len(order) // page_size))}</span></div>')
  cards = []
  for rank, i in enumerate(order):
    img = ""
    if thumbnails is not None:
      uri = png_data_uri(thumbnails[i], thumb_px)
      src = f' src="{uri}"' if rank < page_size else ""  # works without JS for page 1
      img = f'<img alt="{_esc(ids[i])}" data-src="{uri}"{src}>'
    is_flagged = bool(flagged[i])
    cards.append(
        f'<div class="card{" flagged" if is_flagged else ""}"'
        f'{" hidden" if rank >= page_size else ""}>{img}'
        f'<div class="id">{_esc(ids[i])}</div>'
        + (f'<div class="record">{_esc(records[i])}</div>' if records is not None else "")
        + f'<div class="given">given: {_esc(_name(class_names, int(given[i])))}</div>'
        f'<div class="suggested">suggested: {_esc(_name(class_names, int(suggested[i])))}</div>'
        f'<div class="deriv">derivative: {float(derivative[i]):.4g}</div>'
        f'<div class="prob">p(given): {float(loo_prob_given[i]):.3g}</div>'
        + ('<div class="badge">&#9873; flagged</div>' if is_flagged else "") + "</div>")
  return (pager + f'<div id="grid" data-page-size="{page_size}">' + "".join(cards)
          + "</div>" + pager)


def write_report(path: str, *, title: str, summary: dict, class_names: list[str],
                 given: np.ndarray, suggested: np.ndarray, derivative: np.ndarray,
                 flagged: np.ndarray, loo_prob_given: np.ndarray, ids: list[str],
                 thumbnails: Optional[np.ndarray] = None,
                 skipped: Sequence[tuple[str, str]] = (), warnings: Sequence[str] = (),
                 page_size: int = 60, max_grid: int = 2000, thumb_px: int = 96,
                 records: Optional[Sequence[str]] = None) -> None:
  """Writes the self-contained HTML report of a curation run to ``path`` (atomically).

  Args:
    path: destination ``.html`` file.
    title: page title and heading.
    summary: ordered key -> value pairs shown as a table.
    class_names: names indexed by class.
    given: ``[n]`` int given labels.
    suggested: ``[n]`` int suggested labels.
    derivative: ``[n]`` float dataset derivative (> 0: the sample hurts).
    flagged: ``[n]`` bool, samples flagged as label issues.
    loo_prob_given: ``[n]`` float leave-one-out probability of the given label.
    ids: ``[n]`` sample ids (e.g. file names).
    thumbnails: ``[n, h, w, 3]`` uint8 images, or None (embeddings: cards without images).
    skipped: (path, reason) pairs of input files that were skipped.
    warnings: messages shown prominently.
    page_size: cards per grid page.
    max_grid: at most this many (most harmful first) samples go into the grid.
    thumb_px: thumbnails are downscaled so their longest side is at most this.
    records: ``[n]`` a table's rows as text (shown on each card instead of an image), or None.

  Raises:
    ValueError: if the per-sample arrays disagree in length or a size is not positive.
  """
  given = np.asarray(given).astype(np.int64).reshape(-1)
  suggested = np.asarray(suggested).astype(np.int64).reshape(-1)
  derivative = np.asarray(derivative, np.float64).reshape(-1)
  flagged = np.asarray(flagged).astype(bool).reshape(-1)
  loo_prob_given = np.asarray(loo_prob_given, np.float64).reshape(-1)
  n = given.shape[0]
  lengths = {"suggested": len(suggested), "derivative": len(derivative),
             "flagged": len(flagged), "loo_prob_given": len(loo_prob_given), "ids": len(ids)}
  if thumbnails is not None:
    lengths["thumbnails"] = len(thumbnails)
  if records is not None:
    lengths["records"] = len(records)
  bad = {k: v for k, v in lengths.items() if v != n}
  if bad:
    raise ValueError(f"per-sample inputs must all have length {n} (given); got {bad}")
  if page_size < 1 or max_grid < 0 or thumb_px < 1:
    raise ValueError(f"page_size, thumb_px must be >= 1 and max_grid >= 0; got "
                     f"{page_size}, {thumb_px}, {max_grid}")

  key = np.where(np.isnan(derivative), -np.inf, derivative)
  order = np.argsort(-key, kind="stable")[:max_grid]
  parts = [
      "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
      f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
      '<meta name="viewport" content="width=device-width, initial-scale=1">',
      f'<link rel="icon" href="data:,"><title>{_esc(title)}</title>',
      f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>"]
  if warnings:
    parts.append('<h2>Warnings</h2><ul id="warnings">'
                 + "".join(f'<li class="warn">{_esc(w)}</li>' for w in warnings) + "</ul>")
  parts.append('<h2>Summary</h2><table id="summary">' + "".join(
      f'<tr><th>{_esc(_SUMMARY_LABELS.get(k, k.replace("_", " ")))}</th>'
      f'<td class="num">{_esc(_fmt(v))}</td></tr>'
      for k, v in summary.items()) + "</table>")
  parts.append("<h2>Dataset derivative</h2>" + histogram_svg(derivative, flagged))
  parts.append("<h2>Per class</h2>" + _class_table(class_names, given, suggested, flagged))
  shown = (f"the {len(order)} most harmful of {n} samples" if len(order) < n
           else f"all {n} samples")
  parts.append(f"<h2>Most harmful samples</h2><p>{shown}, by derivative, descending; "
               f"{page_size} per page.</p>")
  parts.append(_grid(order, class_names, ids, given, suggested, derivative, flagged,
                     loo_prob_given, thumbnails, page_size, thumb_px, records=records))
  if skipped:
    parts.append(f'<h2>Skipped files ({len(skipped)})</h2><table id="skipped"><tr><th>path'
                 '</th><th>reason</th></tr>' + "".join(
                     f"<tr><td>{_esc(p)}</td><td>{_esc(r)}</td></tr>" for p, r in skipped)
                 + "</table>")
  parts.append(f"<script>{_JS}</script></body></html>\n")
  atomic_write_text(path, "".join(parts))
