"""The front door's own metrics: requests per route and status, and their latency."""

from __future__ import annotations

from collections import Counter


class Metrics:
    """Requests per route, status and API key name, and their latency (Prometheus text format);
    every label is bounded: route templates, statuses, and the configured keys' names."""

    def __init__(self) -> None:
        self.count: Counter[tuple[str, int, str]] = Counter()
        self.seconds: dict[str, float] = {}

    def observe(self, route: str, status: int, seconds: float, key: str = "") -> None:
        self.count[(route, status, key)] += 1
        self.seconds[route] = self.seconds.get(route, 0.0) + seconds

    def render(self) -> str:
        lines = ["# TYPE embedq_api_requests_total counter"]
        lines += [
            f'embedq_api_requests_total{{route="{r}",status="{s}",key="{k}"}} {n}'
            for (r, s, k), n in sorted(self.count.items())
        ]
        lines.append("# TYPE embedq_api_request_seconds_total counter")
        lines += [
            f'embedq_api_request_seconds_total{{route="{r}"}} {v:.6f}'
            for r, v in sorted(self.seconds.items())
        ]
        return "\n".join(lines) + "\n"
