"""The metrics registry: request counts and a cumulative latency histogram by route."""

from __future__ import annotations

from gateway.metrics import Metrics


def test_request_counts_and_histogram_render_as_prometheus_text():
    """Counts by route/method/status and cumulative buckets with sum and count."""
    m = Metrics()
    m.observe("api", "GET", 200, 0.003)
    m.observe("api", "GET", 200, 0.2)
    m.observe("api", "BREW", 418, 50.0)
    text = m.render().decode()
    assert 'gateway_requests_total{method="GET",route="api",status="200"} 2.0' in text
    assert 'gateway_requests_total{method="OTHER",route="api",status="418"} 1.0' in text
    assert 'gateway_request_duration_seconds_bucket{le="0.001",route="api"} 0.0' in text
    assert 'gateway_request_duration_seconds_bucket{le="0.005",route="api"} 1.0' in text
    assert 'gateway_request_duration_seconds_bucket{le="0.25",route="api"} 2.0' in text
    assert 'gateway_request_duration_seconds_bucket{le="30.0",route="api"} 2.0' in text
    assert 'gateway_request_duration_seconds_bucket{le="+Inf",route="api"} 3.0' in text
    assert 'gateway_request_duration_seconds_count{route="api"} 3.0' in text
    assert 'gateway_request_duration_seconds_sum{route="api"} 50.203' in text


def test_each_metrics_object_has_its_own_registry():
    """Two Metrics objects never share counts (one per process / test)."""
    a, b = Metrics(), Metrics()
    a.observe("r", "GET", 200, 0.01)
    assert "gateway_requests_total{" in a.render().decode()
    assert "gateway_requests_total{" not in b.render().decode()
