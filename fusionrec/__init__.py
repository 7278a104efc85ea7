"""fusionrec: streaming, real-time fused recommendations for shops on Kafka."""

__version__ = "0.1.0"
