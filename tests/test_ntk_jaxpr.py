"""The structured NTK from the jaxpr: every rule against a float64 jacrev oracle.

Each case builds a model (plain JAX, flax linen or nnx), checks ``empirical_ntk_fn``
(``implementation='structured'``) against ``jax.jacrev`` contracted over leaves and the
traced axes (divided by T), and asserts each leaf's path from ``ntk.ntk_plan``.
"""
import flax.linen as nn
from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from diva_jax import _tree_utils
from diva_jax.ntk import api as ntk

RTOL = 1e-10


@pytest.fixture(autouse=True)
def _x64():
  with jax.enable_x64(True):
    yield


def _normal(key, shape, scale=1.0):
  # numpy, not jax.random: the latter compiles a sampler per shape (~1 s each on 2 cores).
  return jnp.asarray(scale * np.random.default_rng(key).standard_normal(shape), jnp.float64)


def _fill(tree, key=0):
  """float64 values for an abstract (``eval_shape``) parameter tree: no init compiled."""
  rng = np.random.default_rng(key)

  def leaf(path, a):
    if not jnp.issubdtype(a.dtype, jnp.floating):
      return jnp.zeros(a.shape, a.dtype)
    z = rng.standard_normal(a.shape)
    if "var" in jax.tree_util.keystr(path):          # batch-norm variances: positive
      return jnp.asarray(1.0 + 0.1 * z ** 2, jnp.float64)
    return jnp.asarray(z / np.sqrt(max(1, int(np.prod(a.shape[:-1])))), jnp.float64)
  return jax.tree_util.tree_map_with_path(leaf, tree)


def _rows(apply_fn, params, x, trainable=None):
  """Oracle Jacobian rows ``[n, *out, P]`` (leaves in tree order), and the output shape."""
  out = jax.eval_shape(apply_fn, params, x)
  jac = jax.jit(jax.jacrev(apply_fn))(params, x)
  paths = _tree_utils.parameter_paths(params)
  leaves = [j.reshape(j.shape[:out.ndim] + (-1,))
            for path, j in zip(paths, jax.tree_util.tree_leaves(jac))
            if jnp.issubdtype(j.dtype, jnp.floating) and (trainable is None or trainable(path))]
  return jnp.concatenate(leaves, axis=-1), out.shape[1:]


def _reference(apply_fn, params, x1, x2, trace_axes, trainable=None):
  """Oracle: jacrev of the batch output, contracted over leaves, mean over traced axes."""
  def rows(x):
    return _rows(apply_fn, params, x, trainable)

  if x2 is None:  # one oracle compilation per case: rows of [x1; x2] at once
    j1, out = rows(x1)
    j2 = j1
  else:
    j, out = rows(jnp.concatenate([x1, x2]))
    j1, j2 = j[:len(x1)], j[len(x1):]
  m = len(out)
  traced = {a % (m + 1) - 1 for a in trace_axes}
  first = "abcdefgh"[:m]
  second = "".join(first[a] if a in traced else "ABCDEFGH"[a] for a in range(m))
  kept = "".join(first[a] + second[a] for a in range(m) if a not in traced)
  k = jnp.einsum(f"i{first}p,j{second}p->ij{kept}", j1, j2)
  return k / max(1, int(np.prod([out[a] for a in traced])))


def check(apply_fn, params, x1, x2=None, *, trace_axes=(-1,), kinds=None, block_size=None,
          jit=True, trainable=None):
  """Kernel against the oracle; ``kinds``: {path regex: kind} every matching leaf has."""
  kernel_fn = ntk.empirical_ntk_fn(apply_fn, trace_axes=trace_axes, block_size=block_size,
                                   trainable=trainable)
  if jit:
    k = jax.jit(kernel_fn, static_argnums=() if x2 is not None else (1,))(x1, x2, params)
  else:
    k = kernel_fn(x1, x2, params)
  ref = _reference(apply_fn, params, x1, x2, trace_axes, trainable)
  assert k.shape == ref.shape
  scale = float(jnp.abs(ref).max())
  np.testing.assert_allclose(k, ref, rtol=RTOL, atol=RTOL * scale)
  plan = ntk.ntk_plan(apply_fn, params, x1, x2, trace_axes=trace_axes, trainable=trainable,
                      block_size=block_size)
  found = {leaf.path: leaf.kind for leaf in plan}
  for pattern, kind in (kinds or {}).items():
    matched = {p: k for p, k in found.items() if _tree_utils.path_matches(pattern)(p)}
    assert matched and set(matched.values()) == {kind}, (pattern, kind, found)
  return plan


