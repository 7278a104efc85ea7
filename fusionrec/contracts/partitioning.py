"""Which partition a record key lands on: the Java client's rule, for every fusionrec producer and for evaluation.

Events are keyed by ``user_id`` so that all of a user's events reach one partition (one worker, one ordered
history). That holds only if every producer of the shop maps a key to the same partition. The Java client (and
Go's sarama/franz-go in their Java-compatible mode, and aiokafka under Faust) hash the key with murmur2;
librdkafka's default is a CRC32 hash, which would split a user between partitions the moment a shop produces
with both. So fusionrec's librdkafka producers are configured with ``partitioner=murmur2_random`` (murmur2 for
keyed records, like Java; random for unkeyed ones) and :func:`partition_for` computes the same placement where
no broker is involved (the in-process evaluation of the production layout).

>>> murmur2(b"21"), murmur2(b"foobar")     # Apache Kafka's UtilsTest.testMurmur2 vectors
(-973932308, -790332482)
>>> partition_for("foobar", 6)
0
"""

from __future__ import annotations

__all__ = ["murmur2", "partition_for"]

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``) as the Java client computes it: a signed
    32-bit int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length - length % 4
    for i in range(0, end, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes | str, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``: ``toPositive(murmur2(key)) % partitions``, as in Java."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions
