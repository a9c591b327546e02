"""The jaxpr pass of the structured NTK: a flat program, its interpreter, and each leaf's uses.

One concern: read ``f(train, consts, x)`` as a jaxpr, whatever wrote it (plain JAX, flax
linen, nnx), and find, for every trainable leaf, the equations that consume it.

* ``trace_program`` traces the function with ``jax.make_jaxpr`` and inlines ``jit``
  (pjit), ``closed_call``/``core_call`` and ``remat`` calls recursively into one flat list
  of equations over integer variable ids. ``custom_jvp_call``/``custom_vjp_call``, ``scan``,
  ``while`` and ``cond`` stay opaque (bound as they are, so their custom derivative rules
  hold); a leaf that enters one of them falls back.
* ``evaluate`` interprets the program (``primitive.bind`` with ``get_bind_params``), with a
  hook on every equation's outputs: the structured NTK adds a zero perturbation to site
  outputs there and records site operands.
* ``leaf_uses`` follows each trainable leaf forward through views
  (``diva_jax.ntk.rules.view_step``) to the equations that consume it, and returns per
  leaf either its ``Use``s or the reason it has no rule.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
from jax.extend import core as jcore
import numpy as np

from diva_jax.ntk import rules as _ntk_rules

# Call-like primitives whose body is inlined (names across JAX versions).
_INLINE = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
           "core_call": "call_jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr",
           "remat": "jaxpr"}


class Lit(NamedTuple):
  val: Any


class Eqn(NamedTuple):
  prim: Any
  invars: tuple       # int ids or Lit
  outvars: tuple      # int ids
  params: dict


class Program(NamedTuple):
  eqns: list
  invars: list        # int ids (the flattened arguments)
  outvars: list       # int ids or Lit
  avals: dict         # id -> aval
  consts: dict        # id -> value


def trace_program(fn: Callable, *args) -> Program:
  """Traces ``fn(*args)`` (arrays or ShapeDtypeStructs) to a flat ``Program``."""
  closed = jax.make_jaxpr(fn)(*args)
  avals, consts, eqns = {}, {}, []
  counter = iter(range(1 << 62))

  def new(aval):
    i = next(counter)
    avals[i] = aval
    return i

  def inline(jaxpr, const_vals, in_atoms):
    env = {}

    def read(v):
      return Lit(v.val) if isinstance(v, jcore.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, const_vals):
      env[v] = new(v.aval)
      consts[env[v]] = c
    for v, a in zip(jaxpr.invars, in_atoms):
      env[v] = a
    for eqn in jaxpr.eqns:
      ins = tuple(read(v) for v in eqn.invars)
      key = _INLINE.get(eqn.primitive.name)
      if key is not None and key in eqn.params:
        sub = eqn.params[key]
        sub_jaxpr, sub_consts = ((sub.jaxpr, sub.consts) if isinstance(sub, jcore.ClosedJaxpr)
                                 else (sub, ()))
        outs = inline(sub_jaxpr, sub_consts, ins)
      else:
        outs = [new(v.aval) for v in eqn.outvars]
        eqns.append(Eqn(eqn.primitive, ins, tuple(outs), eqn.params))
      for v, o in zip(eqn.outvars, outs):
        if not isinstance(v, jcore.DropVar):
          env[v] = o
    return [read(v) for v in jaxpr.outvars]

  invars = [new(v.aval) for v in closed.jaxpr.invars]
  outvars = inline(closed.jaxpr, closed.consts, invars)
  return Program(eqns, invars, outvars, avals, consts)


def evaluate(prog: Program, inputs, hook: Callable | None = None):
  """Runs ``prog`` on ``inputs``; returns (outputs, env).

  ``hook(k, in_values, out_values) -> out_values`` is called after equation k.
  """
  env = dict(prog.consts)
  env.update(zip(prog.invars, inputs))
  read = lambda a: a.val if isinstance(a, Lit) else env[a]
  for k, e in enumerate(prog.eqns):
    vals = [read(a) for a in e.invars]
    out = e.prim.bind(*vals, **e.prim.get_bind_params(e.params))
    outs = list(out) if e.prim.multiple_results else [out]
    if hook is not None:
      outs = hook(k, vals, outs)
    env.update(zip(e.outvars, outs))
  return [read(a) for a in prog.outvars], env


class Use(NamedTuple):
  """A leaf reaching a site: ``W' = factor * view(W)`` consumed by ``site``."""
  site: Any                # _ntk_rules.Site or 'elementwise'
  index: np.ndarray | None  # view(iota over W), shaped like W'
  factors: tuple           # ('const', c) or ('var', id, power)
  prim: str
  eqn: int
  slot: int


def _dependents(prog: Program, leaf_ids) -> set:
  """Ids whose value depends on any of ``leaf_ids``."""
  dep = set(leaf_ids)
  for e in prog.eqns:
    if any(isinstance(a, int) and a in dep for a in e.invars):
      dep.update(e.outvars)
  return dep


def leaf_uses(prog: Program, leaf_ids):
  """Per leaf id a list of ``Use`` or a string (why it has no rule); consumers; producers.

  ``consumers``: var id -> [(equation, slot)]; ``producer``: var id -> equation.
  """
  consumers, producer = {}, {}
  for k, e in enumerate(prog.eqns):
    for slot, a in enumerate(e.invars):
      if isinstance(a, int):
        consumers.setdefault(a, []).append((k, slot))
    for o in e.outvars:
      producer[o] = k
  dep = _dependents(prog, leaf_ids)
  outputs = {a for a in prog.outvars if isinstance(a, int)}

  def scalar_source(atom):
    """The leaf-free scalar ``atom`` is a broadcast of: ('lit', v), ('var', id) or None."""
    while True:
      if isinstance(atom, Lit):
        return ("lit", atom.val) if np.size(atom.val) == 1 else None
      if atom in dep:
        return None
      if int(np.prod(prog.avals[atom].shape)) == 1:
        return ("var", atom)
      k = producer.get(atom)
      if k is None or prog.eqns[k].prim.name not in ("broadcast_in_dim",
                                                      "convert_element_type"):
        return None
      atom = prog.eqns[k].invars[0]

  result = []
  for leaf in leaf_ids:
    shape = tuple(prog.avals[leaf].shape)
    uses, why = [], None
    stack = [(leaf, np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape), ())]
    while stack and why is None:
      var, index, factors = stack.pop()
      if var in outputs:
        why = "is an output"
      for k, slot in consumers.get(var, []):
        e = prog.eqns[k]
        step = _ntk_rules.view_step(e, slot, prog.avals, scalar_source)
        if step is not None:
          f = factors if step.factor is None else factors + (step.factor,)
          stack.append((e.outvars[0], step.index(index), f))
          continue
        site = _ntk_rules.site_rule(e, k, slot, prog.avals)
        if site is None:
          why = f"consumed by {e.prim.name}"
          break
        uses.append(Use(site, index, factors, e.prim.name, k, slot))
    result.append(why if why is not None else uses)
  return result, consumers, producer
