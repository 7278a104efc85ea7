"""Keys land where the Java client puts them: murmur2 against Apache Kafka's own reference values."""

from __future__ import annotations

import doctest

import pytest

import fusionrec.contracts.partitioning
from fusionrec.contracts.partitioning import murmur2, partition_for
from fusionrec.contracts.settings import load_settings

#: org.apache.kafka.common.utils.UtilsTest.testMurmur2 (and the empty array).
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
    b"": 275646681,
}


@pytest.mark.parametrize(("data", "expected"), JAVA_VECTORS.items())
def test_murmur2_matches_the_java_client(data, expected):
    assert murmur2(data) == expected


def test_partition_is_the_positive_hash_modulo_the_count():
    for data, hashed in JAVA_VECTORS.items():
        for n in (1, 6, 48):
            assert partition_for(data, n) == (hashed & 0x7FFFFFFF) % n
    assert partition_for("u-1842", 6) == partition_for(b"u-1842", 6)
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        partition_for(b"x", 0)


def test_every_librdkafka_producer_uses_the_java_partitioner():
    assert load_settings().producer_config()["partitioner"] == "murmur2_random"


def test_docstring_examples():
    assert doctest.testmod(fusionrec.contracts.partitioning).failed == 0
