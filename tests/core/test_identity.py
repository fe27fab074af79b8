"""A computation's identity is what JAX traces: fresh results, no recompiles, no
kept functions (issue 8, items 1-3 and A)."""

import gc
import os
import subprocess
import sys
import weakref

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zodiax

import diffops_core as dc
import diffops_core.internal as dci
from diffops_core.dense import trace
from helpers import CompileCounter, mixed_loss, mixed_x, reference_hessian, reference_jacobian

DATA = jnp.arange(1.0, 4.0)


def global_loss(x):
    return jnp.sum(DATA * x**2)


def global_out(x):
    return DATA * jnp.sin(x)


def test_rebinding_a_global_gives_the_new_hessian_without_recompiling():
    global DATA
    x = jnp.ones(3)
    H1, _ = dc.hessian(global_loss, x)
    np.testing.assert_allclose(np.diag(H1), 2 * np.arange(1.0, 4.0))
    DATA = jnp.array([9.0, 1.0, 1.0])
    try:
        with CompileCounter() as compiles:
            H2, _ = dc.hessian(global_loss, x)
        assert float(H2[0, 0]) == 18.0  # the truth; the stale answer was 2.0
        np.testing.assert_allclose(H2, zodiax.diffops.hessian(global_loss, x)[0])
        assert compiles.count == 0
    finally:
        DATA = jnp.arange(1.0, 4.0)


def test_rebinding_a_global_gives_the_new_jacobian():
    global DATA
    x = jnp.ones(3)
    for mode in ("fwd", "rev"):
        dc.jacobian(global_out, x, mode=mode)
        DATA = jnp.array([5.0, 6.0, 7.0])
        try:
            J, _ = dc.jacobian(global_out, x, mode=mode)
            np.testing.assert_allclose(J, np.diag([5.0, 6.0, 7.0]) * np.cos(1.0), rtol=1e-6)
        finally:
            DATA = jnp.arange(1.0, 4.0)


def test_a_closed_over_numpy_array_changed_in_place_is_read_fresh():
    weights = np.array([1.0, 2.0, 3.0], np.float32)
    f = lambda x: jnp.sum(weights * x**2)
    x = jnp.ones(3)
    dc.hessian(f, x)
    weights *= 10
    H, _ = dc.hessian(f, x)
    np.testing.assert_allclose(np.diag(H), [20.0, 40.0, 60.0])


class Model:
    def __init__(self, w):
        self.w = jnp.asarray(w, jnp.float32)

    def loss(self, x):
        return jnp.sum(self.w * jnp.cos(x))


def test_bound_methods_of_two_objects_are_two_computations():
    x = jnp.zeros(4)
    a, b = Model([1, 2, 3, 4]), Model([10, 20, 30, 40])
    Ha, _ = dc.hessian(a.loss, x)
    with CompileCounter() as compiles:
        Hb, _ = dc.hessian(b.loss, x)
    np.testing.assert_allclose(np.diag(Ha), [-1, -2, -3, -4])
    np.testing.assert_allclose(np.diag(Hb), [-10, -20, -30, -40])
    assert compiles.count == 0  # same program, other data: one compile serves both
    ka = dci.get_kernels(a.loss, x, "hessian")[0].traced.identity()
    kb = dci.get_kernels(b.loss, x, "hessian")[0].traced.identity()
    assert ka.program == kb.program and ka.data != kb.data


def test_equinox_modules_as_f_and_closed_over():
    class Quad(eqx.Module):
        scale: jax.Array

        def __call__(self, x):
            return jnp.sum(self.scale * x**2)

    x = jnp.ones(2)
    for scale in ([1.0, 2.0], [3.0, 5.0]):
        model = Quad(jnp.array(scale))
        H, _ = dc.hessian(model, x)
        np.testing.assert_allclose(np.diag(H), 2 * np.array(scale))
        H, _ = dc.hessian(lambda v: model(v) * 2.0, x)  # noqa: B023 - the point of the test
        np.testing.assert_allclose(np.diag(H), 4 * np.array(scale))


def test_structurally_identical_functions_share_one_compile():
    def make(c):
        return lambda x: jnp.sum(jnp.tanh(c * x) ** 2)

    x = jnp.linspace(-1.0, 1.0, 6)
    c1, c2 = jnp.full(6, 0.5), jnp.full(6, 2.0)
    dc.hessian(make(c1), x, nbatches=3)
    with CompileCounter() as compiles:
        H2, _ = dc.hessian(make(c2), x, nbatches=3)
    assert compiles.count == 0
    np.testing.assert_allclose(H2, reference_hessian(make(c2), x), rtol=1e-5, atol=1e-6)


def test_the_cache_keeps_no_user_function_alive():
    class Loss:
        def __init__(self):
            self.w = jnp.arange(3.0)

        def __call__(self, x):
            return jnp.sum(self.w * x**3)

    def use(model):
        dc.hessian(model, jnp.ones(3))
        dc.jacobian(lambda x: model(x) * x, jnp.ones(3))

    f = Loss()
    ref = weakref.ref(f)
    use(f)
    del f
    gc.collect()
    assert ref() is None


