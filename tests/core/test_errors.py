"""Every bad input to the in-memory API gives a clear TypeError/ValueError."""

import jax.numpy as jnp
import pytest

import diffops_core as dc

X = {"a": jnp.ones(4), "b": jnp.asarray(2.0)}
F = lambda p: jnp.sum(p["a"] ** 2) * p["b"]


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        ({"nbatches": 0}, ValueError, r"nbatches must be a positive int, got 0"),
        ({"nbatches": -2}, ValueError, r"nbatches must be a positive int, got -2"),
        ({"nbatches": True}, TypeError, r"nbatches must be a positive int, got True"),
        ({"nbatches": 2.5}, TypeError, r"nbatches must be a positive int, got 2.5 of type float"),
        ({"nbatches": 6}, ValueError, r"nbatches=6 is too large for n=5 parameters"),
        ({"block_size": 0}, ValueError, r"block_size must be a positive int, got 0"),
        ({"block_size": "3"}, TypeError, r"block_size must be a positive int, got '3'"),
        (
            {"nbatches": 2, "block_size": 2},
            ValueError,
            r"at most one of nbatches, block_size and "
            r"memory_budget; got nbatches and block_size",
        ),
        (
            {"block_size": 2, "memory_budget": "1GB"},
            ValueError,
            r"got block_size and memory_budget",
        ),
        ({"memory_budget": "a lot"}, ValueError, r"memory_budget='a lot' is not a size"),
        ({"memory_budget": [1]}, TypeError, r"memory_budget must be bytes"),
        ({"jit": "yes"}, TypeError, r"jit must be True or False"),
        ({"checkpoint": 2}, TypeError, r"checkpoint must be True or False"),
        ({"inner_width": 0}, TypeError, r"inner_width must be a positive int"),
    ],
)
def test_bad_blocking_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        dc.hessian(F, X, **kwargs)


def test_nbatches_one_is_not_counted_as_given():
    H, _ = dc.hessian(F, X, 1, block_size=2)
    assert H.shape == (5, 5)


@pytest.mark.parametrize("nbatches", [1, 3])
def test_non_scalar_hessian_names_the_shape(nbatches):
    with pytest.raises(
        ValueError,
        match=r"hessian needs a scalar-valued f, but f returned "
        r"f\(x\): shape \(4,\)",
    ):
        dc.hessian(lambda p: p["a"] * p["b"], X, nbatches)


def test_pytree_output_hessian_is_refused():
    with pytest.raises(ValueError, match=r"f\(x\)\['u'\]: shape \(\)"):
        dc.hessian(lambda p: {"u": p["b"], "v": p["b"]}, X)


def test_integer_leaf_is_refused():
    with pytest.raises(TypeError, match=r"x\['i'\] has dtype int32"):
        dc.hessian(F, {"a": jnp.ones(4), "b": jnp.asarray(2.0), "i": jnp.arange(3)})


def test_bool_leaf_is_refused():
    with pytest.raises(TypeError, match=r"x\['flag'\] has dtype bool"):
        dc.jacobian(lambda p: p["a"], {"a": jnp.ones(2), "flag": True})


def test_integer_output_is_refused():
    with pytest.raises(TypeError, match=r"f\(x\) has dtype int32.*floating-point output"):
        dc.jacobian(lambda p: jnp.round(p["a"]).astype(jnp.int32), X)


@pytest.mark.parametrize("mode", ["forward", "", None, 1])
def test_unknown_mode(mode):
    with pytest.raises(ValueError, match=r"mode must be one of \('auto', 'fwd', 'rev'\)"):
        dc.jacobian(lambda p: p["a"], X, mode=mode)


def test_empty_x():
    with pytest.raises(ValueError, match="x has no array leaves"):
        dc.hessian(lambda p: 0.0, {})
