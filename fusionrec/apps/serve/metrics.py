"""The serving API's Prometheus metrics, in one registry per app (``/metrics``).

Latency is in seconds with buckets that resolve the milliseconds a recommendation read takes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["LATENCY_BUCKETS", "ApiMetrics"]

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class ApiMetrics:
    """Requests by route and status, their latency by route, events accepted, fallbacks served."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "fusionrec_api_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fusionrec_api_request_seconds",
            "Time from a request's arrival to its response, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "fusionrec_api_events_total",
            "Events posted to /v1/events, by outcome: delivered (acknowledged by the brokers), invalid (rejected "
            "with a 422) or failed (not acknowledged in time: 503).",
            ["outcome"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "fusionrec_api_fallbacks_total",
            "Recommendation reads answered with the global fallback list (the user had no list yet).",
            registry=self.registry,
        )
        self.item_side_age = Gauge(
            "fusionrec_api_item_side_loaded_timestamp_seconds",
            "When the item-side snapshot behind the fallback and similar items was last loaded (0: never).",
            registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
