import pytest
from benchkit import stats


def test_percentile_nearest_rank():
    values = list(range(1, 1001))  # 1..1000
    assert stats.percentile(values, 50) == 500
    assert stats.percentile(values, 99) == 990
    assert stats.percentile(values, 99.9) == 999
    assert stats.percentile(values, 100) == 1000
    assert stats.percentile(values, 0) == 1


def test_percentile_is_an_observed_value_and_order_free():
    values = [5.0, 1.0, 3.0]
    assert stats.percentile(values, 99) == 5.0
    assert stats.percentile(values, 50) == 3.0


def test_percentile_refuses_bad_input():
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1], 101)


def test_median_skips_missing_values():
    assert stats.median([3, None, 1, 2]) == 2
    assert stats.median([4, 1, 3, 2]) == 2.5
    assert stats.median([None]) is None


def test_ratio():
    assert stats.ratio(10, 4) == 2.5
    assert stats.ratio(1, 0) is None
    assert stats.ratio(None, 1) is None