def test_a_jitted_f_with_another_body_is_another_program():
    @jax.jit
    def f(x):
        return jnp.sum(x**3)

    g = jax.jit(lambda x: jnp.sum(x**4))
    g.__name__ = g.__qualname__ = "f"
    x = jnp.full(3, 2.0)
    Hf, _ = dc.hessian(f, x)
    Hg, _ = dc.hessian(g, x)
    np.testing.assert_allclose(np.diag(Hf), [12.0] * 3)
    np.testing.assert_allclose(np.diag(Hg), [48.0] * 3)
    idf = dci.get_kernels(f, x, "hessian")[0].traced.identity()
    idg = dci.get_kernels(g, x, "hessian")[0].traced.identity()
    assert idf.program != idg.program


def test_a_nested_jitted_function_closing_over_new_data_is_fresh():
    x = jnp.ones(3)
    for scale in (1.0, 7.0):
        inner = jax.jit(lambda v, s=jnp.full(3, scale): jnp.sum(s * v**2))
        H, _ = dc.hessian(lambda v: inner(v) + 0.0, x)  # noqa: B023
        np.testing.assert_allclose(np.diag(H), [2 * scale] * 3)


def _custom(rule_scale):
    @jax.custom_jvp
    def sq(x):
        return x**2

    @sq.defjvp
    def jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return x**2, rule_scale * x * t

    return lambda x: jnp.sum(sq(x))


def test_custom_rules_with_the_same_name_are_told_apart():
    x = jnp.ones(3)
    H2, _ = dc.hessian(_custom(2.0), x)
    H5, _ = dc.hessian(_custom(5.0), x)
    np.testing.assert_allclose(np.diag(H2), [2.0] * 3)
    np.testing.assert_allclose(np.diag(H5), [5.0] * 3)
    J5, _ = dc.jacobian(lambda v: _custom(5.0)(v) * v, x, mode="rev")
    np.testing.assert_allclose(J5, reference_jacobian(lambda v: _custom(5.0)(v) * v, x), rtol=1e-6)


def test_identity_changes_with_data_and_program_only():
    flat = jax.ShapeDtypeStruct((3,), jnp.float32)
    a, b = np.arange(3.0, dtype=np.float32), np.arange(1.0, 4.0, dtype=np.float32)

    def ident(w, power):
        return trace(lambda v: jnp.sum(w * v**power), lambda z: z, flat).identity()

    assert ident(a, 2) == ident(a.copy(), 2)
    assert ident(b, 2).program == ident(a, 2).program and ident(b, 2).data != ident(a, 2).data
    assert ident(a, 3).program != ident(a, 2).program


_IDENTITY_SCRIPT = """
import jax, helpers
from diffops_core.internal import get_kernels
with jax.enable_x64(True):
    k = get_kernels(helpers.mixed_loss, helpers.mixed_x(jax.numpy.float64), "hessian")[0]
    i = k.traced.identity()
print(i.program, i.data)
"""


def test_identity_is_stable_across_processes_and_hash_seeds():
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outputs = set()
    for seed in ("1", "4242"):
        env = {
            **os.environ,
            "PYTHONHASHSEED": seed,
            "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
        }
        out = subprocess.run(
            [sys.executable, "-c", _IDENTITY_SCRIPT],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        outputs.add(out)
    with jax.enable_x64(True):
        here = dci.get_kernels(mixed_loss, mixed_x(jnp.float64), "hessian")[0].traced.identity()
    assert outputs == {f"{here.program} {here.data}"}


def test_tracers_have_no_identity_but_hessian_still_works_under_jit():
    @jax.jit
    def outer(d):
        kernels = dci.get_kernels(lambda v: jnp.sum(d * v**2), jnp.ones(3), "hessian")[0]
        with pytest.raises(TypeError, match="enclosing jax transformation"):
            kernels.traced.identity()
        return dc.hessian(lambda v: jnp.sum(d * v**2), jnp.ones(3))[0]

    np.testing.assert_allclose(np.diag(outer(jnp.array([1.0, 2.0, 3.0]))), [2.0, 4.0, 6.0])


def _custom_vjp(scale):
    @jax.custom_vjp
    def g(x):
        return jnp.sin(x)

    def fwd(x):
        return jnp.sin(x), x

    def bwd(x, ct):
        return (scale * ct,)

    g.defvjp(fwd, bwd)
    return lambda x: g(x) * 1.0


def test_custom_vjp_rules_with_the_same_name_are_told_apart():
    x = jnp.linspace(0.1, 0.5, 3)
    J2, _ = dc.jacobian(_custom_vjp(2.0), x, mode="rev")
    J7, _ = dc.jacobian(_custom_vjp(7.0), x, mode="rev")
    np.testing.assert_allclose(J2, 2.0 * np.eye(3))
    np.testing.assert_allclose(J7, 7.0 * np.eye(3))
