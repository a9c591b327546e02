"""The HTML curation report: content checks (fast) and a real headless-Chromium check.

The browser test needs Chromium + chromedriver (Debian packages) and selenium (PyPI);
``.ci/install_browser.sh`` installs them. Without them it skips, saying so.
"""
import base64
import html
import io
import os
import re
import shutil
import time

import numpy as np
import pytest

from diva_jax.app import report

EVIL_CLASS = "<b>&amp; bold</b>"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _data(n=3000, k=10, seed=0, thumbs=True):
  rng = np.random.default_rng(seed)
  given = rng.integers(0, k, n)
  suggested = np.where(rng.random(n) < 0.7, given, rng.integers(0, k, n))
  derivative = rng.normal(size=n)
  flagged = derivative > 1.0
  return dict(
      title="Curation report: synthetic <run> & co",
      summary={"samples": n, "flagged": int(flagged.sum()), "reg": 0.08,
               "embedding seconds": 66.1234, "source": "<dir>/ä"},
      class_names=[EVIL_CLASS] + [f"class_{i}" for i in range(1, k)],
      given=given, suggested=suggested, derivative=derivative, flagged=flagged,
      loo_prob_given=rng.random(n), ids=[f"img_{i:05d}<x>.png" for i in range(n)],
      thumbnails=(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) if thumbs else None),
      skipped=[("données/épée_😀.jpg", "cannot identify image file"),
               ("数据/图像.png", "truncated <png>")],
      warnings=["3 classes have fewer than 5 samples & <i>may</i> be unreliable"])


def _cards(text):
  """(id, flagged, hidden) for each grid card, in document order."""
  pat = r'<div class="card( flagged)?"( hidden)?>(?:<img[^>]*>)?<div class="id">(.*?)</div>'
  return [(html.unescape(m[2]), bool(m[0]), bool(m[1])) for m in re.findall(pat, text)]


def test_report_content_escaping_and_counts(tmp_path):
  d = _data(n=500)
  path = tmp_path / "report.html"
  report.write_report(str(path), **d, page_size=40, max_grid=300, thumb_px=24)
  text = path.read_text(encoding="utf-8")
  # Escaping: no raw user markup anywhere; the escaped forms are there.
  assert "<b>" not in text and "<x>" not in text and "<i>may" not in text and "<run>" not in text
  assert html.escape(EVIL_CLASS) in text and "&lt;run&gt;" in text
  assert "données/épée_😀.jpg" in text and "truncated &lt;png&gt;" in text
  assert "<title>Curation report: synthetic &lt;run&gt; &amp; co</title>" in text
  # Self-contained: nothing to fetch.
  assert not re.search(r'(src|href)="(https?:)?//', text)
  assert "<link rel=\"stylesheet\"" not in text and 'id="histogram"' in text
  # Grid: the 300 most harmful, descending; first page visible, the rest hidden.
  cards = _cards(text)
  order = np.argsort(-d["derivative"], kind="stable")[:300]
  assert [c[0] for c in cards] == [d["ids"][i] for i in order]
  assert [c[1] for c in cards] == [bool(d["flagged"][i]) for i in order]
  assert [c[2] for c in cards] == [False] * 40 + [True] * 260
  assert text.count("data-src=\"data:image/png;base64,") == 300
  assert text.count(" src=\"data:image/png;base64,") == 40  # only page 1 has src
  uri = re.search(r'data-src="data:image/png;base64,([^"]+)"', text)[1]
  from PIL import Image
  assert Image.open(io.BytesIO(base64.b64decode(uri))).size == (24, 24)
  assert f"given: {html.escape(EVIL_CLASS)}" in text
  # Per-class table: samples, flagged and the most frequent suggestion among the flagged.
  table = re.search(r'<table id="classes">(.*?)</table>', text)[1]
  rows = re.findall(r'<tr><td>(.*?)</td><td class="num">(\d+)</td><td class="num">(\d+)'
                    r'</td><td>(.*?)</td></tr>', table)
  assert len(rows) == 10
  for c, (name, samples, nflag, best) in enumerate(rows):
    mine = d["given"] == c
    assert html.unescape(name) == d["class_names"][c]
    assert int(samples) == mine.sum() and int(nflag) == (mine & d["flagged"]).sum()
    sug = d["suggested"][mine & d["flagged"] & (d["suggested"] != c)]
    if sug.size:
      counts = np.bincount(sug, minlength=10)
      got = re.fullmatch(r"(.*) \((\d+)\)", html.unescape(best))
      assert int(got[2]) == counts.max()
      assert d["class_names"].index(got[1]) in np.flatnonzero(counts == counts.max())
      assert d["class_names"].index(got[1]) != c
    else:
      assert best == "&mdash;"
  # Summary: floats at 4 significant digits, order kept.
  summary = re.search(r'<table id="summary">(.*?)</table>', text)[1]
  # Readable labels, not raw keys.
  assert re.findall(r"<th>(.*?)</th>", summary) == [
      report._SUMMARY_LABELS.get(k, k.replace("_", " ")) for k in d["summary"]]  # pylint: disable=protected-access
  assert "_" not in "".join(re.findall(r"<th>(.*?)</th>", summary))
  assert ">66.12<" in summary and "&lt;dir&gt;/ä" in summary


