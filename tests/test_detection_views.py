"""Shifted views for detection: the image shifts against hand-built arrays, the averaged
detection features against a NumPy recomputation, and the outlier-rejection binary with
`detection_views` (the refit and test errors stay on the original features)."""

import numpy as np
import pytest

import configs.outlier_rejection
from diva_jax.data import augment
from diva_jax.app import common
from experiments.paper import outlier_rejection


def test_shift_images_by_hand():
  x = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
  down = augment.shift_images(x, 1, 0)
  assert down.dtype == np.uint8 and down.shape == x.shape
  np.testing.assert_array_equal(down[:, 1:], x[:, :-1])   # content moves down one row
  np.testing.assert_array_equal(down[:, 0], x[:, 0])      # the top row repeats the edge
  left = augment.shift_images(x, 0, -2)
  np.testing.assert_array_equal(left[:, :, :3], x[:, :, 2:])
  np.testing.assert_array_equal(left[:, :, 3], x[:, :, 4])
  np.testing.assert_array_equal(left[:, :, 4], x[:, :, 4])
  np.testing.assert_array_equal(augment.shift_images(x, 0, 0), x)
  assert augment.shift_offsets(28, 28) == ((2, 0), (-2, 0), (0, 2), (0, -2))
  assert augment.shift_offsets(8, 8) == ((1, 0), (-1, 0), (0, 1), (0, -1))
  assert augment.shift_offsets(224, 300, 0.07)[0] == (16, 0)


@pytest.mark.parametrize("call, match", [
    (lambda: augment.shift_images(np.zeros((3, 4, 4)), 1, 0), r"\[n, height, width, channels\]"),
    (lambda: augment.shift_images(np.zeros((1, 4, 4, 1)), 4, 0), r"\|dy\| < 4"),
    (lambda: augment.shift_offsets(28, 28, 0.5), r"fraction must be a number in \(0, 0.5\)"),
    (lambda: augment.shift_offsets(1, 28), "height must be an integer >= 2"),
])
def test_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def _config(tmp_path):
  c = configs.outlier_rejection.get_config("runlocal,digits,pixels")
  c.cache_dir = str(tmp_path / "cache")
  c.max_train, c.max_test, c.cv_logistic, c.plots = 300, 100, False, False
  c.sensitivity_reg_multipliers = ()
  c.detection_views = False  # each test turns it on
  return c


def test_detection_features_are_the_view_average(tmp_path):
  c = _config(tmp_path)
  wd = common.Workdir(str(tmp_path / "wd"), c)
  train, _ = common.prepare_features(c, wd)
  assert common.detection_features(c, train, wd) is train.features  # views off
  c.detection_views = True
  got = common.detection_features(c, train, wd)
  pix = lambda im: np.asarray(im, np.float32).reshape(len(im), -1) / 255.0
  views = [pix(train.images)] + [pix(augment.shift_images(train.images, dy, dx))
                                 for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))]
  want = common.standardize(np.mean(views, 0))[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_outlier_rejection_with_views(tmp_path):
  c = _config(tmp_path)
  plain = outlier_rejection.run(c, str(tmp_path / "plain"))
  c.detection_views = True
  views = outlier_rejection.run(c, str(tmp_path / "views"))
  assert views["detection_views"] is True and plain["detection_views"] is False
  # The fit, the baseline and the oracle stay on the original features.
  for key in ("reg", "test_error_before", "test_error_oracle_removal", "n_train"):
    assert views[key] == pytest.approx(plain[key]), key
  assert views["detection_reg"] != pytest.approx(plain["detection_reg"])
  assert 0.5 < views["detection_f1"] <= 1
  c.linearize, c.backbone = "last_layer+jacobian", "efficientnet_lite0"
  with pytest.raises(common.ConfigError, match="detection_views averages last-layer features"):
    outlier_rejection.run(c, str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()
