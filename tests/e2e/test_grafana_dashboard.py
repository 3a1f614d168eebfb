"""docs/grafana-dashboard.json: it has the shape Grafana imports, and every query in it
answers with data from a real Prometheus (Debian's) scraping a real rrproxy."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ensure_installed
from tests.helpers import REPO, RRProxy, get, wait_until

DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
TOKEN = "grafana-test-token"


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _exprs() -> list[str]:
    return [target["expr"] for panel in _dashboard()["panels"] for target in panel["targets"]]


def test_the_dashboard_has_the_shape_grafana_imports():
    dashboard = _dashboard()
    for key in ("title", "uid", "schemaVersion", "panels", "time", "templating"):
        assert key in dashboard, key
    # Importable anywhere: the data source is an input chosen at import time.
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in ("timeseries", "stat")
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\brrproxy_[a-z_]+", expr))


@pytest.mark.timeout(120)
def test_every_query_answers_from_a_real_prometheus(tmp_path: Path):
    prometheus = ensure_installed("prometheus", "prometheus", service="prometheus")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        admin = probe.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        prom_port = probe.getsockname()[1]
    args = ("--admin", f"127.0.0.1:{admin}", "--admin-token", TOKEN, "workers.hello:handler")
    with RRProxy(*args, workers=2) as server:
        # Every metric a query names is one rrproxy exports.
        request = urllib.request.Request(f"http://127.0.0.1:{admin}/metrics")
        request.add_header("Authorization", f"Bearer {TOKEN}")
        exported = urllib.request.urlopen(request, timeout=10).read().decode()
        names = set(re.findall(r"^(rrproxy_[a-z_]+)", exported, re.M))
        for expr in _exprs():
            missing = _metric_names(expr) - names
            assert not missing, (expr, missing)

        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: rrproxy\n"
            f"    authorization: {{credentials: {TOKEN}}}\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{admin}']}}]\n"
        )
        prom = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:

            def query(expr: str) -> list:
                url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode(
                    {"query": expr.replace("$__rate_interval", "1m")}
                )
                answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
                assert answer["status"] == "success", (expr, answer)
                return answer["data"]["result"]

            def scraped() -> bool:
                try:
                    return len(query("rrproxy_worker_requests_total")) == 2
                except OSError:
                    return False

            wait_until(scraped, 30, 0.5, what="prometheus scraping rrproxy")
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:  # a load the rates can see
                get(server.port)
            empty: list[str] = []

            def every_query_answers() -> bool:
                empty[:] = [expr for expr in _exprs() if not query(expr)]
                return not empty

            try:
                wait_until(every_query_answers, 30, 1.0, what="every query")
            except AssertionError:
                raise AssertionError(f"queries without data: {empty}") from None
            per_worker = query("rate(rrproxy_worker_requests_total[1m])")
            assert {r["metric"]["worker"] for r in per_worker} == {"1", "2"}
            panel = next(p for p in _dashboard()["panels"] if p["title"] == "p99 latency")
            p99 = query(panel["targets"][0]["expr"])
            assert 0 < float(p99[0]["value"][1]) < 0.1  # a hello handler, in seconds
            panel = next(p for p in _dashboard()["panels"] if p["title"].startswith("Fairness"))
            jain = float(query(panel["targets"][0]["expr"])[0]["value"][1])
            assert 0.9 < jain <= 1.0  # rr over two workers
        finally:
            prom.terminate()
            prom.wait(10)
