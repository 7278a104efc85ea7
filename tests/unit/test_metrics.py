"""histogram_quantile, checked against values worked out by hand."""

import math

from fusionrec.streams.metrics import histogram_quantile

H = "h_seconds"


def test_interpolates_within_the_bucket():
    buckets = {f'{H}_bucket{{le="0.01"}}': 50, f'{H}_bucket{{le="0.02"}}': 90, f'{H}_bucket{{le="+Inf"}}': 100}
    assert histogram_quantile(buckets, H, 0.5) == 0.01  # rank 50 ends the first bucket
    assert math.isclose(histogram_quantile(buckets, H, 0.7), 0.015)  # rank 70: halfway through 50..90
    assert histogram_quantile(buckets, H, 0.99) == 0.02  # in +Inf: the last finite bound


def test_empty_histogram_is_nan():
    assert math.isnan(histogram_quantile({}, H, 0.5))
    assert math.isnan(histogram_quantile({f'{H}_bucket{{le="+Inf"}}': 0}, H, 0.5))
