"""What both daemons add to their Prometheus registry at start-up (not in tests' fresh registries)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector


def production_registry() -> CollectorRegistry:
    """A registry with process (CPU, RSS, fds), platform and GC metrics; no ``_created`` series."""
    disable_created_metrics()  # one timestamp series per counter/histogram doubles the series count for nothing
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
