"""The self-check of a matrix recovered from compressed products, with known
power.

A recovered ``M`` is compared with products ``P(v) = M_true v`` of six probe
vectors computed by the kernels themselves: four independent Gaussians
``v₁ … v₄`` (drawn afresh on every call; quantised to multiples of 1/256 so
that sums are exact), ``v₅ = v₁ + v₂`` and ``v₆ = v₃ − v₄``. Row ``i`` of
product ``k`` passes when

    |P(v_k)_i − (M v_k)_i| <= 16 eps log2(nnz_i + 2) (Σ_j |M_ij| |v_kj| + |P(v_k)_i|)
                              + 64 noise_i

- ``eps`` is that of the lowest precision ``f`` computes in (a float32 cast or
  a ``reduce_precision`` inside an x64 run counts), not x's;
- ``noise_i`` is the products' own rounding, measured: the linearity defects
  ``|P(v₁) + P(v₂) − P(v₅)|`` and ``|P(v₃) − P(v₄) − P(v₆)|`` of row ``i``
  (never larger for a missing entry: the true map is linear), and at least
  their root mean square over the row's peers, the rows of its leaf of a
  scale within a factor of 4 (rounding spread by an FFT is shared by such
  rows, and one sample of it can be small by chance).

Each row has its own tolerance, so rows much smaller than the largest are
checked at their own scale. A missing entry ``h`` at ``(i, j)`` moves row ``i``
of each product by ``h v_j`` (or ``h (v_j − v_l)`` when ``j`` shares a colour
with ``i``'s neighbour ``l``), so it is refused once ``t |h|`` is above the
row's tolerance in any product, where ``|v_j| > t``. A Gaussian has
``|v_j| < t`` with probability about ``0.8 t``, so a miss needs that in four
independent probes at once: about ``(0.8 t)⁴`` (for ``t = 0.1``, 4e-5; the
smallest entry refused in every call is measured in benchmarks/RESULTS.md,
the check's power). A NaN or an infinity in
the products or in ``M`` is refused by name: it would turn a comparison off.

The six products must be of the six vectors of one seed: products of other
vectors would lift their own linearity defect, hence the tolerance. Both
executors compute them in one call or, in the pipeline, in blocks whose
workers check the seed against the store's before they compute.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from .._errors import InputValueError

__all__ = ["PROBES", "check_products", "compute_eps", "probe_vectors"]

#: Probe vectors a check uses (they ride in the colours' products where they can).
PROBES = 6
_ROUNDING = 16.0
#: The noise factor. 16 refused a correct Hessian at 10⁶ rows (the PSF model at
#: 1024², float32) for 5 of 30 probe seeds: its compressed products carry more
#: rounding along the image's centre column than the probes' linearity defects
#: show, and the largest of 6·10⁶ ratios crossed it. At 32 the largest of the 30
#: was 0.80 of the tolerance on one CPU, but another (2026-12-08) refused seed 3
#: (row 508 at 1.27 of it; the row exact against its own Hessian-vector
#: product); at 64 none of the 30 is, the largest 0.69. The power measured in
#: benchmarks/RESULTS.md stays above its targets.
_NOISE = 64.0


def probe_vectors(extent: int, seed: int) -> np.ndarray:
    """``(PROBES, extent)`` float64: ``v₁ … v₄`` (independent Gaussians, multiples
    of 1/256, drawn from ``seed``), ``v₁ + v₂`` and ``v₃ − v₄`` (all exact in
    float16 and up)."""
    rng = np.random.default_rng(seed)
    v = np.clip(np.round(rng.standard_normal((4, extent)) * 256) / 256, -7.0, 7.0)
    return np.stack([v[0], v[1], v[2], v[3], v[0] + v[1], v[2] - v[3]])


def _sub_jaxprs(value):
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def compute_eps(jaxpr, dtype) -> float:
    """The machine epsilon of the lowest floating precision ``jaxpr`` computes
    in (nested jaxprs and ``reduce_precision`` included), and at least ``dtype``'s."""
    eps = _eps(dtype)
    todo, seen = [jaxpr], set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for eqn in current.eqns:
            if eqn.primitive.name == "reduce_precision":
                eps = max(eps, 2.0 ** -int(eqn.params["mantissa_bits"]))
            for var in eqn.outvars:
                dt = getattr(getattr(var, "aval", None), "dtype", None)
                if dt is not None:
                    eps = max(eps, _eps(dt))
            for value in eqn.params.values():
                todo.extend(_sub_jaxprs(value))
    return eps


