"""What a function computes, as JAX traces it.

`trace` turns ``f`` (at the avals of a flat ``x``) into a closed jaxpr once per
call. Everything downstream rests on that trace, never on the Python object:

- the compiled kernels are built from the jaxpr and take its top-level
  constants (arrays ``f`` closes over, globals it read, attributes of the object
  it is a method of) as runtime arguments, so new values give fresh results
  without a recompile, and the cache keeps no user function alive;
- `TracedFunction.compile_key` says which compiled kernel may serve this trace:
  the program's structure (its printed jaxpr and the avals of its constants)
  plus a digest of the constants a compiled kernel would bake in (those of
  nested jitted functions, and of custom derivative rules);
- `TracedFunction.identity` is the pipeline's notion of "the same computation":
  the structure digest and a digest of every constant's bytes. Both are stable
  across processes and ``PYTHONHASHSEED`` values (no ``id()``, no ``hash()``).

Custom derivative rules (`jax.custom_jvp`, `jax.custom_vjp`) print only their
names in the primal jaxpr, so each custom-rule equation's traced derivative (the
rule's body: a JVP, or a VJP for `custom_vjp`) joins the structure and the
constants; a few milliseconds per distinct rule and shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal, jaxpr_as_fun

from .._errors import InputTypeError

__all__ = ["Identity", "TracedFunction", "const_spec", "eval_flat", "trace"]

# custom_lin is what linearising a custom_vjp leaves: its rule is the custom_vjp_call's
_CUSTOM_RULES = ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr")
# Printed Python objects (callbacks) carry their address: never part of an identity.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclasses.dataclass(frozen=True)
class Identity:
    """What a traced function computes, as two stable digests.

    **Attributes:**

    - `program`: SHA-256 of the traced program: its jaxpr as printed (primitives,
      shapes, dtypes, literals, nested jaxprs), the avals of its constants and,
      where it has custom derivative rules, its traced derivatives.
    - `data`: SHA-256 of the bytes of every constant the program reads.
    """

    program: str
    data: str


def _sub_jaxprs(value):
    if isinstance(value, (ClosedJaxpr, Jaxpr)):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, (ClosedJaxpr, Jaxpr)):
                yield item


def _host_callable(eqn):
    """The Python callable a host-callback equation calls (`jax.pure_callback`,
    `jax.experimental.io_callback`), or None. Callbacks without results
    (`jax.debug.print`, `jax.debug.callback`) cannot change what f returns."""
    callback = eqn.params.get("callback")
    if callback is None or not eqn.outvars:
        return None
    return getattr(callback, "callback_func", callback)


def _walk(jaxpr: Jaxpr, nested: list, rules: list, callbacks: list | None = None):
    """Collect the constants of nested closed jaxprs, the custom-rule equations
    and the host callables of callback equations."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _CUSTOM_RULES:
            rules.append(eqn)
        if callbacks is not None:
            found = _host_callable(eqn)
            if found is not None:
                callbacks.append((eqn.primitive.name, found))
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                if isinstance(sub, ClosedJaxpr):
                    nested.extend(sub.consts)
                    _walk(sub.jaxpr, nested, rules, callbacks)
                else:
                    _walk(sub, nested, rules, callbacks)


def _callable_key(fn) -> tuple:
    """Which callable a callback calls, for a cache key: the bound object and the
    function by identity (a bound method is a new object on every access; a
    user's object may be unhashable). The cache entry's jaxpr holds the
    callables, so these ids stay unique while the entry lives."""
    owner = getattr(fn, "__self__", None)
    return (id(owner), id(getattr(fn, "__func__", fn)))


def _aval_text(value) -> str:
    aval = jax.typeof(value)
    return aval.str_short() + ("~weak" if getattr(aval, "weak_type", False) else "")


def _is_tracer(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def _feed_bytes(h, value):
    array = np.asarray(value)
    h.update(f"{array.dtype.str}{array.shape};".encode())
    h.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)


def _digest(values) -> str | None:
    """SHA-256 of the values' dtypes, shapes and bytes; None if one is a tracer."""
    h = hashlib.sha256()
    for value in values:
        if _is_tracer(value):
            return None
        _feed_bytes(h, value)
    return h.hexdigest()


def eval_flat(jaxpr: Jaxpr, consts, z):
    """Evaluate a traced flat function: its output leaves at ``z`` with ``consts``."""
    return jaxpr_as_fun(ClosedJaxpr(jaxpr, list(consts)))(z)


def const_spec(value) -> jax.ShapeDtypeStruct:
    """The abstract value of a constant (or of an aval), weak type included."""
    aval: Any = value if isinstance(value, jax.core.AbstractValue) else jax.typeof(value)
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=getattr(aval, "weak_type", False))


def _single(eqn) -> Jaxpr:
    """A custom-rule equation alone, as a jaxpr of its non-literal inputs."""
    ins = [v for v in eqn.invars if not isinstance(v, Literal)]
    return Jaxpr([], ins, list(eqn.outvars), [eqn], eqn.effects)


def _rule_trace(eqn, single: Jaxpr):
    """The traced derivative of one custom-rule equation: its JVP (the rule's body,
    which also fixes every higher derivative and, transposed, the VJP), or for a
    `jax.custom_vjp` its VJP (forward and backward bodies)."""
    fn = jaxpr_as_fun(ClosedJaxpr(single, []))
    avals = [const_spec(v.aval) for v in single.invars]
    if eqn.primitive.name == "custom_jvp_call":
        return jax.make_jaxpr(lambda p, t: jax.jvp(lambda *a: fn(*a), p, t))(avals, avals)
    outs = [const_spec(v.aval) for v in eqn.outvars]
    return jax.make_jaxpr(lambda p, ct: jax.vjp(lambda *a: fn(*a), *p)[1](ct))(avals, outs)


