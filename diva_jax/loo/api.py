"""The public LOO functions: exact leave-one-out of weighted ridge and the dataset derivative.

`loo_predictions`, `loo_loss`, `loo_loss_and_derivative` and `dataset_derivative`: input
validation at the boundary, the choice of form (primal for features [n, d] with d <= n; the
dual for a kernel or for d > n) and of backend (`diva_jax.loo.backends.dispatch`), and the custom VJP that
puts the explicit gradient behind `jax.grad`. The maths is `diva_jax.loo.closed_form`; a separate
validation set is `diva_jax.loo.heldout`; choosing reg is `diva_jax.loo.reg`.

Cost (value and gradient): primal ~4 n d^2 + d^3/3 flops with the host backend (symmetric
and triangular BLAS), ~7 n d^2 with XLA; dual ~n^3/3 (Cholesky) + n^3 (triangular solve) +
n^3 (forming S), O(n^2) memory. For n beyond memory see `diva_jax.loo.streaming.driver`.

float32: the dual forms compute in float64 internally; the primal form stays in float32 while
an a-posteriori bound says it is accurate and is redone in float64 otherwise (`diva_jax.loo.backends.xla`,
`diva_jax.loo.backends.host`). Results come back in the inputs' dtype, never silently wrong.

Forward mode: `jax.grad`, `jax.vjp` and `jax.jacrev` of `loo_loss` work in every input;
`jax.jvp`, `jax.jacfwd` and `jax.hessian` do not (a custom VJP, and a host callback on CPU).
For those, differentiate `diva_jax.reference_loo_loss`, the plain jnp closed form.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diva_jax.loo import checks as _checks
from diva_jax.loo.backends import dispatch as _backend
from diva_jax.loo import closed_form as cf
from diva_jax.loo.results import LooResult

__all__ = [
    "loo_predictions",
    "loo_loss",
    "dataset_derivative",
    "loo_loss_and_derivative",
    "LooResult",
    "LOSSES",
]

LOSSES = cf.LOSSES


def _value(args, form, loss, backend, outer):
  return _backend.value_and_grad_traced(*args, form=form, loss=loss, with_grad=False,
                                        backend=backend, outer=outer)[0]


def _value_and_grad(args, form, loss, backend, outer):
  return _backend.value_and_grad_traced(*args, form=form, loss=loss, with_grad=True,
                                        backend=backend, outer=outer)


# loo_loss with the explicit gradient behind jax.grad: weights get the closed-form
# cotangent; the other inputs, when they are differentiated at all (symbolic zeros tell),
# get theirs from autodiff through the reference closed form. Forward mode is not defined.
@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _loo_loss_cvjp(weights, targets, x, reg, mask, temperature, form, loss, backend, outer):
  return _value((weights, targets, x, reg, mask, temperature), form, loss, backend, outer)


def _cvjp_fwd(weights, targets, x, reg, mask, temperature, form, loss, backend, outer):
  args = (weights, targets, x, reg, mask, temperature)
  vals = tuple(p.value for p in args)
  perturbed = tuple(p.perturbed for p in args)
  if perturbed[0]:
    value, grad_w = _value_and_grad(vals, form, loss, backend, outer)
  else:
    value, grad_w = _value(vals, form, loss, backend, outer), None
  return value, (vals, perturbed, grad_w)


def _cvjp_bwd(form, loss, backend, outer, res, ct):
  del backend
  vals, perturbed, grad_w = res
  if isinstance(ct, jax.custom_derivatives.SymbolicZero):
    return (None,) * 6
  out = [None] * 6
  if perturbed[0]:
    out[0] = ct * grad_w
  others = [i for i in range(1, 6) if perturbed[i]]
  if others:
    # float32 inputs: autodiff through the reference form in float64 where available (the
    # dual forms keep no digit in float32 at small reg), cotangents cast back.
    up = (vals[2].dtype == jnp.float32 and jax.config.jax_enable_x64)
    cast = (lambda a: jnp.asarray(a, jnp.float64)) if up else (lambda a: a)

    def f(*xs):
      full = [cast(v) for v in vals]
      for i, xi in zip(others, xs):
        full[i] = xi
      return cf.loo_loss_impl(*full, form, loss, outer)
    _, vjp = jax.vjp(f, *(cast(vals[i]) for i in others))
    for i, c in zip(others, vjp(cast(ct))):
      out[i] = c.astype(vals[i].dtype)
  return tuple(out)


_loo_loss_cvjp.defvjp(_cvjp_fwd, _cvjp_bwd, symbolic_zeros=True)

_STATIC = ("form", "loss", "backend", "outer")
_loo_loss_jit = jax.jit(_loo_loss_cvjp, static_argnames=_STATIC)
_loo_value_and_grad_jit = jax.jit(
    lambda w, y, x, r, m, t, form, loss, backend, outer: LooResult(
        *_value_and_grad((w, y, x, r, m, t), form, loss, backend, outer)),
    static_argnames=_STATIC)


# float32 inputs computed in float64 where available (eagerly, or under x64).
_loo_predictions_jit = jax.jit(_backend.in_float64(cf.loo_predictions_impl),
                               static_argnames=("form",))


def _validate(weights, targets, features, kernel, reg, eval_mask, loss, temperature,
              outer="mean") -> int:
  """The boundary checks of every LOO function; returns n."""
  _checks.check_loss_args(loss, temperature, targets)
  n = _checks.check_ridge_inputs(weights, targets, features, kernel, reg, eval_mask)
  _checks.check_outer(outer, weights, eval_mask)
  return n


def prepare(weights, targets, features, kernel, reg, eval_mask=None, loss="mse",
            temperature=1.0, checked=False):
  """Validates (unless `checked`), casts to one float dtype (jax.Arrays) and picks the form."""
  n = np.shape(weights)[0] if checked else _validate(
      weights, targets, features, kernel, reg, eval_mask, loss, temperature)
  dtype = _checks.float_dtype(features if features is not None else kernel, targets)
  cast = lambda a: jnp.asarray(a, dtype)
  x = cast(features if features is not None else kernel)
  mask = jnp.ones((n,), dtype) if eval_mask is None else jnp.asarray(eval_mask).astype(dtype)
  return ((cast(weights), cast(targets), x, cast(reg), mask, cast(temperature)),
          cf.choose_form(features, kernel, n))


def _concrete(*arrays) -> bool:
  return all(_checks.is_concrete(a) for a in arrays if a is not None)


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
    [n, c] leave-one-out predictions, in the dtype of features / kernel (float32 inputs are
    computed in float64 where it is available: eagerly, or under x64).

  Raises:
    ValueError: on bad shapes or values (see `diva_jax.loo.checks`), or when the factorisation
      fails (NaN) because reg is too small for the conditioning in this dtype.
  """
  (w, y, x, r, _, _), form = prepare(weights, targets, features, kernel, reg)
  out = _backend.call_eager_x64(_loo_predictions_jit, (w, y, x, r), form=form)
  return _checks.raise_if_nonfinite(out, reg, "leave-one-out prediction")


