"""Detection on a public corpus no one here wrote (issue 24, part B): the
CUTEst problems as sif2jax writes them. Every objective Hessian's detected
pattern holds every nonzero of `jax.hessian` at random points (sound), and
the sparse Hessian from it equals `jax.hessian`. Eight structured problems
with the slow tests (importing sif2jax alone takes about two minutes);
every problem of n <= 5000 with ``pytest -m corpus`` (tens of minutes)."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffops_core as dc
from diffops_core.internal import hessian_pattern, jacobian_pattern

#: Structured problems of n <= 100 (chains, the stack-based LUKSAN problems
#: whose Hessians were dense before unstack had a rule, a diagonal) and the
#: nonzeros asdex's detector finds on each (its tests/test_cutest.py
#: baselines): ours may hold no more.
PROBLEMS = {
    "CHNROSNB": 148,
    "ERRINROS": 148,
    "LUKSAN12LS": 484,
    "LUKSAN13LS": 484,
    "LUKSAN14LS": 420,
    "QING": 100,
    "VANDANMSLS": 484,
    "ROSENBR": 4,
}


#: Constraint Jacobians where ours held more than asdex's published count
#: (75, 50 and 714) before a known factor's zeros were used.
CONSTRAINTS = {"HS117": 62, "HS86": 37, "ELATTAR": 708}


def _baselines():
    """asdex's published CUTEst tables (benchmarks/data: nonzeros asdex detects,
    CUTEst's own count)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "data",
                        "asdex_cutest_baselines.py")  # fmt: skip
    spec = importlib.util.spec_from_file_location("asdex_cutest_baselines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _constrained() -> dict:
    x64 = bool(jax.config.read("jax_enable_x64"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sif2jax

            return {p.name: p for p in sif2jax.constrained_minimisation_problems}
    finally:
        jax.config.update("jax_enable_x64", x64)


def _constraint(problem, side):
    return lambda y: problem.constraint(y)[side]


@pytest.mark.slow  # importing sif2jax takes about two minutes
@pytest.mark.parametrize("name,most", CONSTRAINTS.items(), ids=list(CONSTRAINTS))
def test_cutest_constraint_jacobians_use_their_constants_zeros(name, most):
    problem = _constrained()[name]
    f = _constraint(problem, 1)
    with jax.enable_x64(True):
        points = _points(problem, 3)
        pattern = jacobian_pattern(f, points[0])
        _sound(pattern, [jax.jacfwd(f)(y) for y in points])
    assert pattern.nnz <= most


@pytest.mark.corpus
def test_every_problem_of_asdexs_tables_is_sound_and_no_looser_than_asdex():
    """Issue 24 part B: every problem of asdex's published CUTEst tables (objective
    Hessians, equality and inequality constraint Jacobians): sound at three
    random points, and no more nonzeros than asdex detects."""
    tables = _baselines()
    looser = []
    with jax.enable_x64(True):
        for kind, table in (("hessian", tables.HESSIAN), ("eq", tables.JACOBIAN_EQ),
                            ("ineq", tables.JACOBIAN_INEQ)):  # fmt: skip
            problems = _corpus() if kind == "hessian" else _constrained()
            for name, (asdex, _) in table.items():
                problem = problems[name]
                f = _objective(problem) if kind == "hessian" else _constraint(
                    problem, 0 if kind == "eq" else 1)  # fmt: skip
                points = _points(problem, 3)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    find = hessian_pattern if kind == "hessian" else jacobian_pattern
                    pattern = find(f, points[0])
                    dense = jax.jit(jax.hessian(f) if kind == "hessian" else jax.jacfwd(f))
                    _sound(pattern, [np.asarray(dense(y)).reshape(pattern.shape) for y in points])
                if pattern.nnz > asdex:
                    looser.append((kind, name, pattern.nnz, asdex))
    assert looser == []


@functools.cache
def _corpus() -> dict:
    """The unconstrained problems by name (sif2jax, a test extra: imported when
    a test needs it, its import warnings not ours, and the x64 setting its
    LISWET modules change at import put back)."""
    x64 = bool(jax.config.read("jax_enable_x64"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sif2jax

            return {p.name: p for p in sif2jax.unconstrained_minimisation_problems}
    finally:  # some of its modules turn x64 on for the whole process when imported
        jax.config.update("jax_enable_x64", x64)


def _points(problem, count=2):
    y0 = jnp.asarray(np.asarray(problem.y0), jnp.float64)
    rng = np.random.default_rng(len(problem.name))
    scale = 0.1 * (1.0 + np.abs(np.asarray(y0)))
    return [y0 + jnp.asarray(rng.normal(size=y0.shape) * scale) for _ in range(count)]


def _objective(problem):
    return lambda y: problem.objective(y, problem.args)


def _sound(pattern, matrices):
    pattern = pattern.toarray()
    for matrix in matrices:
        true = np.asarray(matrix) != 0
        missing = true & ~pattern
        assert not missing.any(), np.argwhere(missing)[:5]


@pytest.mark.slow  # importing sif2jax takes about two minutes
@pytest.mark.parametrize("name,most", PROBLEMS.items(), ids=list(PROBLEMS))
def test_cutest_hessian_patterns_are_sound_and_tight(name, most):
    """Sound at random points, and no more nonzeros than asdex's detector or
    the structure (their sif2jax float64 objectives)."""
    problem = _corpus()[name]
    f = _objective(problem)
    with jax.enable_x64(True):
        points = _points(problem)
        pattern = hessian_pattern(f, points[0])
        _sound(pattern, [jax.hessian(f)(y) for y in points])
    assert pattern.nnz <= most


@pytest.mark.corpus
def test_every_cutest_problem_up_to_5000_is_sound_and_its_sparse_hessian_exact():
    """Every unconstrained problem of n <= 5000: detected, and the sparse
    Hessian computed from the pattern (its self-check passed) equals a
    Hessian-vector product of jax at a random point; n <= 12 also against
    the dense jax.hessian."""
    refused = []
    with jax.enable_x64(True):
        for problem in _corpus().values():
            if np.size(problem.y0) > 5000:
                continue
            f = _objective(problem)
            y = _points(problem, 1)[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = dc.hessian_sparsity(f, y)
                if np.size(y) <= 12:
                    _sound(hessian_pattern(f, y), [jax.hessian(f)(y)])
                if found.dense:
                    continue
                try:
                    H, _ = dc.sparse_hessian(f, y, sparsity=found)
                except ValueError as err:  # the check refused: an unsound pattern
                    refused.append((problem.name, str(err)[:80]))
                    continue
            v = jnp.asarray(np.random.default_rng(0).standard_normal(y.size))
            hvp = np.asarray(jax.jvp(jax.grad(f), (y,), (v,))[1])
            scale = abs(H) @ np.abs(np.asarray(v)) + np.abs(hvp) + 1e-300
            assert np.all(np.abs(H @ np.asarray(v) - hvp) <= 1e-8 * scale), problem.name
    assert refused == []
