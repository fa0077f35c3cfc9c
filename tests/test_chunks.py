"""The one chunker."""

import pytest

from labelmix.chunks import chunks


def test_chunks_keep_order_and_cut_the_last_one_short():
    assert list(chunks([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert list(chunks(iter(range(4)), 2)) == [[0, 1], [2, 3]]  # any iterable, read once
    assert list(chunks([], 3)) == []
    with pytest.raises(ValueError, match="at least 1"):
        list(chunks([1], 0))