# --- plain JAX ---------------------------------------------------------------------------

def _mlp_params(sizes, key=0):
  return [{"w": _normal(key + 2 * i, (a, b), 1 / np.sqrt(a)), "b": _normal(key + 2 * i + 1, (b,))}
          for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]


def _mlp(ps, x):
  for p in ps[:-1]:
    x = jnp.tanh(x @ p["w"] + p["b"])
  return x @ ps[-1]["w"] + ps[-1]["b"]


@pytest.mark.parametrize("trace_axes, x2_none", [((-1,), False), ((), True)])
def test_plain_mlp(trace_axes, x2_none):
  ps = _mlp_params([5, 7, 6, 3])
  x1, x2 = _normal(1, (6, 5)), (None if x2_none else _normal(2, (4, 5)))
  plan = check(_mlp, ps, x1, x2, trace_axes=trace_axes, kinds={"w$": "structured"})
  assert {l.reason for l in plan if l.path.endswith("b")} == {"merged"}


def test_plain_mlp_blocked_eager_two_traced_axes():
  ps = _mlp_params([5, 7, 6])
  f = lambda p, x: _mlp(p, x).reshape(x.shape[0], 2, 3)
  x1, x2 = _normal(1, (5, 5)), _normal(2, (3, 5))
  check(f, ps, x1, x2, trace_axes=(1, 2), block_size=2, jit=False,
        kinds={"w$": "structured"})
  check(f, ps, x1, None, trace_axes=(-1,), block_size=2, kinds={"w$": "structured"})


