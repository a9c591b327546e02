"""Cross-check of diva_jax's empirical NTK against neural-tangents (not run by CI).

Two sides, two Python environments (neural-tangents 0.6.5 only imports on old JAX):

  --side=nt    (jax 0.4.25, numpy<2, neural-tangents 0.6.5): draws the parameters and
               inputs from a fixed numpy seed, saves them to OUT/inputs.npz, computes
               neural-tangents' empirical NTK for each model, trace_axes and NT
               implementation, saves them to OUT/nt_kernels.npz (+ OUT/nt_versions.json).
  --side=ours  (the project's venv): loads OUT/inputs.npz (bit-identical parameters and
               inputs), computes diva_jax.empirical_ntk_fn for each implementation and
               prints relative differences ||K - K_ref||_F / ||K_ref||_F against
               neural-tangents' STRUCTURED_DERIVATIVES kernel. Exit 1 above --tol.

The models are plain JAX (no flax/stax) so the same code runs on both JAX versions.
Driven by .ci/neural_tangents_check.sh; run by hand as
  python .ci/neural_tangents_check.py --side=nt --out=DIR     # in the NT venv
  python .ci/neural_tangents_check.py --side=ours --out=DIR   # in the project venv
"""
import argparse
import json
import os
import sys
import types

import numpy as np

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

N1, N2 = 6, 5
TRACE_AXES = {"traced(-1,)": (-1,), "full()": ()}
NT_IMPLS = {1: "nt_jacobian_contraction", 2: "nt_ntk_vector_products",
            3: "nt_structured"}
OUR_IMPLS = ("structured", "jacobian_contraction", "ntk_vector_products")
REFERENCE = "nt_structured"


# ---------------------------------------------------------------- models (plain JAX)
def mlp_apply(params, x):
  """3 dense layers, tanh: [n, 8] -> [n, 3]."""
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  h = jnp.tanh(h @ params["w2"] + params["b2"])
  return h @ params["w3"] + params["b3"]


