"""The duration buckets: percentiles within a bucket's width, merging, storage text."""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stemtrace.core import buckets

durations = st.floats(min_value=0.0, max_value=buckets.FINITE[-1], allow_nan=False)
samples = st.lists(durations, min_size=1, max_size=300)
quantiles = st.floats(min_value=0.0, max_value=1.0)
vectors = st.lists(st.integers(min_value=0, max_value=10**12), min_size=0, max_size=buckets.COUNT)


def exact(values: list[float], q: float) -> float:
    """The nearest-rank percentile: the smallest sample with at least ``q`` of them at or below."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def test_the_layout_is_pinned() -> None:
    """The bounds are persisted: this test changes only with a migration and a new LAYOUT."""
    assert buckets.LAYOUT == "sqrt2-1ms-51"
    assert buckets.COUNT == 51 and buckets.BOUNDS[-1] == math.inf
    assert buckets.FINITE[0] == 0.001 and buckets.FINITE[2] == 0.002
    assert buckets.FINITE[20] == 1.024 and buckets.FINITE[48] == 16777.216
    assert buckets.FINITE[-1] > 6 * 3600
    pinned = hashlib.sha256(repr(buckets.BOUNDS).encode()).hexdigest()[:16]
    assert pinned == "24056dde326d6c3e", pinned


def test_bounds_grow_by_root_two() -> None:
    for low, high in zip(buckets.FINITE, buckets.FINITE[1:], strict=False):
        assert high / low == pytest.approx(math.sqrt(2), rel=1e-12)


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [
        (0.0, 0),
        (0.001, 0),  # a bound belongs to the bucket it closes, as Prometheus's le
        (0.0010001, 1),
        (-5.0, 0),  # clock skew: about zero
        (1.0, 20),
        (1.024, 20),
        (1.03, 21),
        (buckets.FINITE[-1], 49),
        (buckets.FINITE[-1] * 1.01, 50),
        (1e300, 50),
    ],
)
def test_index(seconds: float, bucket: int) -> None:
    assert buckets.index(seconds) == bucket


@pytest.mark.parametrize("seconds", [None, math.nan, math.inf, -math.inf])
def test_what_is_not_a_duration_has_no_bucket(seconds: float | None) -> None:
    assert buckets.index(seconds) is None
    assert buckets.histogram([seconds, 1.0]) == buckets.histogram([1.0])


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_finite_value_lies_within_its_bucket(seconds: float) -> None:
    bucket = buckets.index(seconds)
    assert bucket is not None
    assert seconds <= buckets.BOUNDS[bucket]
    assert seconds <= 0 or seconds > buckets.lower(bucket)


@given(samples, quantiles)
def test_a_percentile_from_buckets_lies_in_the_exact_percentiles_bucket(
    values: list[float], q: float
) -> None:
    estimate = buckets.percentile(buckets.histogram(values), q)
    truth = exact(values, q)
    bucket = buckets.index(truth)
    assert estimate is not None and bucket is not None
    assert buckets.lower(bucket) <= estimate <= buckets.BOUNDS[bucket]
    assert abs(estimate - truth) <= buckets.BOUNDS[bucket] - buckets.lower(bucket)


@given(samples)
def test_percentiles_do_not_decrease_with_q(values: list[float]) -> None:
    counts = buckets.histogram(values)
    found = [buckets.percentile(counts, q) for q in (0.0, 0.5, 0.95, 0.99, 1.0)]
    assert found == sorted(found)  # type: ignore[type-var]


def test_percentiles_of_known_counts() -> None:
    counts = [0] * buckets.COUNT
    counts[20] = 100  # 100 runs between 0.724 s and 1.024 s
    assert buckets.percentile(counts, 0.5) == pytest.approx((buckets.FINITE[19] + 1.024) / 2)
    assert buckets.percentile(counts, 1.0) == 1.024
    counts[30] = 100  # and 100 between 23.2 s and 32.8 s
    assert buckets.percentile(counts, 0.5) == 1.024
    assert buckets.percentile(counts, 0.75) == pytest.approx(
        (buckets.FINITE[29] + buckets.FINITE[30]) / 2
    )


def test_a_rank_past_the_last_bound_answers_the_last_bound() -> None:
    counts = buckets.histogram([1.0, 10 * 3600.0, 20 * 3600.0])
    assert buckets.percentile(counts, 0.99) == buckets.FINITE[-1]
    assert buckets.percentile(counts, 0.1) == pytest.approx(0.724, abs=0.3)


def test_nothing_counted_has_no_percentile() -> None:
    assert buckets.percentile([], 0.5) is None
    assert buckets.percentile([0] * buckets.COUNT, 0.99) is None


@pytest.mark.parametrize("q", [-0.1, 1.5, math.nan, 95])
def test_a_quantile_outside_zero_to_one_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        buckets.percentile([1], q)


@given(vectors, vectors, vectors)
def test_merge_is_associative_and_commutative(a: list[int], b: list[int], c: list[int]) -> None:
    assert buckets.merge(a, b) == buckets.merge(b, a)
    assert buckets.merge(buckets.merge(a, b), c) == buckets.merge(a, buckets.merge(b, c))
    assert buckets.merge(a, b, c) == buckets.merge(buckets.merge(a, b), c)
    assert len(buckets.merge(a)) == buckets.COUNT and sum(buckets.merge(a, b)) == sum(a) + sum(b)


@given(samples, samples)
def test_merged_counts_are_the_counts_of_all_the_samples(a: list[float], b: list[float]) -> None:
    assert buckets.merge(buckets.histogram(a), buckets.histogram(b)) == buckets.histogram(a + b)


def test_merge_refuses_another_layouts_vector() -> None:
    with pytest.raises(ValueError, match="51 counts"):
        buckets.merge([0] * 52)


@given(vectors)
def test_encode_then_decode_gives_the_counts_back(counts: list[int]) -> None:
    text = buckets.encode(counts)
    assert buckets.decode(text) == buckets.merge(counts)
    assert buckets.encode(buckets.decode(text)) == text


def test_the_encoding_is_sparse_and_readable() -> None:
    counts = buckets.histogram([0.0005, 1.0, 1.0, 30.0])
    assert buckets.encode(counts) == "0:1,20:2,30:1"
    assert buckets.encode([0] * buckets.COUNT) == ""
    assert buckets.decode("") == [0] * buckets.COUNT


@pytest.mark.parametrize(
    "text",
    [
        None,
        b"0:1",
        5,
        "garbage",
        "0:1,",
        ",0:1",
        "0:1,,1:2",
        " 0:1",
        "0:1 ",
        "0: 1",
        "0:-1",
        "-1:1",
        "0:0",  # zeros are never written
        "01:5",
        "0:05",
        "51:1",
        "999:1",
        "3:1,2:1",  # out of order
        "3:1,3:1",  # twice
        "0:1.5",
        "0:1e3",
        "0:+1",
        "\u0663:1",  # an Arabic-Indic digit: int() would take it
        "0:\uff11",  # a fullwidth digit
        "0:9223372036854775808",  # past SQLite's integer
        "0:" + "9" * 5000,
        "0:1," * 2000 + "1:1",
        "[1, 2, 3]",
    ],
)
def test_bad_text_is_refused_with_a_value_error(text: object) -> None:
    with pytest.raises(ValueError):
        buckets.decode(text)


@given(st.text(alphabet="0123456789:,-+ x", max_size=60))
def test_decode_answers_counts_or_a_value_error(text: str) -> None:
    try:
        counts = buckets.decode(text)
    except ValueError:
        return
    assert len(counts) == buckets.COUNT and buckets.encode(counts) == text


@pytest.mark.parametrize("counts", [[-1], [2**63], [0] * 52])
def test_encode_refuses_what_is_not_a_histogram(counts: list[int]) -> None:
    with pytest.raises(ValueError):
        buckets.encode(counts)


@given(samples)
def test_cumulative_buckets_end_with_the_total_and_never_decrease(values: list[float]) -> None:
    counts = buckets.histogram(values)
    for every in (1, 2, 5):
        found = buckets.cumulative(counts, every)
        assert found[-1] == (math.inf, len(values))
        bounds = [le for le, _ in found]
        assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)
        totals = [n for _, n in found]
        assert totals == sorted(totals)
        for le, n in found:
            assert n == sum(1 for v in values if v <= le)


def test_every_other_bound_gives_factor_two_prometheus_buckets() -> None:
    found = buckets.cumulative(buckets.histogram([0.003]), every=2)
    assert len(found) == 26
    assert [le for le, _ in found[:4]] == [0.001, 0.002, 0.004, 0.008]
    assert [n for _, n in found[:4]] == [0, 0, 1, 1]
    assert len(buckets.cumulative([])) == buckets.COUNT


def test_cumulative_refuses_a_step_below_one() -> None:
    with pytest.raises(ValueError):
        buckets.cumulative([1], every=0)
