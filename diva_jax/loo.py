"""Weighted ridge regression, its exact leave-one-out (LOO) and the dataset derivative.

The maths (see `shared/docs/math.md` of the project for the derivation and the paper's
typos). Samples i = 1..n have features z_i [d] (rows of Z [n, d]) or a kernel K = Z Z^T
[n, n], targets y_i [c] (rows of Y [n, c]) and weights a_i >= 0 (A = diag(a)). The weighted
ridge fit minimises sum_i a_i ||W^T z_i - y_i||^2 + reg ||W||^2; its hat matrix is

    primal:  S = Z C_a Z^T,  C_a = (Z^T A Z + reg I)^-1                     [n, n]
    dual:    S = K (reg I + A K)^-1

with fitted values Yhat = S A Y and weighted leverages h_i = a_i S_ii in [0, 1). Leaving i
out is setting a_i = 0, and the exact LOO prediction is

    f_loo_i = (Yhat_i - h_i y_i) / (1 - h_i),

finite and exact for every a_i >= 0 (at a_i = 0 it is the fitted value). The LOO loss is
L(a) = mean over evaluated i of loss(f_loo_i, y_i), and its gradient dL/da [n] is the
*dataset derivative*: a positive entry means lowering that sample's weight lowers the LOO
error (the sample hurts).

Gradient, in closed form (derived in math.md, checked in the tests against jax.grad of the
reference closed form and finite differences): with r_k = y_k - Yhat_k, e_i = f_loo_i - y_i,
g_i = d loss_i / d f (times the mean's 1/n_eval and the eval mask), G~_i = g_i / (1 - h_i)
and u_i = <g_i, e_i> / (1 - h_i):

    dL/da_k = <r_k, (S G~)_k> + u_k S_kk - sum_i a_i u_i S_ik^2.

Primal implementation, never forming an n x n matrix: with the Cholesky factor
L L^T = Z^T A Z + reg I and B = Z L^-T [n, d], S = B B^T, so S_kk = ||b_k||^2,
S v = B (B^T v) and sum_i w_i S_ik^2 = b_k^T N b_k with N = B^T diag(w) B [d, d]. On the
CPU every product is symmetric or triangular (`diva_jax._host`): Z^T A Z and N by ?syrk
(N over the samples of each sign of w), B by ?trsm, and b_k^T N b_k = 2 b_k^T V b_k with V
N's upper triangle, diagonal halved, by ?trmm; value and gradient cost ~4 n d^2 + d^3 / 3
flops (the value alone ~2 n d^2), where one general product Z^T W is 2 n d^2. The XLA
version (GPU, TPU) has no triangular product and spends ~5 n d^2.

Dual implementation: M = reg I + A^1/2 K A^1/2 = L L^T, V = L^-1 A^1/2 K [n, n] and
S = (K - V^T V) / reg. The value needs a Cholesky and a triangular inverse
(1 - h_i = reg (M^-1)_ii, Yhat = K A^1/2 M^-1 A^1/2 Y); the gradient forms S.

On the CPU backend (float32 and float64) both forms run with SciPy's BLAS and LAPACK
(`diva_jax._host`; XLA:CPU's float64 GEMM is 2-3x slower than OpenBLAS, and XLA has no ?syrk
or ?trmm): directly on the caller's arrays for concrete inputs, in one host callback under a
trace. Tested equal to the XLA code that GPU and TPU run. The reference closed form, which
autodiff goes through, is always plain JAX.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from diva_jax import _blas
from diva_jax import _checks
from diva_jax import _host

__all__ = [
    "loo_predictions",
    "loo_loss",
    "dataset_derivative",
    "loo_loss_and_derivative",
    "ridge_predict",
    "validation_loss",
    "validation_derivative",
    "select_reg",
    "RegSelection",
    "LOSSES",
]

LOSSES = ("mse", "ce")

_dot = functools.partial(jnp.matmul, precision=lax.Precision.HIGHEST)


# --------------------------------------------------------------------------------------
# Losses. Per sample: f [c], y [c] -> scalar.
# --------------------------------------------------------------------------------------


def _per_sample_loss(loss: str, f, y, temperature):
  """'mse': ||f - y||^2 summed over outputs; 'ce': -<y, log softmax(f / T)>."""
  if loss == "mse":
    return jnp.sum((f - y) ** 2, axis=-1)
  if loss == "ce":
    return -jnp.sum(y * jax.nn.log_softmax(f / temperature, axis=-1), axis=-1)
  raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")


def _mean_loss(loss, preds, targets, mask, temperature):
  per = _per_sample_loss(loss, preds, targets, temperature)
  return jnp.sum(mask * per) / jnp.sum(mask)


# --------------------------------------------------------------------------------------
# Hat-matrix building blocks.
# --------------------------------------------------------------------------------------


def _weighted_gram(features, weights):
  """Z^T A Z  [d, d]."""
  return _dot((features * weights[:, None]).T, features)


def _primal_b(weights, features, reg):
  """B = Z L^-T with L L^T = Z^T A Z + reg I, so that S = B B^T.  [n, d]."""
  d = features.shape[1]
  gram = _weighted_gram(features, weights) + reg * jnp.eye(d, dtype=features.dtype)
  chol = jnp.linalg.cholesky(gram)
  return lax.linalg.triangular_solve(
      chol, features, left_side=False, lower=True, transpose_a=True)


def _primal_b_fast(weights, features, reg):
  """`_primal_b` with a symmetric rank-n update and a BLAS triangular solve (CPU: host
  BLAS, see `diva_jax._blas`). Not for autodiff."""
  d = features.shape[1]
  # Valid weights are >= 0 (checked at the boundary); under a user's jit nothing is checked
  # and e.g. finite differences step below 0: the GEMM branch keeps the function smooth.
  gram = lax.cond(jnp.all(weights >= 0),
                  lambda: _blas.gram(features * jnp.sqrt(jnp.maximum(weights, 0.0))[:, None]),
                  lambda: _blas.matmul((features * weights[:, None]).T, features))
  chol = jnp.linalg.cholesky(gram + reg * jnp.eye(d, dtype=features.dtype))
  return _blas.trsm_right_lower_t(chol, features)


def _dual_v(weights, kernel, reg):
  """V = L^-1 A^1/2 K with L L^T = reg I + A^1/2 K A^1/2.  [n, n].

  Not differentiable in `weights` at 0 (sqrt); the explicit gradient never needs that.
  """
  n = kernel.shape[0]
  sa = jnp.sqrt(weights)
  m = reg * jnp.eye(n, dtype=kernel.dtype) + sa[:, None] * kernel * sa[None, :]
  chol = jnp.linalg.cholesky(m)
  return _blas.trsm_left_lower(chol, sa[:, None] * kernel)


def _dual_s(weights, kernel, reg):
  """S = (K - V^T V) / reg  [n, n] (fast; not for autodiff in weights)."""
  def fast():
    v = _dual_v(jnp.maximum(weights, 0.0), kernel, reg)
    return (kernel - _blas.gram(v)) / reg  # gram() returns an exactly symmetric matrix
  # Negative weights (only possible under a user's jit): the sqrt-free reference form.
  return lax.cond(jnp.all(weights >= 0), fast,
                  lambda: _dual_s_reference(weights, kernel, reg))


def _dual_s_reference(weights, kernel, reg):
  """S = K (reg I + A K)^-1 = (reg I + K A)^-1 K by an LU solve: smooth in every input."""
  n = kernel.shape[0]
  lhs = reg * jnp.eye(n, dtype=kernel.dtype) + kernel * weights[None, :]
  s = jnp.linalg.solve(lhs, kernel)
  return 0.5 * (s + s.T)


def _loo_from(fitted, s_diag, weights, targets):
  h = weights * s_diag
  return (fitted - h[:, None] * targets) / (1.0 - h)[:, None]


def _as_kernel(x, form):
  return _dot(x, x.T) if form == "gram_dual" else x


# --------------------------------------------------------------------------------------
# Reference closed form (autodiff-safe in every input). `form` is static:
# "primal" (x = features), "dual" (x = kernel), "gram_dual" (x = features, d > n).
# --------------------------------------------------------------------------------------


def _loo_predictions_impl(weights, targets, x, reg, form):
  ay = weights[:, None] * targets
  if form == "primal":
    b = _primal_b(weights, x, reg)
    fitted = _dot(b, _dot(b.T, ay))
    s_diag = jnp.sum(b * b, axis=1)
  else:
    s = _dual_s_reference(weights, _as_kernel(x, form), reg)
    fitted = _dot(s, ay)
    s_diag = jnp.diagonal(s)
  return _loo_from(fitted, s_diag, weights, targets)


def _loo_loss_reference(weights, targets, x, reg, mask, temperature, form, loss):
  preds = _loo_predictions_impl(weights, targets, x, reg, form)
  return _mean_loss(loss, preds, targets, mask, temperature)


# --------------------------------------------------------------------------------------
# Fast value, and value + explicit gradient from one factorisation.
# --------------------------------------------------------------------------------------


def _host_or_xla(args, form, loss, with_grad, xla_fn):
  """On the CPU backend (float32 or float64), the primal or dual value (and gradient) in one
  host callback (NumPy, SciPy BLAS and LAPACK, `diva_jax._host`): XLA:CPU's float64 dot runs
  at about 40% of OpenBLAS's rate here, XLA has no symmetric rank-k update or triangular
  product, and one callback copies its inputs once. GPU and TPU (and DIVA_HOST_BLAS=0) run
  `xla_fn`."""
  if (form == "gram_dual" or not _blas.enabled()
      or args[2].dtype not in (jnp.float32, jnp.float64)):
    return xla_fn(*args)
  weights, x = args[0], args[2]
  host_fn = _host.primal_value_and_grad if form == "primal" else _host.dual_value_and_grad
  value_shape = jax.ShapeDtypeStruct((), x.dtype)
  shapes = (value_shape, jax.ShapeDtypeStruct(weights.shape, x.dtype)) if with_grad else value_shape

  def host(*a):
    value, grad = host_fn(*a, loss=loss, with_grad=with_grad)
    return (value, grad) if with_grad else value

  cpu = lambda *a: jax.pure_callback(host, shapes, *a, vmap_method="sequential")
  if form == "dual":  # the host dual needs weights >= 0 (sqrt); otherwise the XLA form
    return lax.cond(jnp.all(weights >= 0),
                    lambda: lax.platform_dependent(*args, cpu=cpu, default=xla_fn),
                    lambda: xla_fn(*args))
  return lax.platform_dependent(*args, cpu=cpu, default=xla_fn)


def _loo_loss_value(weights, targets, x, reg, mask, temperature, form, loss):
  return _host_or_xla((weights, targets, x, reg, mask, temperature), form, loss, False,
                      lambda *a: _loo_loss_value_xla(*a, form, loss))


def _loo_value_and_grad(weights, targets, x, reg, mask, temperature, form, loss):
  """(L_loo, dL_loo/da) with the explicit gradient (module docstring)."""
  return _host_or_xla((weights, targets, x, reg, mask, temperature), form, loss, True,
                      lambda *a: _loo_value_and_grad_xla(*a, form, loss))


def _loo_loss_value_xla(weights, targets, x, reg, mask, temperature, form, loss):
  ay = weights[:, None] * targets
  if form == "primal":
    b = _primal_b_fast(weights, x, reg)
    fitted = _dot(b, _dot(b.T, ay))
    s_diag = jnp.sum(b * b, axis=1)
  else:
    kernel = _as_kernel(x, form)

    def fast():
      v = _dual_v(jnp.maximum(weights, 0.0), kernel, reg)
      return ((_dot(kernel, ay) - _dot(v.T, _dot(v, ay))) / reg,
              (jnp.diagonal(kernel) - jnp.sum(v * v, axis=0)) / reg)

    def reference():
      s = _dual_s_reference(weights, kernel, reg)
      return _dot(s, ay), jnp.diagonal(s)

    fitted, s_diag = lax.cond(jnp.all(weights >= 0), fast, reference)
  preds = _loo_from(fitted, s_diag, weights, targets)
  return _mean_loss(loss, preds, targets, mask, temperature)


def _loo_value_and_grad_xla(weights, targets, x, reg, mask, temperature, form, loss):
  ay = weights[:, None] * targets
  if form == "primal":
    b = _primal_b_fast(weights, x, reg)
    s_diag = jnp.sum(b * b, axis=1)
    apply_s = lambda v: _dot(b, _dot(b.T, v))

    def apply_s_sq(w):
      # sum_i w_i S_ik^2 = b_k^T N b_k with N = B^T diag(w) B. For the squared error and
      # weights >= 0, w = a u >= 0 and N is a Gram matrix (a rank-n update, half a GEMM);
      # negative weights (only under a user's jit) take the GEMM.
      if loss == "mse":
        n_mat = lax.cond(jnp.all(w >= 0),
                         lambda: _blas.gram(b * jnp.sqrt(jnp.maximum(w, 0.0))[:, None]),
                         lambda: _blas.matmul((b * w[:, None]).T, b))
      else:
        n_mat = _blas.matmul((b * w[:, None]).T, b)
      return jnp.sum(_blas.matmul(b, n_mat) * b, axis=1)
  else:
    s = _dual_s(weights, _as_kernel(x, form), reg)
    s_diag = jnp.diagonal(s)
    apply_s = lambda v: _dot(s, v)
    apply_s_sq = lambda w: _dot(s * s, w)
  fitted = apply_s(ay)
  h = weights * s_diag
  one_minus_h = 1.0 - h
  preds = (fitted - h[:, None] * targets) / one_minus_h[:, None]

  per_loss = lambda f: jnp.sum(mask * _per_sample_loss(loss, f, targets, temperature))
  denom = jnp.sum(mask)
  value = per_loss(preds) / denom
  g = jax.grad(per_loss)(preds) / denom  # [n, c]; zero where mask is 0.

  resid = targets - fitted
  err = preds - targets
  g_tilde = g / one_minus_h[:, None]
  u = jnp.sum(g * err, axis=1) / one_minus_h
  grad = (jnp.sum(resid * apply_s(g_tilde), axis=1) + u * s_diag
          - apply_s_sq(weights * u))
  return value, grad


# loo_loss with the explicit gradient behind jax.grad: weights get the closed-form
# cotangent; the other inputs, when they are differentiated at all (symbolic zeros tell),
# get theirs from autodiff through the reference closed form.
@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _loo_loss_cvjp(weights, targets, x, reg, mask, temperature, form, loss):
  return _loo_loss_value(weights, targets, x, reg, mask, temperature, form, loss)


def _cvjp_fwd(weights, targets, x, reg, mask, temperature, form, loss):
  args = (weights, targets, x, reg, mask, temperature)
  vals = tuple(p.value for p in args)
  perturbed = tuple(p.perturbed for p in args)
  if perturbed[0]:
    value, grad_w = _loo_value_and_grad(*vals, form, loss)
  else:
    value, grad_w = _loo_loss_value(*vals, form, loss), None
  return value, (vals, perturbed, grad_w)


def _cvjp_bwd(form, loss, res, ct):
  vals, perturbed, grad_w = res
  if isinstance(ct, jax.custom_derivatives.SymbolicZero):
    return (None,) * 6
  out = [None] * 6
  if perturbed[0]:
    out[0] = ct * grad_w
  others = [i for i in range(1, 6) if perturbed[i]]
  if others:
    def f(*xs):
      full = list(vals)
      for i, xi in zip(others, xs):
        full[i] = xi
      return _loo_loss_reference(*full, form, loss)
    _, vjp = jax.vjp(f, *(vals[i] for i in others))
    for i, c in zip(others, vjp(ct)):
      out[i] = c
  return tuple(out)


_loo_loss_cvjp.defvjp(_cvjp_fwd, _cvjp_bwd, symbolic_zeros=True)

_jit_static = functools.partial(jax.jit, static_argnames=("form", "loss"))
_loo_predictions_jit = jax.jit(_loo_predictions_impl, static_argnames=("form",))
_loo_loss_jit = _jit_static(_loo_loss_cvjp)
_loo_value_and_grad_jit = _jit_static(_loo_value_and_grad)


# --------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------


def _prepare(weights, targets, features, kernel, reg, eval_mask=None, loss="mse",
             temperature=1.0, checked=False):
  """Validates (unless `checked`), casts to one float dtype and picks the cheaper form."""
  if checked:
    n = np.shape(weights)[0]
  else:
    _check_loss_args(loss, temperature)
    n = _checks.check_ridge_inputs(weights, targets, features, kernel, reg, eval_mask)
  dtype = _checks.float_dtype(features if features is not None else kernel, targets)
  cast = lambda a: jnp.asarray(a, dtype)
  if features is not None:
    x = cast(features)
    form = "gram_dual" if x.shape[1] > n else "primal"
  else:
    x, form = cast(kernel), "dual"
  mask = (jnp.ones((n,), dtype) if eval_mask is None
          else jnp.asarray(eval_mask).astype(dtype))
  return (cast(weights), cast(targets), x, cast(reg), mask, cast(temperature)), form


def loo_predictions(weights: jax.Array, targets: jax.Array, *,
                    features: Optional[jax.Array] = None,
                    kernel: Optional[jax.Array] = None,
                    reg: float | jax.Array) -> jax.Array:
  """Exact leave-one-out predictions of weighted ridge regression.

  Row i is the prediction for sample i of the model refit with a_i = 0. Exact for every
  weight, including 0 (where it is the fitted value). Differentiable in every input.

  Cost: primal (features [n, d], used when d <= n) O(n d^2 + d^3) time, O(n d + d^2)
  memory; dual (kernel [n, n], or features with d > n) O(n^3) time, O(n^2) memory.

  Args:
    weights: [n] sample weights >= 0.
    targets: [n, c] targets (one-hot rows for classification).
    features: [n, d] feature rows (primal form). Exactly one of features / kernel.
    kernel: [n, n] symmetric PSD kernel, K = Z Z^T (dual form).
    reg: ridge strength > 0 (absolute, not scaled by the kernel's trace).

  Returns:
    [n, c] leave-one-out predictions, in the dtype of features / kernel.

  Raises:
    ValueError: on bad shapes or values (see `diva_jax._checks`), or when the factorisation
      fails (NaN) because reg is too small for the conditioning in this dtype.
  """
  (w, y, x, r, _, _), form = _prepare(weights, targets, features, kernel, reg)
  out = _loo_predictions_jit(w, y, x, r, form=form)
  return _checks.raise_if_nonfinite(out, reg, "leave-one-out prediction")


def loo_loss(weights: jax.Array, targets: jax.Array, *,
             features: Optional[jax.Array] = None,
             kernel: Optional[jax.Array] = None,
             reg: float | jax.Array,
             loss: str = "mse",
             eval_mask: Optional[jax.Array] = None,
             temperature: float | jax.Array = 1.0) -> jax.Array:
  """Mean leave-one-out loss over the evaluated samples.

  L(a) = sum_i m_i loss(f_loo_i, y_i) / sum_i m_i, with m = eval_mask (default all). The
  weights act only inside the fit; the outer mean is unweighted.

  `jax.grad` of this function with respect to `weights` uses the explicit closed-form
  gradient (a custom VJP): about the cost of a few Gram products, not of autodiff through
  the factorisation. Gradients with respect to the other inputs use autodiff.

  Args:
    weights, targets, features, kernel, reg: as in `loo_predictions`.
    loss: "mse" (squared error summed over the c outputs) or "ce" (cross-entropy of
      softmax(f / temperature) against the target rows, which should sum to 1).
    eval_mask: [n] bool, the samples whose LOO loss is averaged (e.g. the core set in
      dataset extension, so pool samples cannot vote for themselves).
    temperature: softmax temperature for "ce" (ignored for "mse").

  Returns:
    Scalar LOO loss.
  """
  return _loss_call(weights, targets, features, kernel, reg, eval_mask, loss, temperature,
                    with_grad=False)


def _loss_call(weights, targets, features, kernel, reg, eval_mask, loss, temperature,
               with_grad):
  """Validates, then the eager host path (concrete CPU inputs) or the jitted one."""
  _check_loss_args(loss, temperature)
  _checks.check_ridge_inputs(weights, targets, features, kernel, reg, eval_mask)
  what = "dataset derivative" if with_grad else "leave-one-out loss"
  fast = _eager_host(weights, targets, features, kernel, reg, eval_mask, loss, temperature,
                     with_grad=with_grad)
  if fast is not None:
    return _checks.raise_if_nonfinite(fast, reg, what)
  args, form = _prepare(weights, targets, features, kernel, reg, eval_mask, loss, temperature,
                        checked=True)
  jitted = _loo_value_and_grad_jit if with_grad else _loo_loss_jit
  return _checks.raise_if_nonfinite(jitted(*args, form=form, loss=loss), reg, what)


def _on_cpu(x) -> bool:
  """True for a NumPy array (computed on the default backend) or a jax.Array on CPU."""
  if isinstance(x, jax.Array):
    return all(d.platform == "cpu" for d in x.devices())
  return jax.default_backend() == "cpu"


def _eager_host(weights, targets, features, kernel, reg, eval_mask, loss, temperature,
                with_grad):
  """The host (NumPy/SciPy) value [and gradient] for concrete inputs on the CPU backend,
  called directly: no copy of the features into a jax.Array and none into the callback
  (`jax.pure_callback` puts its operands on the device first, 0.3-0.5 s for 200 MB here).
  None when this does not apply (tracers, GPU/TPU, the wide-feature dual, other dtypes,
  DIVA_HOST_BLAS=0); the caller then runs the jitted path, which gives the same numbers.
  Inputs are already validated."""
  x = features if features is not None else kernel
  parts = (weights, targets, x, reg, eval_mask, temperature)
  if (not _blas.enabled() or not all(_checks.is_concrete(a) for a in parts if a is not None)
      or not all(_on_cpu(a) for a in parts if a is not None)):
    return None
  n = np.shape(weights)[0]
  if features is not None and np.shape(features)[1] > n:
    return None  # gram_dual: the jitted path forms Z Z^T
  dtype = _checks.float_dtype(x, targets)
  if dtype not in (jnp.float32, jnp.float64):
    return None
  np_dtype = np.dtype(dtype)
  cast = lambda a: np.asarray(a, np_dtype)  # a view when the dtype already matches
  mask = np.ones(n, np_dtype) if eval_mask is None else cast(eval_mask)
  host_fn = _host.primal_value_and_grad if features is not None else _host.dual_value_and_grad
  value, grad = host_fn(cast(weights), cast(targets), cast(x), np_dtype.type(reg), mask,
                        np_dtype.type(temperature), loss=loss, with_grad=with_grad)
  value = jnp.asarray(value, dtype)
  return (value, jnp.asarray(grad, dtype)) if with_grad else value


def _check_loss_args(loss, temperature):
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
  if jnp.ndim(temperature) != 0:
    raise ValueError(f"temperature must be a scalar, got shape {jnp.shape(temperature)}.")
  if _checks.is_concrete(temperature) and not float(temperature) > 0:
    raise ValueError(f"temperature must be > 0, got {float(temperature)}.")


def loo_loss_and_derivative(weights: jax.Array, targets: jax.Array, *,
                            features: Optional[jax.Array] = None,
                            kernel: Optional[jax.Array] = None,
                            reg: float | jax.Array,
                            loss: str = "mse",
                            eval_mask: Optional[jax.Array] = None,
                            temperature: float | jax.Array = 1.0
                            ) -> tuple[jax.Array, jax.Array]:
  """(loo_loss, dataset_derivative) from one factorisation. Arguments as in `loo_loss`.

  Called with concrete arrays on the CPU backend (not under a trace), it runs the host
  BLAS path directly on the caller's buffers (no copies); under `jit`/`grad`, or on GPU and
  TPU, the same maths runs compiled (a host callback on CPU).
  """
  return _loss_call(weights, targets, features, kernel, reg, eval_mask, loss, temperature,
                    with_grad=True)


def dataset_derivative(weights: jax.Array, targets: jax.Array, *,
                       features: Optional[jax.Array] = None,
                       kernel: Optional[jax.Array] = None,
                       reg: float | jax.Array,
                       loss: str = "mse",
                       eval_mask: Optional[jax.Array] = None,
                       temperature: float | jax.Array = 1.0) -> jax.Array:
  """The dataset derivative dL_loo / d weights  [n].

  Positive entries are samples whose down-weighting lowers the LOO error (they hurt);
  negative entries help. Exact (closed form), finite at zero weights. Arguments as in
  `loo_loss`.

  Cost: primal about 4 n d^2 + d^3/3 flops on CPU (two symmetric rank-n updates, a
  triangular solve and a triangular product: the flops of two general products Z^T W) and
  O(n d + d^2) memory, ~5 n d^2 in the XLA version (GPU, TPU); dual about n^3/3 (Cholesky)
  + n^3 (triangular solve) + n^3 (forming S), O(n^2) memory. For n beyond memory, see
  `diva_jax.streaming`.
  """
  return loo_loss_and_derivative(
      weights, targets, features=features, kernel=kernel, reg=reg, loss=loss,
      eval_mask=eval_mask, temperature=temperature)[1]


# --------------------------------------------------------------------------------------
# A separate validation set.
# --------------------------------------------------------------------------------------


def _ridge_predict_impl(weights, targets, x, reg, x_test, form):
  """Primal: x [n, d], x_test [m, d]; dual: x = K [n, n], x_test = K(train, test) [n, m]."""
  ay = weights[:, None] * targets
  if form == "primal":
    d = x.shape[1]
    gram = _weighted_gram(x, weights) + reg * jnp.eye(d, dtype=x.dtype)
    coef = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(gram), True), _dot(x.T, ay))
    return _dot(x_test, coef)
  n = x.shape[0]
  # Weighted kernel ridge: beta = (A K + reg I)^-1 A Y, predictions K(test, train) beta.
  beta = jnp.linalg.solve(weights[:, None] * x + reg * jnp.eye(n, dtype=x.dtype), ay)
  return _dot(x_test.T, beta)


def _validation_loss_impl(weights, targets, x, reg, x_test, val_targets, temperature,
                          form, loss):
  preds = _ridge_predict_impl(weights, targets, x, reg, x_test, form)
  per = _per_sample_loss(loss, preds, val_targets, temperature)
  return jnp.mean(per)


_ridge_predict_jit = jax.jit(_ridge_predict_impl, static_argnames=("form",))
_validation_vg_jit = jax.jit(
    jax.value_and_grad(_validation_loss_impl), static_argnames=("form", "loss"))


def _prepare_test(weights, targets, features, kernel, reg, test_features, cross_kernel,
                  test_name):
  args, form = _prepare(weights, targets, features, kernel, reg)
  w, y, x, r, _, _ = args
  n = w.shape[0]
  if form in ("primal", "gram_dual"):
    if test_features is None or cross_kernel is not None:
      raise ValueError(f"With features= pass {test_name}_features= ([m, d]) and no cross_kernel.")
    if jnp.ndim(test_features) != 2 or jnp.shape(test_features)[1] != x.shape[1]:
      raise ValueError(
          f"{test_name}_features must have shape [m, {x.shape[1]}] to match features "
          f"{tuple(x.shape)}, got shape {tuple(jnp.shape(test_features))}.")
    _checks.check_finite(f"{test_name}_features", test_features)
    return (w, y, x, r, jnp.asarray(test_features, x.dtype)), "primal"
  if cross_kernel is None or test_features is not None:
    raise ValueError("With kernel= pass cross_kernel= ([n, m], K(train, test)) and no "
                     f"{test_name}_features.")
  if jnp.ndim(cross_kernel) != 2 or jnp.shape(cross_kernel)[0] != n:
    raise ValueError(f"cross_kernel must have shape [n, m] = [{n}, m] (train x test), got shape "
                     f"{tuple(jnp.shape(cross_kernel))}.")
  _checks.check_finite("cross_kernel", cross_kernel)
  return (w, y, x, r, jnp.asarray(cross_kernel, x.dtype)), "dual"


def ridge_predict(weights: jax.Array, targets: jax.Array, *,
                  features: Optional[jax.Array] = None,
                  kernel: Optional[jax.Array] = None,
                  reg: float | jax.Array,
                  test_features: Optional[jax.Array] = None,
                  cross_kernel: Optional[jax.Array] = None) -> jax.Array:
  """Predictions of the weighted ridge fit on new samples  [m, c].

  Primal: `features` [n, d] and `test_features` [m, d]. Dual: `kernel` [n, n] and
  `cross_kernel` [n, m] = K(train, test).
  """
  args, form = _prepare_test(weights, targets, features, kernel, reg, test_features,
                             cross_kernel, "test")
  out = _ridge_predict_jit(*args, form=form)
  return _checks.raise_if_nonfinite(out, reg, "ridge prediction")


def _validation(weights, targets, val_targets, features, val_features, kernel, cross_kernel,
                reg, loss, temperature):
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
  args, form = _prepare_test(weights, targets, features, kernel, reg, val_features,
                             cross_kernel, "val")
  m = args[4].shape[0] if form == "primal" else args[4].shape[1]
  if jnp.ndim(val_targets) != 2 or jnp.shape(val_targets) != (m, args[1].shape[1]):
    raise ValueError(f"val_targets must have shape [m, c] = [{m}, {args[1].shape[1]}], got "
                     f"shape {tuple(jnp.shape(val_targets))}.")
  _checks.check_finite("val_targets", val_targets)
  dtype = args[2].dtype
  out = _validation_vg_jit(*args, jnp.asarray(val_targets, dtype), jnp.asarray(temperature, dtype),
                           form=form, loss=loss)
  return _checks.raise_if_nonfinite(out, reg, "validation loss")


def validation_loss(weights, targets, val_targets, *, features=None, val_features=None,
                    kernel=None, cross_kernel=None, reg, loss="mse", temperature=1.0):
  """Mean loss on a separate validation set of the ridge fit with sample weights.

  Args:
    weights, targets, features, kernel, reg, loss, temperature: as in `loo_loss`.
    val_targets: [m, c] validation targets.
    val_features: [m, d] validation features (primal form).
    cross_kernel: [n, m] kernel between training and validation samples (dual form).

  Returns:
    Scalar mean over validation samples of loss(prediction, target).
  """
  return _validation(weights, targets, val_targets, features, val_features, kernel,
                     cross_kernel, reg, loss, temperature)[0]


def validation_derivative(weights, targets, val_targets, *, features=None, val_features=None,
                          kernel=None, cross_kernel=None, reg, loss="mse", temperature=1.0):
  """d validation_loss / d weights  [n]: the influence of each training sample's weight.

  For the linearised model this is exact: dL_val/da_i = mean_v (z_i^T C_a z_v) <r_i, g_v>,
  with r_i the training residual and g_v the loss gradient at validation sample v.
  Arguments as in `validation_loss`.
  """
  return _validation(weights, targets, val_targets, features, val_features, kernel,
                     cross_kernel, reg, loss, temperature)[1]


# --------------------------------------------------------------------------------------
# Choosing reg: one eigendecomposition, every grid value O(n min(n, d) c).
# --------------------------------------------------------------------------------------


class RegSelection(NamedTuple):
  """Result of `select_reg`.

  Attributes:
    reg: the grid value with the smallest unweighted LOO loss (absolute units).
    grid: [g] the absolute grid that was searched (relative grid x scale).
    losses: [g] the LOO loss at each grid value.
    scale: trace(K) / n, the mean squared feature norm that makes the grid unit-free.
  """
  reg: jax.Array
  grid: jax.Array
  losses: jax.Array
  scale: jax.Array


def _spectral_factor(x, form):
  """P [n, r], s [r] with S(reg) = P diag(1 / (s + reg)) P^T (unweighted)."""
  if form == "primal":
    evals, vecs = jnp.linalg.eigh(_dot(x.T, x))
    return _dot(x, vecs), jnp.clip(evals, 0.0)
  evals, vecs = jnp.linalg.eigh(_as_kernel(x, form))
  evals = jnp.clip(evals, 0.0)
  return vecs * jnp.sqrt(evals)[None, :], evals


def _select_reg_impl(targets, x, rel_grid, temperature, form, loss):
  n = targets.shape[0]
  p, s = _spectral_factor(x, form)
  scale = jnp.sum(s) / n  # trace(K) / n
  grid = rel_grid * scale
  pty = _dot(p.T, targets)  # [r, c]
  p2 = p * p
  mask = jnp.ones((n,), targets.dtype)

  def one(reg):
    inv = 1.0 / (s + reg)
    s_diag = _dot(p2, inv)
    fitted = _dot(p, inv[:, None] * pty)
    preds = (fitted - s_diag[:, None] * targets) / (1.0 - s_diag)[:, None]
    return _mean_loss(loss, preds, targets, mask, temperature)

  losses = jax.vmap(one)(grid)
  losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
  best = jnp.argmin(losses)
  return RegSelection(grid[best], grid, losses, scale)


_select_reg_jit = jax.jit(_select_reg_impl, static_argnames=("form", "loss"))


def select_reg(targets: jax.Array, *, features: Optional[jax.Array] = None,
               kernel: Optional[jax.Array] = None, rel_grid: Optional[jax.Array] = None,
               loss: str = "mse", temperature: float = 1.0) -> RegSelection:
  """Chooses reg by minimising the unweighted (a = 1) exact LOO loss over a grid.

  One eigendecomposition (of Z^T Z when d <= n, else of K) serves the whole grid; each
  grid value then costs O(n min(n, d) c), as generalised cross-validation in
  scikit-learn's RidgeCV. The grid is `rel_grid * trace(K) / n` (trace(K)/n = mean squared
  feature norm), so the default relative grid is unit-free.

  Args:
    targets: [n, c].
    features: [n, d] or kernel: [n, n] (exactly one).
    rel_grid: [g] relative grid, default logspace(-6, 3, 46).
    loss, temperature: as in `loo_loss`.

  Returns:
    A `RegSelection` (reg, grid, losses, scale).
  """
  n = jnp.shape(targets)[0] if jnp.ndim(targets) >= 1 else 0
  _prepare(jnp.ones((n,)), targets, features, kernel, 1.0, loss=loss, temperature=temperature)
  dtype = _checks.float_dtype(features if features is not None else kernel, targets)
  if rel_grid is None:
    rel_grid = jnp.logspace(-6, 3, 46)
  rel_grid = jnp.asarray(rel_grid, dtype)
  if rel_grid.ndim != 1 or rel_grid.size == 0:
    raise ValueError(f"rel_grid must be a non-empty 1-D array, got shape {rel_grid.shape}.")
  if _checks.is_concrete(rel_grid) and not bool(jnp.all(rel_grid > 0)):
    raise ValueError("rel_grid values must all be > 0.")
  if features is not None:
    x = jnp.asarray(features, dtype)
    form = "gram_dual" if x.shape[1] > n else "primal"
  else:
    x, form = jnp.asarray(kernel, dtype), "dual"
  return _select_reg_jit(jnp.asarray(targets, dtype), x, rel_grid,
                         jnp.asarray(temperature, dtype), form=form, loss=loss)
