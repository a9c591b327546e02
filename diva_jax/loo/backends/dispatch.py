"""Which backend computes the LOO value and derivative: the one place that decides.

Two backends compute the same hat-matrix products (`diva_jax.loo.closed_form` holds the maths):

* "host": NumPy/SciPy BLAS and LAPACK on the CPU (`diva_jax.loo.backends.host`). XLA:CPU's float64 GEMM
  is 2-3x slower than OpenBLAS and XLA has no ?syrk / ?trmm, so this is the fast path on CPU.
  Concrete inputs are used in place (no copy into a jax.Array); under a trace it runs as one
  `jax.pure_callback` (its operands are copied once).
* "xla": jitted jax.numpy (`diva_jax.loo.backends.xla`): GPU, TPU, sharded arrays, and any trace that
  should stay inside XLA.

`backend="auto"` (the default of every public function) picks "host" for concrete float32 /
float64 inputs on a CPU default backend, and under a trace dispatches by platform at run time
(`jax.lax.platform_dependent`: the host callback on CPU, XLA elsewhere). Pass "xla" to keep
everything compiled on CPU too (e.g. rows sharded over several CPU devices, which a callback
would gather onto one), or "host" to force the host path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from diva_jax.loo.backends import host as _host
from diva_jax.loo.backends import xla as _xla

__all__ = ["BACKENDS", "check_backend", "use_host", "value_and_grad_eager",
           "value_and_grad_traced", "in_float64", "call_eager_x64"]

BACKENDS = ("auto", "host", "xla")


def check_backend(backend) -> None:
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")


def use_host(backend: str, *, concrete: bool, on_cpu: bool) -> bool:
  """True when the host backend runs directly on concrete inputs."""
  check_backend(backend)
  if backend == "host":
    return concrete
  return backend == "auto" and concrete and on_cpu


def on_cpu(*arrays) -> bool:
  """True when every array is a NumPy array on a CPU default backend or a jax.Array on CPU."""
  for x in arrays:
    if x is None:
      continue
    if isinstance(x, jax.Array):
      if not all(d.platform == "cpu" for d in x.devices()):
        return False
    elif jax.default_backend() != "cpu":
      return False
  return True


def _host_fn(form):
  if form == "primal":
    return _host.primal_value_and_grad
  return lambda *a, **k: _host.dual_value_and_grad(*a, **k, gram=form == "gram_dual")


def value_and_grad_eager(weights, targets, x, reg, mask, temperature, form, loss, with_grad,
                         outer="mean"):
  """The host backend on concrete arrays (NumPy views, no copies where the dtype matches)."""
  dtype = np.dtype(x.dtype) if hasattr(x, "dtype") else np.result_type(x)
  cast = lambda a: np.asarray(a, dtype)
  value, grad = _host_fn(form)(cast(weights), cast(targets), cast(x), dtype.type(reg),
                               cast(mask), dtype.type(temperature), loss=loss,
                               with_grad=with_grad, outer=outer)
  return value, grad


def value_and_grad_traced(weights, targets, x, reg, mask, temperature, form, loss, with_grad,
                          backend="auto", outer="mean"):
  """Under a trace: the XLA backend, or the host one as a callback ("auto": on CPU only)."""
  args = (weights, targets, x, reg, mask, temperature)
  xla = lambda *a: _xla.value_and_grad(*a, form=form, loss=loss, with_grad=with_grad,
                                       outer=outer)
  if backend == "xla":
    return xla(*args)
  dtype = x.dtype
  shapes = (jax.ShapeDtypeStruct((), dtype),
            jax.ShapeDtypeStruct(weights.shape, dtype) if with_grad else None)

  def host(*a):
    value, grad = _host_fn(form)(*(np.asarray(v) for v in a), loss=loss, with_grad=with_grad,
                                 outer=outer)
    return (value, grad) if with_grad else (value, None)

  cpu = lambda *a: jax.pure_callback(host, shapes, *a, vmap_method="sequential")
  run_host = cpu if backend == "host" else (
      lambda *a: lax.platform_dependent(*a, cpu=cpu, default=xla))
  if form == "primal":
    return run_host(*args)
  # The host dual takes sqrt(a): weights < 0 (only under a user's jit) take the XLA form.
  return lax.cond(jnp.all(weights >= 0), lambda: run_host(*args), lambda: xla(*args))


def in_float64(fn):
  """`fn(*args)` computed in float64 when args[2] (features / kernel) is float32 and float64
  is available at trace time, its outputs cast back to float32."""
  def wrapped(*args, **kw):
    dtype = args[2].dtype
    if dtype != jnp.float32 or not jax.config.jax_enable_x64:
      return fn(*args, **kw)
    out = fn(*(jnp.asarray(a, jnp.float64) for a in args), **kw)
    return jax.tree_util.tree_map(lambda o: o.astype(dtype), out)
  return wrapped


def call_eager_x64(jitted, args, **kw):
  """`jitted(*args, **kw)`, traced under `jax.enable_x64` when every arg is concrete (an eager
  call), so float32 inputs get their float64 computation even with x64 disabled."""
  if all(not isinstance(a, jax.core.Tracer) for a in args):
    with jax.enable_x64(True):
      return jitted(*args, **kw)
  return jitted(*args, **kw)
