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
names in the primal jaxpr, so when a function has any, the traced derivatives
(JVP and VJP, or HVP for a scalar ``f``) join its structure and constants.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, jaxpr_as_fun

__all__ = ["TracedFunction", "Identity", "trace", "eval_flat", "const_spec"]

_CUSTOM_RULES = ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin")
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


def _walk(jaxpr: Jaxpr, nested: list, found: set):
    """Collect the constants of nested closed jaxprs and the custom-rule primitives."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _CUSTOM_RULES:
            found.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                if isinstance(sub, ClosedJaxpr):
                    nested.extend(sub.consts)
                    _walk(sub.jaxpr, nested, found)
                else:
                    _walk(sub, nested, found)


def _aval_text(value) -> str:
    aval = jax.typeof(value) if hasattr(jax, "typeof") else jax.core.get_aval(value)
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
    """The abstract value of a constant, weak type included."""
    aval = jax.typeof(value) if hasattr(jax, "typeof") else jax.core.get_aval(value)
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type)


def _derivative_traces(jaxpr: Jaxpr, consts, x_aval, scalar: bool):
    """Texts and constants of the traced derivatives (custom rules inlined)."""
    def ravel(c, z):
        return jnp.concatenate([jnp.ravel(leaf) for leaf in eval_flat(jaxpr, c, z)])

    derivatives = {
        "jvp": lambda c, z, v: jax.jvp(functools.partial(ravel, c), (z,), (v,))[1],
        "vjp": lambda c, z, u: jax.vjp(functools.partial(ravel, c), z)[1](u)[0],
    }
    if scalar:
        derivatives["hvp"] = lambda c, z, v: jax.jvp(
            jax.grad(lambda w: ravel(c, w).reshape(())), (z,), (v,))[1]
    const_specs = tuple(const_spec(c) for c in consts)
    texts, values = [], []
    for name, fn in derivatives.items():
        try:
            if name == "vjp":
                out = jax.eval_shape(ravel, const_specs, x_aval)
                closed = jax.make_jaxpr(fn)(const_specs, x_aval, out)
            else:
                closed = jax.make_jaxpr(fn)(const_specs, x_aval, x_aval)
        except Exception as err:  # noqa: BLE001 - e.g. a custom_vjp under jvp: record it
            texts.append(f"{name}: {type(err).__name__}")
            continue
        nested: list = []
        _walk(closed.jaxpr, nested, set())
        texts.append(f"{name}: {_ADDRESS.sub('', str(closed.jaxpr))}")
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
    """

    jaxpr: Jaxpr
    consts: tuple
    out_tree: object
    structure: str
    baked: tuple

    @property
    def compile_key(self) -> tuple | None:
        """What one compiled kernel may serve; None when that cannot be known
        (a baked constant is a tracer of an enclosing transformation)."""
        digest = _digest(self.baked)
        return None if digest is None else (self.structure, digest)

    def identity(self) -> Identity:
        """Digests of the program and of every constant's bytes (no tracers).

        **Raises:** `TypeError` when a constant is a tracer (inside a transformation).
        """
        data = _digest((*self.consts, *self.baked))
        if data is None:
            raise TypeError(
                "f reads values traced by an enclosing jax transformation; a stored result "
                "needs concrete data: call it outside jit/grad/vmap"
            )
        return Identity(self.structure, data)


def trace(f, unravel, x_aval) -> TracedFunction:
    """Trace ``f(unravel(z))`` at ``x_aval`` (a flat `jax.ShapeDtypeStruct`).

    **Returns:** a `TracedFunction`.

    **Raises:** whatever ``f`` raises while being traced.
    """
    closed, out_tree = jax.make_jaxpr(lambda z: f(unravel(z)), return_shape=True)(x_aval)
    jaxpr, consts = closed.jaxpr, tuple(closed.consts)
    nested: list = []
    found: set = set()
    _walk(jaxpr, nested, found)
    h = hashlib.sha256()
    h.update(_ADDRESS.sub("", str(jaxpr)).encode())
    h.update(repr([_aval_text(c) for c in consts]).encode())
    h.update(str(jax.tree_util.tree_structure(out_tree)).encode())
    baked = list(nested)
    if found:
        leaves = jax.tree_util.tree_leaves(out_tree)
        scalar = len(leaves) == 1 and leaves[0].shape == ()
        texts, values = _derivative_traces(jaxpr, consts, x_aval, scalar)
        for text in texts:
            h.update(text.encode())
        baked.extend(values)
    return TracedFunction(jaxpr, consts, out_tree, h.hexdigest(), tuple(baked))
