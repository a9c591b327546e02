"""Tests for diva_jax.data.user_data: image folders, image CSVs and embedding files."""
import os

import numpy as np
import pytest
from PIL import Image, ImageFile
from sklearn.datasets import load_digits

from diva_jax.data import loading
from diva_jax.data import user_data as ud

SIZE = 16


@pytest.fixture(scope="module")
def digits():
  """``[n, 32, 32]`` uint8 digit images (sklearn's 8x8 upscaled) and their labels."""
  d = load_digits()
  small = (d.images * 15).astype(np.uint8)
  big = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.Resampling.NEAREST))
                  for im in small])
  return big, d.target


def _save(path, gray: np.ndarray, mode: str, fmt: str = "PNG"):
  """Writes a gray ``[h, w]`` uint8 image in ``mode`` (same pixels, except RGBA's alpha)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if mode == "L":
    im = Image.fromarray(gray, "L")
  elif mode == "RGB":
    im = Image.fromarray(np.repeat(gray[..., None], 3, -1), "RGB")
  elif mode == "RGBA":  # left half transparent
    alpha = np.full(gray.shape, 255, np.uint8)
    alpha[:, :gray.shape[1] // 2] = 0
    im = Image.fromarray(np.dstack([gray, gray, gray, alpha]), "RGBA")
  elif mode == "P":
    im = Image.fromarray(gray, "P")
    im.putpalette([v for g in range(256) for v in (g, g, g)])
  elif mode == "I;16":
    im = Image.fromarray(gray.astype(np.uint16) * 257)
    assert im.mode.startswith("I;16")
  elif mode == "CMYK":
    im = Image.fromarray(gray, "L").convert("CMYK")
  else:
    raise AssertionError(mode)
  im.save(path, fmt)


def _expected_gray(gray: np.ndarray) -> np.ndarray:
  rgb = np.repeat(gray[..., None], 3, -1)
  return loading._resize(rgb, SIZE)  # pylint: disable=protected-access


def _make_folder(root, digits):
  """A folder with every trouble case; returns {relative path: source gray image}."""
  images, _ = digits
  files = {
      "zero/a_gray.png": ("L", "PNG"), "zero/b_rgb.jpg": ("RGB", "JPEG"),
      "zero/c_palette.png": ("P", "PNG"), "zero/sub/d_16bit.png": ("I;16", "PNG"),
      "one/a_rgba.png": ("RGBA", "PNG"), "one/b_cmyk.jpg": ("CMYK", "JPEG"),
      "chat_été/ß.png": ("L", "PNG"), "chat_été/日本語.png": ("RGB", "PNG"),
      "猫/一枚.png": ("L", "PNG"),  # a one-image class
  }
  sources = {}
  for k, (rel, (mode, fmt)) in enumerate(files.items()):
    sources[rel] = images[k]
    _save(os.path.join(root, *rel.split("/")), images[k], mode, fmt)
  # Trouble: truncated JPEG, text named .png, non-image files, hidden files, empty class.
  _save(os.path.join(root, "zero", "full.jpg"), images[20], "RGB", "JPEG")
  data = open(os.path.join(root, "zero", "full.jpg"), "rb").read()
  os.remove(os.path.join(root, "zero", "full.jpg"))
  open(os.path.join(root, "zero", "e_truncated.jpg"), "wb").write(data[:len(data) // 2])
  open(os.path.join(root, "one", "fake.png"), "w").write("not an image")
  open(os.path.join(root, "one", "notes.txt"), "w").write("hello")
  open(os.path.join(root, "one", ".DS_Store"), "wb").write(b"\0\1")
  os.makedirs(os.path.join(root, ".hidden_class"))
  _save(os.path.join(root, ".hidden_class", "x.png"), images[0], "L")
  os.makedirs(os.path.join(root, "empty"))
  open(os.path.join(root, "README.md"), "w").write("my dataset")
  return sources


def test_source_kind(tmp_path):
  assert ud.source_kind(str(tmp_path)) == "folder"
  assert ud.source_kind("x/data.CSV") == "csv"
  assert ud.source_kind("emb.NPZ") == "npz"
  assert ud.source_kind("emb.npy") == "npy"
  assert ud.source_kind("cifar10") == "tfds"
  assert ud.source_kind("mnist:3.0.1") == "tfds"


def test_folder_modes_order_and_trouble(tmp_path, digits):
  root = str(tmp_path / "data")
  sources = _make_folder(root, digits)
  out = ud.load_image_folder(root, size=SIZE)
  assert out.class_names == ["chat_été", "one", "zero", "猫"]
  assert out.paths == ["chat_été/ß.png", "chat_été/日本語.png", "one/a_rgba.png",
                       "one/b_cmyk.jpg", "zero/a_gray.png", "zero/b_rgb.jpg",
                       "zero/c_palette.png", "zero/sub/d_16bit.png", "猫/一枚.png"]
  assert out.ids == out.paths
  np.testing.assert_array_equal(out.labels, [0, 0, 1, 1, 2, 2, 2, 2, 3])
  assert out.labels.dtype == np.int64
  assert out.images.shape == (9, SIZE, SIZE, 3) and out.images.dtype == np.uint8
  by_path = dict(zip(out.paths, out.images))
  for rel in ("chat_été/ß.png", "chat_été/日本語.png", "zero/a_gray.png",
              "zero/c_palette.png", "zero/sub/d_16bit.png", "猫/一枚.png"):
    np.testing.assert_array_equal(by_path[rel], _expected_gray(sources[rel]), err_msg=rel)
  for rel in ("zero/b_rgb.jpg", "one/b_cmyk.jpg"):  # lossy JPEG: close
    diff = np.abs(by_path[rel].astype(int) - _expected_gray(sources[rel]))
    assert diff.mean() < 8, rel
  rgba = by_path["one/a_rgba.png"]  # transparent left half composited on white
  assert np.all(rgba[:, :SIZE // 2 - 1] == 255)
  np.testing.assert_array_equal(rgba[:, SIZE // 2 + 1:],
                                _expected_gray(sources["one/a_rgba.png"])[:, SIZE // 2 + 1:])
  skipped = {s.path: s.reason for s in out.skipped}
  assert set(skipped) == {"README.md", "one/fake.png", "one/notes.txt",
                          "zero/e_truncated.jpg"}
  assert skipped["zero/e_truncated.jpg"].startswith("truncated")
  assert skipped["one/fake.png"].startswith("cannot decode")
  assert skipped["one/notes.txt"].startswith("not an image file")
  assert skipped["README.md"] == "not inside a class folder"
  assert any("'empty'" in w and "no readable image" in w for w in out.warnings)
  assert any("'猫' has 1 image" in w for w in out.warnings)
  assert len(out.warnings) == 2


def test_folder_and_csv_agree(tmp_path, digits):
  root = str(tmp_path / "data")
  _make_folder(root, digits)
  folder = ud.load_image_folder(root, size=SIZE)
  lines = ["path,label,id"] + [f"data/{p},{p.split('/')[0]},id{k}"
                               for k, p in enumerate(folder.paths)]
  csv_path = tmp_path / "list.csv"
  csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  out = ud.load_image_csv(str(csv_path), size=SIZE)
  np.testing.assert_array_equal(out.images, folder.images)
  np.testing.assert_array_equal(out.labels, folder.labels)
  assert out.class_names == folder.class_names
  assert out.paths == [f"data/{p}" for p in folder.paths]
  assert out.ids == [f"id{k}" for k in range(len(folder.paths))]
  assert out.skipped == [] and out.warnings == [folder.warnings[-1]]


def test_csv_no_header_order_and_skips(tmp_path, digits):
  images, _ = digits
  for k, name in enumerate(["b.png", "a.png", "c.png", "d.png"]):
    _save(str(tmp_path / "im" / name), images[k], "L")
  open(tmp_path / "im" / "bad.png", "w").write("nope")
  (tmp_path / "l.csv").write_text("im/b.png,dog\n\nim/a.png, cat\nim/bad.png,cat\n"
                                  "im/c.png,dog\nim/d.png,cat\n", encoding="utf-8")
  out = ud.load_image_csv(str(tmp_path / "l.csv"), size=SIZE)
  assert out.paths == ["im/b.png", "im/a.png", "im/c.png", "im/d.png"]  # CSV order
  assert out.ids == out.paths
  assert out.class_names == ["cat", "dog"]
  np.testing.assert_array_equal(out.labels, [1, 0, 1, 0])
  np.testing.assert_array_equal(out.images[1], _expected_gray(images[1]))
  assert [s.path for s in out.skipped] == ["im/bad.png"]
  # max_images: a deterministic subset (by a hash of the paths), returned in CSV order.
  sub = ud.load_image_csv(str(tmp_path / "l.csv"), size=SIZE, max_images=3)
  assert len(sub.paths) == 3 and set(sub.paths) <= set(out.paths)
  assert sub.paths == [p for p in out.paths if p in sub.paths]
  for p, img in zip(sub.paths, sub.images):
    np.testing.assert_array_equal(img, out.images[out.paths.index(p)])
  again = ud.load_image_csv(str(tmp_path / "l.csv"), size=SIZE, max_images=3)
  assert again.paths == sub.paths


def test_folder_max_images_is_deterministic(tmp_path, digits):
  images, _ = digits
  for cls in ("a", "b", "c", "d"):
    for k in range(10):
      _save(str(tmp_path / cls / f"{k}.png"), images[k], "L")
  out = ud.load_image_folder(str(tmp_path), size=SIZE, max_images=12)
  assert len(out.paths) == 12 and out.paths == sorted(out.paths)  # sample order kept
  # Spread over the classes, not the first classes of a sorted listing (the old behaviour
  # gave 10 images of 'a' and 2 of 'b').
  counts = np.bincount(out.labels)
  assert len(out.class_names) == 4 and list(counts) == [3, 3, 3, 3], counts
  again = ud.load_image_folder(str(tmp_path), size=SIZE, max_images=12)
  assert again.paths == out.paths
  np.testing.assert_array_equal(again.images, out.images)
  # A class left out of a small subset gets a warning naming max_images.
  tiny = ud.load_image_folder(str(tmp_path), size=SIZE, max_images=2)
  missing = set("abcd") - set(tiny.class_names)
  assert all(any(f"'{c}'" in w and "max_images=2" in w for w in tiny.warnings) for c in missing)


def test_truncation_detected_even_if_enabled_globally(tmp_path, digits, monkeypatch):
  images, _ = digits
  for cls in ("a", "b"):
    _save(str(tmp_path / cls / "ok.png"), images[0], "L")
  _save(str(tmp_path / "full.jpg"), images[1], "RGB", "JPEG")
  data = (tmp_path / "full.jpg").read_bytes()
  os.remove(tmp_path / "full.jpg")
  (tmp_path / "a" / "t.jpg").write_bytes(data[:len(data) // 2])
  monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
  out = ud.load_image_folder(str(tmp_path), size=SIZE)
  assert [s.path for s in out.skipped] == ["a/t.jpg"]
  assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_csv_errors(tmp_path, digits):
  images, _ = digits
  _save(str(tmp_path / "a.png"), images[0], "L")
  _save(str(tmp_path / "b.png"), images[1], "L")
  bad = tmp_path / "missing.csv"
  bad.write_text("path,label\na.png,x\ngone.png,y\nb.png,y\nsub/gone2.png,x\n")
  missing = r"2 rows .*\[\(3, 'gone.png'\), \(5, 'sub/gone2.png'\)\]"
  with pytest.raises(ValueError, match=missing):
    ud.load_image_csv(str(bad), size=SIZE)
  cols = tmp_path / "cols.csv"
  cols.write_text("a.png,x\nb.png\nb.png,y,id,extra\na.png,\n")
  with pytest.raises(ValueError, match=r"3 rows \(line numbers\) do not: \[2, 3, 4\]"):
    ud.load_image_csv(str(cols), size=SIZE)
  dup = tmp_path / "dup.csv"
  dup.write_text("a.png,x\na.png,y\n")
  with pytest.raises(ValueError, match="ids must be unique.*a.png.*add an id column"):
    ud.load_image_csv(str(dup), size=SIZE)
  one = tmp_path / "one.csv"
  one.write_text("a.png,x\nb.png,x\n")
  with pytest.raises(ValueError, match="at least 2 classes"):
    ud.load_image_csv(str(one), size=SIZE)


def test_folder_errors(tmp_path, digits):
  with pytest.raises(ValueError, match="not a folder"):
    ud.load_image_folder(str(tmp_path / "nope"), size=SIZE)
  with pytest.raises(ValueError, match="no class folder"):
    ud.load_image_folder(str(tmp_path), size=SIZE)
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  (tmp_path / "a" / "x.png").write_text("text")
  with pytest.raises(ValueError, match=r"no readable image.*1 file skipped.*a/x.png"):
    ud.load_image_folder(str(tmp_path), size=SIZE)
  _save(str(tmp_path / "a" / "y.png"), digits[0][0], "L")
  with pytest.raises(ValueError, match="at least 2 classes"):
    ud.load_image_folder(str(tmp_path), size=SIZE)


def test_npz_string_labels_and_ids(tmp_path):
  x = np.arange(12, dtype=np.float32).reshape(6, 2)
  np.savez(tmp_path / "e.npz", features=x, labels=np.array(["dog", "cat", "dog", "cat",
                                                            "émeu", "cat"]),
           ids=np.array(["i0", "i1", "i2", "i3", "i4", "i5"]))
  out = ud.load_embeddings(str(tmp_path / "e.npz"))
  assert out.features.dtype == np.float32
  np.testing.assert_array_equal(out.features, x)
  assert out.class_names == ["cat", "dog", "émeu"]
  np.testing.assert_array_equal(out.labels, [1, 0, 1, 0, 2, 0])
  assert out.ids == ["i0", "i1", "i2", "i3", "i4", "i5"]
  assert out.warnings == ["class 'émeu' has 1 sample: its leave-one-out prediction cannot "
                          "see its own class"]


def test_npz_int_labels_with_class_names(tmp_path):
  x = np.random.default_rng(0).normal(size=(5, 3))
  np.savez(tmp_path / "e.npz", embeddings=x, labels=np.array([2, 0, 2, 0, 0]),
           class_names=np.array(["a", "b", "c"]))
  out = ud.load_embeddings(str(tmp_path / "e.npz"))
  assert out.features.dtype == np.float64
  assert out.class_names == ["a", "b", "c"] and out.ids == ["0", "1", "2", "3", "4"]
  np.testing.assert_array_equal(out.labels, [2, 0, 2, 0, 0])
  assert out.warnings == ["class 'b' has no sample"]
  np.savez(tmp_path / "bad.npz", features=x, labels=np.array([2, 0, 3, 0, -1]),
           class_names=np.array(["a", "b", "c"]))
  with pytest.raises(ValueError, match=r"0\.\.2.*2 rows are out of range: \[2, 4\]"):
    ud.load_embeddings(str(tmp_path / "bad.npz"))
  np.savez(tmp_path / "unk.npz", features=x, labels=np.array(["a", "z", "a", "b", "b"]),
           class_names=np.array(["a", "b"]))
  with pytest.raises(ValueError, match=r"1 label is not in class_names: \['z'\]"):
    ud.load_embeddings(str(tmp_path / "unk.npz"))


def test_npy_with_labels_files(tmp_path):
  x = np.ones((4, 3), np.float32)
  np.save(tmp_path / "emb.npy", x)
  with pytest.raises(ValueError, match="emb_labels.npy"):
    ud.load_embeddings(str(tmp_path / "emb.npy"))
  np.save(tmp_path / "labels.npy", np.array([5, 7, 5, 7]))
  out = ud.load_embeddings(str(tmp_path / "emb.npy"))
  assert out.class_names == ["5", "7"]
  np.testing.assert_array_equal(out.labels, [0, 1, 0, 1])
  np.save(tmp_path / "emb_labels.npy", np.array([1, 0, 1, 0]))  # preferred sibling
  np.testing.assert_array_equal(ud.load_embeddings(str(tmp_path / "emb.npy")).labels,
                                [1, 0, 1, 0])
  (tmp_path / "l.txt").write_text("chat\nchien\nchien\nchat\n\n", encoding="utf-8")
  out = ud.load_embeddings(str(tmp_path / "emb.npy"), labels_path=str(tmp_path / "l.txt"))
  assert out.class_names == ["chat", "chien"] and out.ids == ["0", "1", "2", "3"]
  np.testing.assert_array_equal(out.labels, [0, 1, 1, 0])


def test_embedding_errors(tmp_path):
  x = np.zeros((30, 2))
  x[[3, 17]] = np.nan
  x[25, 1] = np.inf
  np.savez(tmp_path / "nan.npz", features=x, labels=np.arange(30) % 2)
  with pytest.raises(ValueError, match=r"3 rows hold NaN or Inf: \[3, 17, 25\]"):
    ud.load_embeddings(str(tmp_path / "nan.npz"))
  np.savez(tmp_path / "len.npz", features=np.zeros((5, 2)), labels=np.zeros(4, int))
  with pytest.raises(ValueError, match=r"features \(5, 2\) and labels \(4,\)"):
    ud.load_embeddings(str(tmp_path / "len.npz"))
  np.save(tmp_path / "f.npy", np.zeros((5, 2)))
  (tmp_path / "l.txt").write_text("a\nb\na\n")
  with pytest.raises(ValueError, match=r"features \(5, 2\) and labels \(3,\)"):
    ud.load_embeddings(str(tmp_path / "f.npy"), labels_path=str(tmp_path / "l.txt"))
  np.savez(tmp_path / "nolab.npz", features=np.zeros((5, 2)))
  with pytest.raises(ValueError, match="no 'labels' key"):
    ud.load_embeddings(str(tmp_path / "nolab.npz"))
  np.savez(tmp_path / "nofeat.npz", x=np.zeros((5, 2)), labels=np.zeros(5, int))
  with pytest.raises(ValueError, match=r"no 'features' \(or 'embeddings'\) key"):
    ud.load_embeddings(str(tmp_path / "nofeat.npz"))
  np.savez(tmp_path / "one.npz", features=np.zeros((5, 2)), labels=np.zeros(5, int))
  with pytest.raises(ValueError, match="at least 2 classes"):
    ud.load_embeddings(str(tmp_path / "one.npz"))
  np.savez(tmp_path / "3d.npz", features=np.zeros((5, 2, 2)), labels=np.zeros(5, int))
  with pytest.raises(ValueError, match=r"\[n, d\] array, got float64 \(5, 2, 2\)"):
    ud.load_embeddings(str(tmp_path / "3d.npz"))


def test_alpha_modes_on_white_and_unicode_normalisation(tmp_path, digits):
  import unicodedata  # pylint: disable=g-import-not-at-top
  gray = digits[0][3]
  la = Image.fromarray(np.dstack([gray, np.zeros_like(gray)]), "LA")  # fully transparent
  la.save(tmp_path / "la.png")
  p = Image.fromarray(np.zeros_like(gray), "P")  # palette index 0 is transparent
  p.putpalette([0, 0, 0] * 256)
  p.save(tmp_path / "p.png", transparency=0)
  nfd = unicodedata.normalize("NFD", "été.png")
  Image.fromarray(gray, "L").save(tmp_path / nfd)
  nfc = unicodedata.normalize("NFC", "été.png")
  (tmp_path / "l.csv").write_text(f"la.png,a\np.png,b\n{nfc},b\n", encoding="utf-8")
  out = ud.load_image_csv(str(tmp_path / "l.csv"), size=SIZE)
  assert np.all(out.images[:2] == 255)
  assert out.paths[2] == nfc
  np.testing.assert_array_equal(out.images[2], _expected_gray(gray))


def test_csv_many_missing_files_listing(tmp_path):
  (tmp_path / "m.csv").write_text("".join(f"f{k}.png,c{k % 2}\n" for k in range(25)))
  with pytest.raises(ValueError, match=r"25 rows .*\(10, 'f9.png'\)\] \.\.\. \(15 more\)"):
    ud.load_image_csv(str(tmp_path / "m.csv"), size=SIZE)