def _rule_traces(rules: list, callbacks: list):
    """Texts and constants of the derivatives of every custom-rule equation, nested
    rules (custom calls inside a rule's body) included; each distinct one once."""
    texts, values, seen = [], [], set()
    while rules:
        eqn = rules.pop()
        single = _single(eqn)
        text = _ADDRESS.sub("", str(single))
        if text in seen:
            continue
        seen.add(text)
        try:
            closed = _rule_trace(eqn, single)
        except Exception as err:  # noqa: BLE001 - no identity can be established
            return None, f"{eqn.primitive.name} ({type(err).__name__}: {err})".splitlines()[0]
        nested: list = []
        _walk(closed.jaxpr, nested, rules, callbacks)
        texts.append(_ADDRESS.sub("", str(closed.jaxpr)))
        values.extend(closed.consts)
        values.extend(nested)
    return texts, values


@dataclasses.dataclass(frozen=True, eq=False)
class TracedFunction:
    """``f`` on the flat input, traced once: ``(consts, z) -> output leaves``.

    **Attributes:**

    - `jaxpr`: the open jaxpr; its constvars are `consts`, its one input ``z``.
    - `consts`: this trace's top-level constants (fresh values on every trace).
    - `out_tree`: the pytree of ``f``'s output, as `jax.ShapeDtypeStruct` leaves.
    - `structure`: SHA-256 of the program (see `Identity.program`).
    - `baked`: the constants a compiled kernel keeps (nested and custom-rule ones).
    - `untraceable`: why a custom rule's derivative could not be traced, if so.
    - `callbacks`: ``(primitive, callable)`` of every host callback with results
      (`jax.pure_callback`, `io_callback`): host code the jaxpr cannot see into.
    """

    jaxpr: Jaxpr
    consts: tuple
    out_tree: object
    structure: str
    baked: tuple
    untraceable: str | None = None
    callbacks: tuple = ()

    @property
    def compile_key(self) -> tuple | None:
        """What one compiled kernel may serve; None when that cannot be known (a
        baked constant is a tracer of an enclosing transformation, or a custom
        rule's derivative cannot be traced on its own): then nothing is cached."""
        digest = _digest(self.baked)
        if digest is None or self.untraceable:
            return None
        # a callback's identity is the callable itself: the jaxpr prints only its
        # name, and a compiled kernel calls the callable it was traced with
        return (self.structure, digest, tuple(_callable_key(fn) for _, fn in self.callbacks))

    def identity(self) -> Identity:
        """Digests of the program and of every constant's bytes (no tracers).

        **Raises:** `TypeError` when a constant is a tracer (inside a transformation),
        a custom rule's derivative cannot be traced, or f calls host code through
        a callback (what that code reads is invisible to any trace, so no stored
        result can know whether it is still the same computation).
        """
        if self.callbacks:
            names = sorted({f"{prim} of {_callable_name(fn)}" for prim, fn in self.callbacks})
            raise InputTypeError(
                f"f calls host code through {', '.join(names)}; what that code reads cannot be "
                "seen in the trace, so a stored result of f could not be told apart from one "
                "computed with other data, and is refused. Use the in-memory API "
                "(diffops_core.hessian, jacobian, gauss_newton), or pass the data to f as arrays"
            )
        if self.untraceable:
            raise InputTypeError(
                f"f uses a custom derivative rule whose derivative cannot be traced on its own "
                f"({self.untraceable}), so what f computes cannot be identified for a stored "
                "result; use the in-memory API, or a rule that JAX can differentiate"
            )
        data = _digest((*self.consts, *self.baked))
        if data is None:
            raise InputTypeError(
                "f reads values traced by an enclosing jax transformation; a stored result "
                "needs concrete data: call it outside jit/grad/vmap"
            )
        return Identity(self.structure, data)


def trace(f, unravel, x_aval) -> TracedFunction:
    """Trace ``f(unravel(z))`` at ``x_aval`` (a flat `jax.ShapeDtypeStruct`).

    **Returns:** a `TracedFunction`.

    **Raises:** whatever ``f`` raises while being traced.
    """
    treedef = []

    def flat(z):  # the output's leaves; its structure through a side channel
        leaves, tree = jax.tree_util.tree_flatten(f(unravel(z)))
        treedef.append(tree)
        return leaves

    closed = jax.make_jaxpr(flat)(x_aval)  # return_shape=True costs a fifth more
    jaxpr, consts = closed.jaxpr, tuple(closed.consts)
    out_tree = jax.tree_util.tree_unflatten(
        treedef[-1], [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed.out_avals]
    )
    nested: list = []
    rules: list = []
    callbacks: list = []
    _walk(jaxpr, nested, rules, callbacks)
    h = hashlib.sha256()
    h.update(_ADDRESS.sub("", str(jaxpr)).encode())
    h.update(repr([_aval_text(c) for c in consts]).encode())
    h.update(str(jax.tree_util.tree_structure(out_tree)).encode())
    baked = list(nested)
    untraceable = None
    if rules:
        texts, values = _rule_traces(rules, callbacks)
        if texts is None:
            untraceable = values
        else:
            for text in texts:
                h.update(text.encode())
            baked.extend(values)
    return TracedFunction(
        jaxpr, consts, out_tree, h.hexdigest(), tuple(baked), untraceable, tuple(callbacks)
    )


def _callable_name(fn) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{getattr(fn, '__module__', '?')}.{name}"