def test_report_embeddings_mode_nan_and_atomic(tmp_path, monkeypatch):
  d = _data(n=120, thumbs=False)
  d["derivative"][[3, 7]] = np.nan
  path = tmp_path / "report.html"
  path.write_text("old")
  calls = []
  real = report.atomic_write_text
  monkeypatch.setattr(report, "atomic_write_text",
                      lambda p, t: (calls.append(p), real(p, t)))
  report.write_report(str(path), **d, page_size=50)
  assert calls == [str(path)]
  assert sorted(os.listdir(tmp_path)) == ["report.html"]  # no temporary left behind
  text = path.read_text(encoding="utf-8")
  assert "<img" not in text and "page 1 / 3" in text
  cards = _cards(text)
  assert len(cards) == 120 and {c[0] for c in cards[-2:]} == {d["ids"][3], d["ids"][7]}
  # Bad input: raises before writing; the previous report stays intact.
  bad = dict(d, ids=d["ids"][:-1])
  with pytest.raises(ValueError, match="ids"):
    report.write_report(str(path), **bad)
  assert path.read_text(encoding="utf-8") == text


def _browser_or_skip():
  why = "run .ci/install_browser.sh to install chromium, chromium-driver and selenium"
  for exe in (CHROMIUM, CHROMEDRIVER):
    if not (os.path.exists(exe) or shutil.which(os.path.basename(exe))):
      pytest.skip(f"{exe} not found; {why}")
  try:
    import selenium  # noqa: F401
  except ImportError:
    pytest.skip(f"selenium not importable; {why}")
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1800", "--allow-file-access-from-files"):
    options.add_argument(arg)
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  driver_path = CHROMEDRIVER if os.path.exists(CHROMEDRIVER) else shutil.which("chromedriver")
  driver = webdriver.Chrome(options=options, service=Service(driver_path))
  driver.set_page_load_timeout(60)
  driver.set_script_timeout(60)
  return driver


_VISIBLE_IMAGES = """
  return Array.from(document.querySelectorAll('#grid .card')).filter(c => !c.hidden)
    .map(c => { const i = c.querySelector('img');
                return [c.querySelector('.id').textContent, !!i && i.complete,
                        i ? i.naturalWidth : 0]; });
"""


def _wait_loaded(driver, expected_ids):
  from selenium.webdriver.support.ui import WebDriverWait
  def ready(drv):
    cards = drv.execute_script(_VISIBLE_IMAGES)
    return cards if ([c[0] for c in cards] == expected_ids
                     and all(c[1] and c[2] > 0 for c in cards)) else False
  return WebDriverWait(driver, 30, poll_frequency=0.1).until(ready)


def test_report_in_headless_chromium(tmp_path):
  from selenium.webdriver.common.by import By
  t0 = time.perf_counter()
  d = _data(n=3000)
  path = tmp_path / "report.html"
  report.write_report(str(path), **d, page_size=60, max_grid=2000)
  driver = _browser_or_skip()
  try:
    driver.get(path.as_uri())
    assert driver.title == d["title"]
    order = np.argsort(-d["derivative"], kind="stable")
    ids = [d["ids"][i] for i in order]
    cards = _wait_loaded(driver, ids[:60])
    assert len(cards) == 60
    assert driver.find_element(By.CSS_SELECTOR, ".page-label").text == "page 1 / 34"
    driver.find_element(By.CSS_SELECTOR, "button.next").click()
    _wait_loaded(driver, ids[60:120])
    assert driver.find_element(By.CSS_SELECTOR, ".page-label").text == "page 2 / 34"
    # Only the visible page's images hold a src.
    n_src = driver.execute_script(
        "return document.querySelectorAll('#grid img[src]').length")
    assert n_src == 60
    # The hostile class name is text, not markup.
    assert driver.find_elements(By.CSS_SELECTOR, "#classes b, #grid b") == []
    first = driver.find_element(By.CSS_SELECTOR, "#classes tr:nth-child(2) td")
    assert first.text == EVIL_CLASS
    skipped = driver.find_element(By.ID, "skipped").text
    assert "données/épée_😀.jpg" in skipped and "truncated <png>" in skipped
    svg = driver.find_elements(By.CSS_SELECTOR, "svg#histogram rect")
    assert len(svg) > 10
    driver.find_element(By.CSS_SELECTOR, "button.prev").click()
    _wait_loaded(driver, ids[:60])
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == []
    out = os.environ.get("DIVA_ARTIFACTS", str(tmp_path))
    os.makedirs(out, exist_ok=True)
    assert driver.save_screenshot(os.path.join(out, "report.png"))
  finally:
    driver.quit()
  assert time.perf_counter() - t0 < 60  # ~5 s here; generous for a loaded 2-core machine


def test_histogram_cut_at_the_threshold_used_and_clipped_values_reported():
  """The dashed line is the automatic threshold (the smallest flagged derivative), not 0, and
  values outside the drawn range are counted in a caption with the extremes."""
  d = np.concatenate([np.linspace(-1.0, 1.0, 1000), [50.0, -40.0]])
  flagged = d >= 0.5
  svg = report.histogram_svg(d, flagged, width=680, height=280)
  lo, hi = np.percentile(d, [0.5, 99.5])
  x_cut = 50 + (d[flagged].min() - lo) / (hi - lo) * (680 - 50 - 10)
  m = re.search(r'<line id="cut" x1="([\d.]+)"', svg)
  assert m and abs(float(m.group(1)) - x_cut) < 0.1
  clipped = re.search(r'<text id="clipped"[^>]*>([^<]*)</text>', svg)[1]
  assert f"{int(np.sum(d > hi))} above" in clipped and "max 50" in clipped
  assert f"{int(np.sum(d < lo))} below" in clipped and "min -40" in clipped
  assert re.findall(r'text-anchor="(start|end)">', svg)[:2] == ["start", "end"]  # edge ticks