def _eps(dtype) -> float:
    """The machine epsilon of a floating dtype (bfloat16 too: numpy does not take
    it for a float, and a bfloat16 check held float32's tolerance), else 0."""
    return float(jnp.finfo(dtype).eps) if jnp.issubdtype(dtype, jnp.floating) else 0.0


def _not_finite(name: str, rows: np.ndarray, what: str) -> InputValueError:
    where = ", ".join(str(int(r)) for r in rows[:4]) + (" ..." if rows.size > 4 else "")
    return InputValueError(
        f"the compressed {what}'s {name} hold NaN or infinite values (rows {where}): the "
        "check cannot vouch for it. Find where the derivatives are not finite at this x, "
        "or compute it dense (sparsity=None)"
    )


def _peer_rms(defect: np.ndarray, scale: np.ndarray, row_groups: list[slice]) -> np.ndarray:
    """Per row, the root mean square of the linearity defects of its peers: the
    rows of its leaf whose scale is within a factor of 4 of its own. Rounding
    spread by an FFT is shared by such rows, and one sample of it can be small
    by chance; a few much larger rows (the globals beside a flat field) are not
    peers, so they do not lift the floor of the rest."""
    group = np.zeros(defect.size, np.int64)
    for index, rows in enumerate(row_groups):
        group[rows] = index
    level = np.floor(np.log2(np.maximum(scale, np.finfo(np.float64).tiny)) / 2).astype(np.int64)
    level -= level.min(initial=0)
    key = group * (int(level.max(initial=0)) + 1) + level
    _, inverse = np.unique(key, return_inverse=True)
    counts = np.bincount(inverse)
    return np.sqrt(np.bincount(inverse, weights=defect**2) / counts)[inverse]


def check_products(
    matrix: sp.csr_array,
    probes: np.ndarray,
    products: np.ndarray,
    eps: float,
    row_groups: list[slice],
    what: str,
) -> dict:
    """Check ``matrix`` (``(m, n)``) against ``products`` (``(PROBES, m)``, the
    kernels' ``M_true v`` of ``probes``), row by row (see the module's docstring).

    **Returns:** ``error`` and ``tolerance`` of the row closest to failing,
    ``ratio`` (error / tolerance there), ``row`` and ``eps``.

    **Raises:** `ValueError` naming the worst row on a mismatch, or naming the
    non-finite rows."""
    products = np.asarray(products, np.float64)
    if not np.isfinite(products).all():
        raise _not_finite("products of random vectors",
                          np.flatnonzero(~np.isfinite(products).all(axis=0)), what)  # fmt: skip
    values = np.asarray(matrix.data, np.float64)
    if not np.isfinite(values).all():
        rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
        raise _not_finite("recovered entries", np.unique(rows[~np.isfinite(values)]), what)
    M = sp.csr_array(matrix, dtype=np.float64)
    expected = (M @ probes.T).T
    scale = (abs(M) @ np.abs(probes).T).T
    count = np.diff(M.indptr)
    rounding = _ROUNDING * eps * np.log2(count + 2) * (scale + np.abs(products))
    defect = np.maximum(
        np.abs(products[0] + products[1] - products[4]),
        np.abs(products[2] - products[3] - products[5]),
    )
    noise = np.maximum(defect, _peer_rms(defect, scale.max(axis=0), row_groups))
    tolerance = rounding + _NOISE * noise
    error = np.abs(products - expected)
    ratio = error / np.maximum(tolerance, np.finfo(np.float64).tiny)
    k, row = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    found = {
        "error": float(error[k, row]),
        "tolerance": float(tolerance[k, row]),
        "ratio": float(ratio[k, row]),
        "row": int(row),
        "eps": eps,
    }
    if found["ratio"] > 1:
        failing = int(np.sum((ratio > 1).any(axis=0)))
        raise InputValueError(
            f"the compressed {what} does not match products of random vectors: {failing} "
            f"rows differ beyond their rounding, row {found['row']} by {found['error']:.3g} "
            f"(its tolerance {found['tolerance']:.3g}); its sparsity misses entries. Compute "
            "it dense (sparsity=None), and report the model"
        )
    return found