def _conv(x, w, b, stride):
  y = jax.lax.conv_general_dilated(
      x, w, window_strides=(stride, stride), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + b


def cnn_apply(params, x):
  """[n, 6, 6, 2] NHWC -> conv3x3(4) tanh -> conv3x3 stride 2 (5) tanh -> dense 3."""
  h = jnp.tanh(_conv(x, params["c1"], params["cb1"], 1))
  h = jnp.tanh(_conv(h, params["c2"], params["cb2"], 2))
  h = h.reshape(h.shape[0], -1)
  return h @ params["w"] + params["b"]


MODELS = {"mlp": mlp_apply, "cnn": cnn_apply}


def make_inputs(seed=0):
  """Parameters and inputs, float64, from a fixed numpy seed (nt side only)."""
  rng = np.random.RandomState(seed)

  def normal(*shape, fan_in=1):
    return rng.standard_normal(shape) / np.sqrt(fan_in)

  d, w, c = 8, 32, 3
  out = {
      "mlp/w1": normal(d, w, fan_in=d), "mlp/b1": 0.1 * normal(w),
      "mlp/w2": normal(w, w, fan_in=w), "mlp/b2": 0.1 * normal(w),
      "mlp/w3": normal(w, c, fan_in=w), "mlp/b3": 0.1 * normal(c),
      "mlp/x1": normal(N1, d), "mlp/x2": normal(N2, d),
      "cnn/c1": normal(3, 3, 2, 4, fan_in=18), "cnn/cb1": 0.1 * normal(4),
      "cnn/c2": normal(3, 3, 4, 5, fan_in=36), "cnn/cb2": 0.1 * normal(5),
      "cnn/w": normal(3 * 3 * 5, c, fan_in=45), "cnn/b": 0.1 * normal(c),
      "cnn/x1": normal(N1, 6, 6, 2), "cnn/x2": normal(N2, 6, 6, 2),
  }
  return {k: v.astype(np.float64) for k, v in out.items()}


def split(arrays, model):
  params = {k.split("/", 1)[1]: jnp.asarray(v) for k, v in arrays.items()
            if k.startswith(model + "/") and k.split("/", 1)[1] not in ("x1", "x2")}
  return params, jnp.asarray(arrays[model + "/x1"]), jnp.asarray(arrays[model + "/x2"])


def key(model, trace, impl):
  return f"{model}|{trace}|{impl}"


# ---------------------------------------------------------------- nt side
def import_neural_tangents():
  """neural_tangents/__init__ imports .experimental (empirical_tf), which needs
  tensorflow + tf2jax. When tensorflow is not installed, stub that subpackage:
  empirical_ntk_fn lives in neural_tangents._src.empirical and never touches TF."""
  import importlib.util
  stubbed = importlib.util.find_spec("tensorflow") is None
  if stubbed:
    sys.modules["neural_tangents.experimental"] = types.ModuleType(
        "neural_tangents.experimental")
  import neural_tangents as nt
  return nt, stubbed


def run_nt(out):
  nt, stubbed = import_neural_tangents()
  arrays = make_inputs()
  np.savez(os.path.join(out, "inputs.npz"), **arrays)
  kernels = {}
  for model, apply in MODELS.items():
    params, x1, x2 = split(arrays, model)
    for trace, axes in TRACE_AXES.items():
      for impl, name in NT_IMPLS.items():
        fn = nt.empirical_ntk_fn(apply, trace_axes=axes, vmap_axes=0,
                                 implementation=nt.NtkImplementation(impl))
        k = np.asarray(fn(x1, x2, params))
        assert k.dtype == np.float64, k.dtype
        kernels[key(model, trace, name)] = k
        print(f"nt: {model:4s} {trace:12s} {name:24s} shape={k.shape}")
  np.savez(os.path.join(out, "nt_kernels.npz"), **kernels)
  import jaxlib
  versions = {"python": sys.version.split()[0], "jax": jax.__version__,
              "jaxlib": jaxlib.__version__, "numpy": np.__version__,
              "neural_tangents": nt.__version__,
              "tensorflow": "not installed (neural_tangents.experimental stubbed)"
              if stubbed else __import__("tensorflow").__version__}
  with open(os.path.join(out, "nt_versions.json"), "w") as f:
    json.dump(versions, f, indent=1)
  print("nt side versions:", versions)


# ---------------------------------------------------------------- ours side
def rel(a, ref):
  a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
  if a.shape != ref.shape:
    return float("inf")
  return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def run_ours(out, tol):
  import diva_jax
  with np.load(os.path.join(out, "inputs.npz")) as f:
    arrays = {k: f[k] for k in f.files}
  with np.load(os.path.join(out, "nt_kernels.npz")) as f:
    nt_k = {k: f[k] for k in f.files}
  vpath = os.path.join(out, "nt_versions.json")
  if os.path.exists(vpath):
    with open(vpath) as f:
      print("neural-tangents side:", json.load(f))
  print(f"our side: jax {jax.__version__}, numpy {np.__version__}, "
        f"diva_jax {getattr(diva_jax, '__version__', '?')}")
  print(f"relative difference ||K - K_ref||_F / ||K_ref||_F, K_ref = {REFERENCE}; "
        f"tol {tol:g}")
  print(f"{'model':5s} {'trace_axes':12s} {'implementation':26s} {'shape':14s} rel_diff")
  worst = 0.0
  failed = []
  for model, apply in MODELS.items():
    params, x1, x2 = split(arrays, model)
    for trace, axes in TRACE_AXES.items():
      ref = nt_k[key(model, trace, REFERENCE)]
      rows = [(name, nt_k[key(model, trace, name)])
              for name in NT_IMPLS.values() if name != REFERENCE]
      for impl in OUR_IMPLS:
        fn = diva_jax.empirical_ntk_fn(apply, trace_axes=axes, implementation=impl)
        k = np.asarray(fn(x1, x2, params))
        if k.dtype != np.float64:
          failed.append(f"{model} {trace} {impl}: dtype {k.dtype}")
        rows.append(("ours_" + impl, k))
      for name, k in rows:
        r = rel(k, ref)
        worst = max(worst, r)
        flag = "" if r <= tol else "   FAIL"
        if flag:
          failed.append(f"{model} {trace} {name}: {r:.3e}")
        print(f"{model:5s} {trace:12s} {name:26s} {str(tuple(k.shape)):14s} "
              f"{r:.3e}{flag}")
    # Trace convention: traced kernel = MEAN over the traced (logit) axis of the
    # full kernel's diagonal (neural-tangents); SUM would be c times larger.
    full, traced = nt_k[key(model, "full()", REFERENCE)], nt_k[
        key(model, "traced(-1,)", REFERENCE)]
    diag = np.einsum("ijcc->ijc", full)
    print(f"{model:5s} convention: nt traced vs mean_c full[:,:,c,c] rel "
          f"{rel(diag.mean(-1), traced):.1e}; vs sum_c: {rel(diag.sum(-1), traced):.1e}")
  print(f"worst relative difference: {worst:.3e} (tol {tol:g})")
  if failed:
    print("FAILED:\n  " + "\n  ".join(failed))
    return 1
  print("OK: diva_jax matches neural-tangents for every model, trace_axes and "
        "implementation")
  return 0


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--side", choices=("nt", "ours"), required=True)
  p.add_argument("--out", required=True, help="directory for the .npz files")
  p.add_argument("--tol", type=float, default=1e-10,
                 help="max relative Frobenius difference (float64)")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  if a.side == "nt":
    run_nt(a.out)
    return 0
  return run_ours(a.out, a.tol)


if __name__ == "__main__":
  sys.exit(main())
