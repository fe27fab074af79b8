import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diffops_core.internal import BlockPlan, parse_bytes, plan_blocks, resolve_block_size


@given(total=st.integers(1, 5000), data=st.data())
def test_plan_covers_every_column_once(total, data):
    size = data.draw(st.integers(1, total))
    plan = BlockPlan(total, size)
    owned = []
    for block in plan:
        # the fixed-width window holds the block and stays inside the matrix
        assert 0 <= block.window <= block.start < block.stop <= total
        assert block.window + size <= total
        assert block.stop <= block.window + size
        keep = block.keep
        assert keep.stop - keep.start == block.size
        owned.extend(range(block.start, block.stop))
    assert owned == list(range(total))
    assert plan.n_blocks == math.ceil(total / size) == len(plan)
    # recomputed columns (the clamped last window's overlap) stay below one block
    overlap = sum(b.start - b.window for b in plan)
    assert 0 <= overlap < size


@given(n=st.integers(1, 3000), data=st.data())
def test_nbatches_matches_zodiax_block_size(n, data):
    nbatches = data.draw(st.integers(1, n))
    plan = plan_blocks(n, nbatches=nbatches)
    assert plan.block_size == math.ceil(n / nbatches)
    assert plan.n_blocks <= nbatches


@pytest.mark.parametrize("bad", [0, -3])
def test_nonpositive_nbatches(bad):
    with pytest.raises(ValueError, match="nbatches must be a positive int"):
        resolve_block_size(10, nbatches=bad)


@pytest.mark.parametrize("bad", [True, 2.0, "4", None.__class__])
def test_non_int_block_size(bad):
    with pytest.raises(TypeError, match="block_size must be a positive int"):
        resolve_block_size(10, block_size=bad)


def test_nbatches_larger_than_n():
    with pytest.raises(ValueError, match=r"nbatches=11 is too large for n=10.*nbatches=1"):
        resolve_block_size(10, nbatches=11)


def test_both_given():
    with pytest.raises(ValueError, match="at most one of nbatches=2 and block_size=3"):
        resolve_block_size(10, nbatches=2, block_size=3)


def test_block_size_is_capped_at_n():
    assert resolve_block_size(10, block_size=50) == 10
    assert resolve_block_size(10, nbatches=1) is None


@pytest.mark.parametrize(
    "text,expected",
    [
        ("512MB", 512 * 10**6),
        ("2GiB", 2 * 2**30),
        ("1.5 kB", 1500),
        (4096, 4096),
        ("100", 100),
        ("3e6B", 3 * 10**6),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["lots", "12 parsecs", "", "-5MB"])
def test_parse_bytes_rejects(bad):
    with pytest.raises(ValueError, match="memory_budget"):
        parse_bytes(bad)


@pytest.mark.parametrize("bad", [True, [1], None])
def test_parse_bytes_type(bad):
    with pytest.raises(TypeError, match="memory_budget"):
        parse_bytes(bad)
