"""The metrics registry: request counts and a cumulative latency histogram by route."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

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


_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(_BOUNDS),  # exactly on a bound: counted in that bound's bucket
            st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
        ),
        max_size=30,
    )
)
def test_latency_buckets_agree_with_prometheus_clients_own_histogram(durations):
    """Our hand-rolled bucket search files every duration where prometheus_client's Histogram
    (the independent reference, same bounds) does, including values exactly on a bound."""
    ours = Metrics()
    ref_registry = CollectorRegistry()
    ref = Histogram(
        "gateway_request_duration_seconds", "ref", ["route"], buckets=_BOUNDS,
        registry=ref_registry,
    )  # fmt: skip
    for seconds in durations:
        ours.observe("api", "GET", 200, seconds)
        ref.labels("api").observe(seconds)

    def buckets(text: str) -> list[str]:
        return [line for line in text.splitlines() if "_bucket{" in line]

    assert buckets(ours.render().decode()) == buckets(generate_latest(ref_registry).decode())