CONVS = {
    # name: (input shape per sample, kernel shape, conv kwargs)
    "nhwc_stride2_same": ((6, 6, 3), (3, 3, 3, 4),
                          dict(window_strides=(2, 2), padding="SAME",
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    "nchw_asym_dilated_groups2": ((4, 7, 6), (6, 2, 3, 2),
                                  dict(window_strides=(2, 1), padding=((1, 2), (0, 1)),
                                       rhs_dilation=(1, 2), feature_group_count=2,
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))),
    "depthwise": ((5, 5, 4), (3, 3, 1, 8),
                  dict(window_strides=(1, 1), padding="VALID", feature_group_count=4,
                       dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    "conv1d": ((9, 2), (3, 2, 3), dict(window_strides=(2,), padding=((2, 1),),
                                       dimension_numbers=("NWC", "WIO", "NWC"))),
    "conv3d_lhs_dilated": ((3, 3, 3, 2), (2, 2, 2, 2, 3),
                           dict(window_strides=(1, 1, 1), padding=((1, 1), (0, 1), (1, 0)), lhs_dilation=(2, 1, 1),
                                dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))),
}


@pytest.mark.parametrize("name", sorted(CONVS))
def test_plain_conv(name):
  shape, kshape, kw = CONVS[name]
  conv = lambda x, w: lax.conv_general_dilated(x, w, precision="highest", **kw)
  y = jax.eval_shape(conv, jnp.zeros((1,) + shape), jnp.zeros(kshape))
  ps = {"k": _normal(0, kshape, 0.5), "head": _normal(1, (int(np.prod(y.shape)), 2), 0.3)}

  def f(p, x):
    h = jnp.tanh(conv(x, p["k"]))
    return h.reshape(x.shape[0], -1) @ p["head"]

  x1, x2 = _normal(2, (3,) + shape), _normal(3, (2,) + shape)
  plan = check(f, ps, x1, x2, trace_axes=())
  assert {l.path: l.kind for l in plan}["head"] == "structured"
  assert {l.path: l.kind for l in plan}["k"] in ("structured", "explicit")


def test_conv_cost_model_picks_both_and_both_exact():
  """A wide, low-resolution conv is structured; a narrow high-resolution one explicit."""
  kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def f(p, x):
    h = jnp.tanh(lax.conv_general_dilated(x, p["narrow"], **kw))
    h = lax.conv_general_dilated(h[:, ::4, ::4], p["wide"], **kw)
    return jnp.mean(h, axis=(1, 2))
  ps = {"narrow": _normal(0, (3, 3, 2, 32), 0.3), "wide": _normal(1, (1, 1, 32, 32), 0.2)}
  x1 = _normal(2, (3, 8, 8, 2))
  check(f, ps, x1, trace_axes=(-1,), kinds={"narrow": "explicit", "wide": "structured"})


def test_tying_scaling_and_slices():
  """A reused W (with a scalar view), W W^T, packed weights sliced disjointly."""
  ps = {"w": _normal(0, (4, 4), 0.5), "qkv": _normal(1, (4, 12), 0.5),
        "head": _normal(2, (4, 2))}

  def f(p, x):
    h = jnp.tanh(x @ p["w"])
    h = jnp.tanh(h @ (p["w"] / jnp.sqrt(4.0)))                       # tied, scaled
    # A per-sample scalar view (the vmap over samples is inside the model).
    h = jax.vmap(lambda hi, xi: jnp.tanh(hi @ (p["w"] * xi[0])))(h, x)
    h = h @ (p["w"] @ p["w"].T)                                      # W W^T
    q, k, v = p["qkv"][:, :4], p["qkv"][:, 4:8], p["qkv"][:, 8:]
    h = jnp.tanh(h @ q) * jnp.tanh(h @ k) + h @ v
    return -(h @ p["head"])
  x1, x2 = _normal(3, (4, 4)), _normal(4, (3, 4))
  plan = check(f, ps, x1, x2, trace_axes=(), kinds={"w": "explicit", "qkv": "structured",
                                                    "head": "structured"})
  assert plan[-1].reason == "uses in both roles"  # W W^T next to x W
  check(lambda p, x: f(p, x) @ (p["w"][:2, :2] @ p["w"][:2, :2].T), ps, x1, trace_axes=(),
        kinds={"w": "explicit"})


def test_fallbacks_are_exact():
  ps = {"log_scale": _normal(0, (3,)), "v": _normal(1, (3, 3)), "u": _normal(2, (3, 3)),
        "rnn": _normal(3, (3, 3), 0.5), "act": _normal(4, (3, 3))}

  @jax.custom_jvp
  def square_w(w):
    return w * w
  square_w.defjvp(lambda prim, tan: (square_w(prim[0]), 2 * prim[0] * tan[0]))

  def f(p, x):
    h = x * jnp.exp(p["log_scale"])                                  # exp: fallback
    h = h @ (p["v"] / jnp.linalg.norm(p["v"]))                       # weight norm
    h = jnp.tanh(h @ square_w(p["u"]))                               # custom_jvp
    h, _ = lax.scan(lambda c, _: (jnp.tanh(c @ p["rnn"]), None), h, None, length=2)
    return jax.nn.relu(h) @ p["act"]                                 # relu is custom_jvp
  x1 = _normal(5, (4, 3))
  # v / |v|: every use of v is elementwise (div, the square in the norm): explicit.
  check(f, ps, x1, trace_axes=(-1,), kinds={"log_scale|^u$|rnn": "fallback", "^v$": "explicit",
                                            "act": "structured"})


def test_residual_and_remat():
  ps = _mlp_params([4, 4, 4, 2])

  @jax.checkpoint
  def block(p, h):
    return h + jnp.tanh(h @ p["w"] + p["b"])

  def f(ps, x):
    h = block(ps[0], x)
    h = jax.jit(block)(ps[1], h)
    return h @ ps[2]["w"] + ps[2]["b"]
  check(f, ps, _normal(1, (5, 4)), _normal(2, (2, 4)), trace_axes=(),
        kinds={"w$": "structured", "b$": "structured"})


# --- flax linen --------------------------------------------------------------------------

class LinenNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), strides=2, padding="SAME", feature_group_count=1)(x)
    x = nn.Conv(4, (3, 3), padding=((1, 0), (0, 2)), feature_group_count=2)(jnp.tanh(x))
    x = nn.BatchNorm(use_running_average=True)(x)
    x = nn.LayerNorm()(jnp.tanh(x).reshape(x.shape[0], -1))
    dense = nn.Dense(6)
    x = dense(jnp.tanh(dense(x[:, :6])))  # tied Dense
    return nn.Dense(3)(x)


