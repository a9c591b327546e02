"""The structured NTK implementation: the kernel from activations and cotangents.

One concern: run a ``diva_jax.ntk.plan.Plan`` block by block. Per block of samples, one
forward pass of the flat program with a zero perturbation added to every site output,
then one backward pass per output entry (vmapped over the one-hot basis of the T R
outputs) with respect to the perturbations and the leaves that fall back. That gives

* for each site, the cotangents ``D = df/dy`` and the recorded operand (activations A);
* for each 'explicit' (elementwise) or 'fallback' leaf, its Jacobian.

A structured group then contributes (canonical site ``y[g,b,c] = sum_k A[g,b,k] W'[g,k,c]``)

    K[i, j, r, s] += (1/T) sum_{t, g, b, b'} <A1[g,b], A2[g,b']> <D1[t,r,g,b], D2[t,s,g,b']>

and an explicit group its Jacobian ``J[t,r,g,k,c] = sum_b A[g,b,k] D[t,r,g,b,c]``; all
Jacobians are contracted in one product. Samples are independent (``vmap_axes`` an int);
otherwise the Jacobian contraction is used.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diva_jax.ntk.blocks import blocked_pairs
from diva_jax.ntk.contraction import jacobian_contraction
from diva_jax.ntk.jaxpr import evaluate
from diva_jax.ntk.plan import Plan
from diva_jax.ntk.plan import make_plan
from diva_jax.ntk.problem import Problem

_HIGHEST = jax.lax.Precision.HIGHEST


def _factor(factors, values, n, dtype):
  """``[n]``: the product of a use's scalar view factors, per sample."""
  f = jnp.ones((n,), dtype)
  for fac in factors:
    if fac[0] == "const":
      f = f * fac[1]
    else:
      f = f * jnp.asarray(values[fac[1]], dtype).reshape(n) ** fac[2]
  return f


def factors_fn(problem: Problem, plan: Plan, per_leaf: bool = False):
  """``xb [b, ...] -> ([(A, D)] per structured group, J [b, T, R, P] or None)``.

  A: ``[b, g, B, K]``; D: ``[b, T, R, g, B, C]``. Structured groups keep (A, D);
  explicit groups are turned into Jacobians and concatenated with the backward-pass
  Jacobians of the explicit/fallback leaves. With ``per_leaf`` (a plan made with
  ``jacobians=True``) J is instead a list, per trainable leaf, of ``[b, T, R, L]`` in the
  leaf's own (row-major) order.
  """
  prog, t, r = plan.prog, problem.layout.t, problem.layout.r
  site_pos = {k: i for i, k in enumerate(plan.sites)}
  operands = {}
  for k, slot in plan.operands:
    operands.setdefault(k, []).append(slot)
  var_ids = sorted({f[1] for gr in plan.groups for u in gr.uses + tuple(
      b for b, _ in gr.biases) for f in u.factors if f[0] == "var"})
  consts = jax.tree_util.tree_leaves(problem.consts)
  train = list(problem.train)

  def one(x):
    y_shapes = [prog.avals[prog.eqns[k].outvars[0]] for k in plan.sites]
    eps = [jnp.zeros(a.shape, a.dtype) for a in y_shapes]
    fb = [train[i] for i in plan.vjp_leaves]

    def g(fb, eps):
      leaves = list(train)
      for i, l in zip(plan.vjp_leaves, fb):
        leaves[i] = l
      acts = {}

      def hook(k, vals, outs):
        if k in operands:
          for slot in operands[k]:
            acts[(k, slot)] = vals[slot]
        if k in site_pos:
          outs = [outs[0] + eps[site_pos[k]]]
        return outs

      (out,), env = evaluate(prog, leaves + consts + [x], hook)
      return out, (acts, {v: env[v] for v in var_ids})

    out, vjp_fn, aux = jax.vjp(g, fb, eps, has_aux=True)
    o = t * r
    basis = jnp.eye(o, dtype=out.dtype).reshape((o,) + out.shape)
    d_fb, d_eps = jax.vmap(vjp_fn)(basis)
    return d_fb, d_eps, aux

  def fn(xb):
    d_fb, d_eps, (acts, var_vals) = jax.vmap(one)(xb)
    n = xb.shape[0]
    dtype = d_eps[0].dtype if d_eps else d_fb[0].dtype
    structured, jacs, gathered = [], [], {}
    for gr in plan.groups:
      a, d = [], []
      for u in gr.uses:
        s = u.site
        f = _factor(u.factors, var_vals, n, dtype)
        a.append(s.a_canon(acts[(s.eqn, s.operand)].astype(dtype))
                 * f[:, None, None, None])
        d.append(s.d_canon(d_eps[site_pos[s.eqn]]))       # [b, O, g, B_u, C]
      if gr.biases:  # [a, 1] [W; b]: one column per bias, nonzero at its site's uses
        a = [jnp.concatenate([ai] + [
            jnp.broadcast_to(_factor(bu.factors, var_vals, n, dtype)[:, None, None, None]
                             * (u.site.eqn == k), ai.shape[:-1] + (1,))
            for bu, k in gr.biases], axis=-1) for ai, u in zip(a, gr.uses)]
      a = jnp.concatenate(a, axis=2) if len(a) > 1 else a[0]
      d = jnp.concatenate(d, axis=3) if len(d) > 1 else d[0]
      d = d.reshape((n, t, r) + d.shape[2:])
      if gr.structured:
        structured.append((a, d))
      else:
        jac = jnp.einsum("ngxk,ntrgxc->ntrgkc", a, d, precision=_HIGHEST)
        jac = jac.reshape(n, t, r, -1)
        if gr.gather is None:
          jacs.append(jac)
        else:  # into W's own order (zero where the group does not reach), summed
          jac = jnp.concatenate([jac, jnp.zeros_like(jac[..., :1])], axis=-1)
          jac = jnp.take(jac, jnp.asarray(gr.gather % (jac.shape[-1])), axis=-1)
          gathered[gr.leaf] = gathered.get(gr.leaf, 0.) + jac
    fb_jacs = [j.reshape(n, t, r, -1) for j in d_fb]
    if per_leaf:
      by_leaf = dict(gathered)
      by_leaf.update(zip(plan.vjp_leaves, fb_jacs))
      return structured, [by_leaf[i] for i in range(plan.n_train)]
    jacs.extend(gathered.values())
    jacs.extend(fb_jacs)
    jac = None
    if jacs:
      jac = jnp.concatenate(jacs, axis=-1) if len(jacs) > 1 else jacs[0]
    return structured, jac

  return fn