def _loss_call(weights, targets, features, kernel, reg, eval_mask, loss, temperature,
               with_grad, backend, outer):
  """Validates, then the host backend on concrete CPU inputs, or the jitted path."""
  _backend.check_backend(backend)
  n = _validate(weights, targets, features, kernel, reg, eval_mask, loss, temperature, outer)
  what = "dataset derivative" if with_grad else "leave-one-out loss"
  x = features if features is not None else kernel
  raw = (weights, targets, x, reg, eval_mask, temperature)
  concrete = _concrete(*raw)
  if _backend.use_host(backend, concrete=concrete,
                       on_cpu=concrete and _backend.on_cpu(*raw)):
    # Directly on the caller's buffers: `jax.pure_callback` would device_put its operands
    # first (0.3-0.5 s per 200 MB here).
    mask = np.ones(n) if eval_mask is None else eval_mask
    form = cf.choose_form(features, kernel, n)
    value, grad = _backend.value_and_grad_eager(weights, targets, x, reg, mask, temperature,
                                                form, loss, with_grad, outer)
    out = LooResult(jnp.asarray(value), jnp.asarray(grad)) if with_grad else jnp.asarray(value)
    return _checks.raise_if_nonfinite(out, reg, what)
  args, form = prepare(weights, targets, features, kernel, reg, eval_mask, loss, temperature,
                       checked=True)
  jitted = _loo_value_and_grad_jit if with_grad else _loo_loss_jit
  # Eager calls trace under x64: float32 results are guarded by float64 recomputation.
  out = _backend.call_eager_x64(jitted, args, form=form, loss=loss, backend=backend,
                                outer=outer)
  return _checks.raise_if_nonfinite(out, reg, what)


