"""Scraping a service's Prometheus endpoint in tests."""

from __future__ import annotations

import urllib.error
import urllib.request


def scrape(port: int) -> dict[str, float]:
    """``GET /metrics`` on localhost:``port``, Prometheus text format -> {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def status(port: int, path: str) -> int:
    """The HTTP status of ``GET path`` on localhost:``port`` (4xx/5xx included, no exception)."""
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code
