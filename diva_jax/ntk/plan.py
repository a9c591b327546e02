"""The structured-NTK plan: per trainable leaf, structured, explicit or fallback, and why.

One concern: decide how each leaf's contribution to the kernel is computed, from the
leaf's uses (``diva_jax.ntk.jaxpr.leaf_uses``) and a cost model.

* A leaf whose every use is a ``dot_general``/``conv`` site is split into *groups*: uses
  with the same map from W's entries to the canonical ``[g, K, C]`` are one group (their
  activations and cotangents are concatenated along the positions b, which sums the uses'
  Jacobians, cross terms included: weight tying, W W^T). Different groups must touch
  disjoint entries of W (then their cross terms vanish, e.g. slices of a packed QKV
  weight). Otherwise (W W^T next to x W: W in both roles) the leaf is ``'explicit'``: each
  group's Jacobian is gathered into W's own order and summed.
* Cost model (multiply-adds per group, n1 x n2 block, O = T R outputs, U = R kept, P =
  g K C, B positions): explicit ``E = (n1+n2) O B P + n1 n2 O U P`` (form J = A (x) D, then
  contract), structured ``S = n1 n2 g (B^2 K + B^2 O C + B O U C)`` (Gram of A, times D2,
  times D1). The cheaper one is taken for the whole leaf: ``'structured'`` or
  ``'explicit'`` (J formed from the factors, never from a vmapped backward pass).
* Leaves used only by elementwise sites (biases, norm scales) are ``'explicit'``: their
  small Jacobian comes from the same backward pass. A bias added to the output of a site of
  a group (``y + b``, broadcast over the positions only, y used nowhere else) instead joins
  that group as an extra contracted column of A (``[a, 1] [W; b]``), sharing its
  cotangents: it is then as structured as its weight. Leaves with a use without a rule (exp,
  gather, scan, a custom_jvp, mixed rules, ...) are ``'fallback'``: the same, and exact.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from diva_jax.ntk.jaxpr import Program
from diva_jax.ntk.jaxpr import leaf_uses
from diva_jax.ntk.jaxpr import trace_program


class LeafPlan(NamedTuple):
  """How one trainable leaf enters the kernel (``ntk_plan`` returns these)."""
  path: str
  kind: str                 # 'structured' | 'explicit' | 'fallback'
  reason: str
  sites: tuple              # primitive names of the leaf's uses
  cost_structured: float | None
  cost_explicit: float | None


class Group(NamedTuple):
  leaf: int
  uses: tuple               # Use, all of one W-index map
  g: int
  b: int                    # positions of all uses together
  k: int
  c: int
  structured: bool          # contraction mode: structured (True) or explicit J
  biases: tuple = ()        # (Use, site equation): biases added to a site's output
  gather: np.ndarray | None = None  # W flat index -> position in [g*K*C] (-1: none)


class Plan(NamedTuple):
  prog: Program
  n_train: int
  leaves: tuple             # LeafPlan per trainable leaf
  groups: tuple             # Group (structured and explicit-from-factors leaves)
  vjp_leaves: tuple         # leaf indices whose J comes from the backward pass
  sites: tuple              # equation indices that get a zero perturbation
  operands: tuple           # (equation, slot) pairs whose values are recorded


def costs(n1, n2, o, u, g, b, k, c):
  """(structured, explicit) multiply-adds of one group (see the module docstring)."""
  p = g * k * c
  s = n1 * n2 * g * (b * b * k + b * b * o * c + b * o * u * c)
  e = (n1 + n2) * o * b * p + n1 * n2 * o * u * p
  return float(s), float(e)


def _groups(leaf, uses):
  """Groups of uses with one W-index map; whether they overlap; or why there are none."""
  keyed = {}
  for u in uses:
    canon = u.site.w_canon(u.index)
    if np.unique(canon).size != canon.size:
      return "a view repeats entries (broadcast)", False
    key = (canon.shape, canon.tobytes())
    keyed.setdefault(key, (canon, []))[1].append(u)
  seen, overlap, out = set(), False, []
  for canon, us in keyed.values():
    entries = set(canon.ravel().tolist())
    overlap = overlap or bool(seen & entries)
    seen |= entries
    s = us[0].site
    out.append([leaf, tuple(us), s.g, sum(u.site.b for u in us), s.k, s.c, canon])
  return out, overlap


def _gather(canon, size):
  """W flat index -> position in the group's canonical flat order, -1 where absent."""
  g = np.full((size,), -1, np.int64)
  g[canon.ravel()] = np.arange(canon.size)
  return g