def _gram(x1, x2):
  """``[b1, b2, R, R]`` = sum over t and p of ``x1[i,t,r,p] x2[j,t,s,p]``, as one matmul."""
  b1, t, r = x1.shape[:3]
  b2 = x2.shape[0]
  if r == 1:
    k = jnp.matmul(x1.reshape(b1, -1), x2.reshape(b2, -1).T, precision=_HIGHEST)
    return k[:, :, None, None]
  m1 = jnp.swapaxes(x1, 1, 2).reshape(b1 * r, -1)
  m2 = jnp.swapaxes(x2, 1, 2).reshape(b2 * r, -1)
  k = jnp.matmul(m1, m2.T, precision=_HIGHEST).reshape(b1, r, b2, r)
  return jnp.transpose(k, (0, 2, 1, 3))


def _contract_group(a1, d1, a2, d2):
  """``[b1, b2, R, R]``: sum over t, g, b, b' of <A1, A2> <D1, D2> (not divided by T)."""
  if a1.shape[2] == 1 and a2.shape[2] == 1:       # one position (dense layers)
    hh = jnp.einsum("igk,jgk->ijg", a1[:, :, 0], a2[:, :, 0], precision=_HIGHEST)
    d1, d2 = d1[:, :, :, :, 0], d2[:, :, :, :, 0]  # [b, T, R, g, C]
    if d1.shape[3] == 1:
      return hh[:, :, 0, None, None] * _gram(d1[:, :, :, 0], d2[:, :, :, 0])
    dd = jnp.einsum("itrgc,jtsgc->ijrsg", d1, d2, precision=_HIGHEST)
    return jnp.einsum("ijg,ijrsg->ijrs", hh, dd, precision=_HIGHEST)
  ga = jnp.einsum("igxk,jgyk->ijgxy", a1, a2, precision=_HIGHEST)
  b, r = max(a1.shape[2], a2.shape[2]), max(d1.shape[2], d2.shape[2])
  if r * b <= r + b or r == 1:
    # Cotangent Gram first (one GEMM over t and c), then against the activation Gram:
    # memory b1 b2 g B B' R R instead of b1 b2 T R g B C (at EfficientNet's head, traced
    # over its 1280 features, the other order held 59 MB per pair), flops at most equal.
    dd = jnp.einsum("itrgxc,jtsgyc->ijrsgxy", d1, d2, precision=_HIGHEST)
    return jnp.einsum("ijgxy,ijrsgxy->ijrs", ga, dd, precision=_HIGHEST)
  p = jnp.einsum("ijgxy,jtsgyc->ijtsgxc", ga, d2, precision=_HIGHEST)
  return jnp.einsum("ijtsgxc,itrgxc->ijrs", p, d1, precision=_HIGHEST)


def contract(state1, state2, t):
  (s1, j1), (s2, j2) = state1, state2
  k = 0.
  if j1 is not None:
    k = _gram(j1, j2)
  for (a1, d1), (a2, d2) in zip(s1, s2):
    k = k + _contract_group(a1, d1, a2, d2)
  return k / t


def plan_for(problem: Problem, x1, x2, block_size) -> Plan:
  n1, n2 = x1.shape[0], x2.shape[0]
  if block_size is not None:
    n1, n2 = min(n1, block_size), min(n2, block_size)
  x_struct = jax.ShapeDtypeStruct(x1.shape[1:], x1.dtype)
  return make_plan(problem, x_struct, n1, n2)


def structured(problem: Problem, x1, x2, block_size, progress):
  if not problem.per_sample:
    return jacobian_contraction(problem, x1, x2, block_size, progress)
  plan = plan_for(problem, x1, x2, block_size)
  prep = factors_fn(problem, plan)
  t = problem.layout.t
  return blocked_pairs(prep, lambda a, b: contract(a, b, t), x1, x2, block_size, progress)


def leaf_jacobians_fn(problem: Problem, x_struct):
  """``xb -> [[b, T, R, L] per trainable leaf]``: per-sample Jacobians, from activations and
  cotangents for dense and conv leaves (no vmapped backward pass per weight)."""
  plan = make_plan(problem, x_struct, 1, 1, jacobians=True)
  fn = factors_fn(problem, plan, per_leaf=True)
  return lambda xb: fn(xb)[1]