def loo_loss(weights: jax.Array, targets: jax.Array, *,
             features: Optional[jax.Array] = None,
             kernel: Optional[jax.Array] = None,
             reg: float | jax.Array,
             loss: str = "mse",
             eval_mask: Optional[jax.Array] = None,
             temperature: float | jax.Array = 1.0,
             backend: str = "auto",
             outer: str = "mean") -> jax.Array:
  """Mean leave-one-out loss over the evaluated samples.

  L(a) = sum_i m_i loss(f_loo_i, y_i) / sum_i m_i, with m = eval_mask (default all): the
  weights act only inside the fit (`outer="mean"`, the paper's definition). With
  `outer="weighted"` the outer mean is weighted too, L(a) = sum_i a_i m_i l_i / sum_i a_i m_i:
  the same value at a = 1, and a derivative that adds each sample's own term
  m_k (l_k - L) / sum_i a_i m_i (a sample whose own LOO loss is high hurts), which is what
  makes detection hold on binary and low-dimensional data (docs/math.md).

  `jax.grad` of this function with respect to `weights` uses the explicit closed-form
  gradient (a custom VJP): about the cost of a few Gram products, not of autodiff through
  the factorisation. Gradients with respect to the other inputs use autodiff. Forward mode
  (`jax.jvp`, `jax.hessian`) is not supported: use `diva_jax.reference_loo_loss` for it.

  Args:
    weights, targets, features, kernel, reg: as in `loo_predictions`.
    loss: "mse" (squared error summed over the c outputs) or "ce" (cross-entropy of
      softmax(f / temperature) against target rows that are probabilities; c >= 2).
    eval_mask: [n] bool (or 0/1), the samples whose LOO loss is averaged (e.g. the core set
      in dataset extension, so pool samples cannot vote for themselves).
    temperature: softmax temperature > 0 for "ce" (ignored for "mse").
    backend: "auto", "host" or "xla" (`diva_jax.loo.backends.dispatch`).
    outer: "mean" (default; the paper's L) or "weighted" (the outer mean weighted by the
      sample weights; needs sum_i a_i m_i > 0).

  Returns:
    Scalar LOO loss.
  """
  return _loss_call(weights, targets, features, kernel, reg, eval_mask, loss, temperature,
                    False, backend, outer)


def loo_loss_and_derivative(weights: jax.Array, targets: jax.Array, *,
                            features: Optional[jax.Array] = None,
                            kernel: Optional[jax.Array] = None,
                            reg: float | jax.Array,
                            loss: str = "mse",
                            eval_mask: Optional[jax.Array] = None,
                            temperature: float | jax.Array = 1.0,
                            backend: str = "auto",
                            outer: str = "mean") -> LooResult:
  """`LooResult(value, derivative)` from one factorisation. Arguments as in `loo_loss`.

  Called with concrete arrays on the CPU backend (not under a trace), it runs the host
  BLAS backend directly on the caller's buffers (no copies); under `jit`/`grad`, or on GPU
  and TPU, the same maths runs compiled (a host callback on CPU).
  """
  return _loss_call(weights, targets, features, kernel, reg, eval_mask, loss, temperature,
                    True, backend, outer)


def dataset_derivative(weights: jax.Array, targets: jax.Array, *,
                       features: Optional[jax.Array] = None,
                       kernel: Optional[jax.Array] = None,
                       reg: float | jax.Array,
                       loss: str = "mse",
                       eval_mask: Optional[jax.Array] = None,
                       temperature: float | jax.Array = 1.0,
                       backend: str = "auto",
                       outer: str = "mean") -> jax.Array:
  """The dataset derivative dL_loo / d weights  [n].

  Positive entries are samples whose down-weighting lowers the LOO error (they hurt);
  negative entries help. Exact (closed form), finite at zero weights. Arguments as in
  `loo_loss`.
  """
  return loo_loss_and_derivative(
      weights, targets, features=features, kernel=kernel, reg=reg, loss=loss,
      eval_mask=eval_mask, temperature=temperature, backend=backend, outer=outer).derivative