def _bias_site(prog, use, consumers, producer, site_eqns):
  """The site equation whose output ``use`` (an add) adds a bias to, or None."""
  e = prog.eqns[use.eqn]
  if e.prim.name not in ("add", "add_any") or len(e.invars) != 2:
    return None
  other = e.invars[1 - use.slot]
  k = producer.get(other) if isinstance(other, int) else None
  if k not in site_eqns or len(consumers.get(other, [])) != 1:
    return None
  if tuple(prog.avals[other].shape) != tuple(prog.avals[e.outvars[0]].shape):
    return None
  return k


def _merge_biases(prog, groups, leaves, uses_per_leaf, consumers, producer):
  """Moves biases of group sites into the groups (see the module docstring)."""
  site_eqns = {}
  for gi, gr in enumerate(groups):
    if gr.gather is not None:
      continue
    for u in gr.uses:
      site_eqns.setdefault(u.site.eqn, (gi, u.site))
  groups, leaves = list(groups), list(leaves)
  for i, uses in enumerate(uses_per_leaf):
    if leaves[i].reason != "elementwise" or len(uses) != 1:
      continue
    use = uses[0]
    k = _bias_site(prog, use, consumers, producer, site_eqns)
    if k is None:
      continue
    gi, site = site_eqns[k]
    y_shape = tuple(prog.avals[prog.eqns[k].outvars[0]].shape)
    index = site.d_canon(np.broadcast_to(use.index, y_shape))   # [g, B, C]
    if (index != index[:, :1]).any() or np.unique(index[:, 0]).size != index[:, 0].size:
      continue
    gr = groups[gi]
    groups[gi] = gr._replace(biases=gr.biases + ((use, k),))
    kind = "structured" if gr.structured else "explicit"
    leaves[i] = leaves[i]._replace(kind=kind, reason="merged")
  return groups, leaves


def make_plan(problem, x_struct, n1: int, n2: int, jacobians: bool = False) -> Plan:
  """Traces the per-sample function of ``problem`` and decides every leaf.

  ``jacobians=True``: a plan for Jacobians, not kernels: every group is explicit and
  gathered into its leaf's own order, and biases are not merged.
  """
  avals = lambda tree: jax.tree_util.tree_map(
      lambda l: jax.ShapeDtypeStruct(np.shape(l), jax.numpy.result_type(l)), tree)
  prog = trace_program(problem.f_sample_consts, avals(problem.train),
                       avals(problem.consts), x_struct)
  n_train = len(problem.train)
  uses_per_leaf, consumers, producer = leaf_uses(prog, prog.invars[:n_train])
  t, r = problem.layout.t, problem.layout.r
  o = t * r
  paths = problem.part.trainable_paths
  leaves, groups, vjp = [], [], []
  for i, uses in enumerate(uses_per_leaf):
    if isinstance(uses, str):
      leaves.append(LeafPlan(paths[i], "fallback", uses, (), None, None))
      vjp.append(i)
      continue
    names = tuple(u.prim for u in uses)
    if not uses:  # J = 0, from the backward pass
      leaves.append(LeafPlan(paths[i], "explicit", "unused", (), None, None))
      vjp.append(i)
      continue
    elementwise = [u.site == "elementwise" for u in uses]
    if all(elementwise):
      leaves.append(LeafPlan(paths[i], "explicit", "elementwise", names, None, None))
      vjp.append(i)
      continue
    if any(elementwise):
      leaves.append(LeafPlan(paths[i], "fallback", "mixed rules", names, None, None))
      vjp.append(i)
      continue
    gs, overlap = _groups(i, uses)
    if isinstance(gs, str):
      leaves.append(LeafPlan(paths[i], "fallback", gs, names, None, None))
      vjp.append(i)
      continue
    cs = [costs(n1, n2, o, r, *gr[2:6]) for gr in gs]
    s_cost, e_cost = sum(c[0] for c in cs), sum(c[1] for c in cs)
    structured = s_cost <= e_cost and not overlap and not jacobians
    reason = "uses in both roles" if overlap else "cost model"
    leaves.append(LeafPlan(paths[i], "structured" if structured else "explicit",
                           reason, names, None if overlap else s_cost, e_cost))
    size = int(np.prod(prog.avals[prog.invars[i]].shape))
    groups.extend(Group(*gr[:6], structured,
                        gather=_gather(gr[6], size) if overlap or jacobians else None)
                  for gr in gs)
  if not jacobians:
    groups, leaves = _merge_biases(prog, groups, leaves, uses_per_leaf, consumers, producer)
  vjp = [i for i in vjp if leaves[i].reason != "merged"]
  sites = sorted({u.site.eqn for gr in groups for u in gr.uses})
  operands = sorted({(u.site.eqn, u.site.operand) for gr in groups for u in gr.uses})
  return Plan(prog, n_train, tuple(leaves), tuple(groups), tuple(vjp), tuple(sites),
              tuple(operands))
