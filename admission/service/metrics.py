"""Prometheus metrics of the admission webhook, on a registry of their own (one per app, so
tests and several apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class WebhookMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reviews = Counter("umec_admission_reviews", "AdmissionReviews answered",
                               ["endpoint", "result"], registry=self.registry)
        self.admitted = Counter("umec_admission_admitted", "Reviews allowed",
                                ["endpoint"], registry=self.registry)
        self.denied = Counter("umec_admission_denied", "Reviews denied",
                              ["endpoint"], registry=self.registry)
        self.forget_failures = Counter(
            "umec_admission_forget_failures",
            "Deleted or terminating pods whose admission record could not be forgotten (the "
            "pod reconciler catches up)", ["operation"], registry=self.registry)
        self.cache_hits = Counter("umec_admission_cache_hits", "Cache hits",
                                  ["cache"], registry=self.registry)
        self.cache_misses = Counter("umec_admission_cache_misses", "Cache misses",
                                    ["cache"], registry=self.registry)
        self.registry_latency = Histogram(
            "umec_admission_registry_seconds", "Registry round trips (resolve, verify)",
            ["step"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.review_latency = Histogram(
            "umec_admission_review_seconds", "Review handling time", ["endpoint"],
            buckets=_LATENCY_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