def test_linen_conv_norms_tied_dense():
  model = LinenNet()
  x1, x2 = _normal(0, (3, 6, 6, 2)), _normal(1, (2, 6, 6, 2))
  variables = _fill(jax.eval_shape(model.init, jax.random.key(0), x1))
  plan = check(model.apply, variables, x1, x2, trace_axes=(-1,),
               trainable=_tree_utils.path_matches("^params"),
               kinds={"Dense_.*/kernel": "structured", "Dense_0/bias": "explicit",
                      "Dense_1/bias": "structured", "LayerNorm_0": "explicit",
                      "BatchNorm_0": "explicit"})
  assert all(l.kind != "fallback" for l in plan)
  kinds = {l.path: (l.kind, l.reason) for l in plan}
  for i in range(2):  # conv biases join their kernel's group, whichever way it is contracted
    assert kinds[f"params/Conv_{i}/bias"] == (kinds[f"params/Conv_{i}/kernel"][0], "merged")
  # Running statistics as trainable leaves: the variance (rsqrt) falls back, still exact.
  check(model.apply, variables, x1, None, trace_axes=(), block_size=2,
        kinds={"batch_stats": "explicit"})


class LinenEmbedScan(nn.Module):

  @nn.compact
  def __call__(self, ids):
    embed = nn.Embed(7, 4)
    h = embed(ids).mean(axis=1)

    class Cell(nn.Module):
      @nn.compact
      def __call__(self, c, _):
        return jnp.tanh(nn.Dense(4)(c)), None
    h, _ = nn.scan(Cell, variable_broadcast="params", split_rngs={"params": False},
                   length=2)()(h, None)
    return nn.remat(nn.Dense)(5)(h) + embed.attend(h)[:, :5]


def test_linen_embed_attend_scan_remat():
  model = LinenEmbedScan()
  ids1 = jnp.asarray(np.random.default_rng(0).integers(0, 7, (4, 3)))
  ids2 = jnp.asarray(np.random.default_rng(1).integers(0, 7, (2, 3)))
  variables = _fill(jax.eval_shape(model.init, jax.random.key(2), ids1))
  check(model.apply, variables, ids1, ids2, trace_axes=(-1,),
        kinds={"Embed_0": "fallback", "ScanCell": "fallback", "CheckpointDense": "structured"})


# --- nnx ---------------------------------------------------------------------------------

class NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(2, 4, (3, 3), strides=2, rngs=rngs)
    self.norm = nnx.LayerNorm(4, rngs=rngs)
    self.lin1 = nnx.Linear(36, 5, rngs=rngs)
    self.lin2 = nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x):
    h = self.norm(jnp.tanh(self.conv(x)))
    h = jnp.tanh(self.lin1(h.reshape(h.shape[0], -1)))
    return self.lin2(h)


def test_nnx():
  graphdef, state = nnx.split(nnx.eval_shape(lambda: NnxNet(nnx.Rngs(0))))
  state = _fill(state)
  apply_fn = lambda s, x: nnx.merge(graphdef, s)(x)
  x1, x2 = _normal(0, (3, 6, 6, 2)), _normal(1, (2, 6, 6, 2))
  check(apply_fn, state, x1, x2, trace_axes=(),
        kinds={"lin.*kernel": "structured", "lin.*bias": "structured",
               "norm": "explicit"})


def test_plan_without_rules_and_batch_mode():
  ps = _mlp_params([3, 3, 2])
  x = _normal(0, (4, 3))
  plan = ntk.ntk_plan(_mlp, ps, x, vmap_axes=None)
  assert {l.kind for l in plan} == {"fallback"}
  check(lambda p, x: jnp.exp(_mlp(p, x)), ps, x, kinds={"w$": "structured"})


def test_jacobian_features_from_factors_in_leaf_order():
  """Dense/conv Jacobians formed from factors come out in each leaf's own order."""
  kw = dict(window_strides=(2, 1), padding="SAME", feature_group_count=2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ps = {"b": _normal(0, (4,)), "k": _normal(1, (3, 2, 1, 4), 0.5), "w": _normal(2, (4, 3), 0.5)}

  def f(p, x):
    h = jnp.tanh(lax.conv_general_dilated(x, p["k"], **kw) + p["b"])
    h = jnp.mean(h, axis=(1, 2)) @ (p["w"] @ p["w"].T)                 # W W^T: overlap
    return h @ p["w"]
  x = _normal(3, (3, 5, 4, 2))
  z = jax.jit(ntk.jacobian_features(f, trace_axes=()))(x, ps)
  rows, _ = _rows(f, ps, x)
  np.testing.assert_allclose(z, rows, rtol=RTOL, atol=RTOL * float(jnp.abs(rows).max()))
