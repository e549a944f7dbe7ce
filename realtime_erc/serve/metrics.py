"""The server's Prometheus metrics (``GET /metrics``), one registry per server.

Counted from what the sessions publish (every document passes :meth:`Metrics.observe`), so
the figures are the stream's own: end-of-speech → final and segment → provisional latencies,
utterances, the overload policy's shed work; plus sessions open and refused, queued media and
the shared models' batch sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
CALL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    """``sessions_open``/``queue_depth``: read when scraped."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, sessions_open: Callable[[], int], queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("erc_sessions_open", "Sessions streaming now.", registry=r).set_function(
            sessions_open
        )
        Gauge(
            "erc_queued_media", "Media messages queued in all sessions.", registry=r
        ).set_function(queue_depth)
        self.sessions = Counter(
            "erc_sessions", "Sessions asked for, by result.", ["result"], registry=r
        )
        self.utterances = Counter("erc_utterances", "Final emotion events sent.", registry=r)
        self.final_latency = Histogram(
            "erc_final_latency_seconds", "End of speech to final event.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.provisional_latency = Histogram(
            "erc_provisional_latency_seconds", "End of speech to provisional event.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.shed = Counter(
            "erc_shed", "Work skipped by the overload policy.", ["work"], registry=r
        )
        self.batch_size = Histogram(
            "erc_model_batch_size", "Sessions' requests one model ran as one batch.", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )  # fmt: skip
        self.remote_call = Histogram(
            "erc_remote_call_seconds",
            "serve --ray: a call's round trip from this ingress replica to a model deployment "
            "(less erc_model_call_seconds: what the hop costs).",
            ["deployment"], buckets=CALL_BUCKETS, registry=r,
        )  # fmt: skip
        self._shed_seen: dict[tuple[str, str], int] = {}

    def accepted(self) -> None:
        self.sessions.labels("accepted").inc()

    def refused(self, why: str) -> None:
        self.sessions.labels(f"refused_{why}").inc()

    def remote(self, deployment: str) -> Callable[[float], None]:
        """What times one call to ``deployment`` (asr, text, engine) on Ray, in seconds."""
        return self.remote_call.labels(deployment).observe

    def batch(self, model: str) -> Callable[[int], None]:
        """What counts one batch of ``model`` (engine, text, asr, voices) by its size."""
        return self.batch_size.labels(model).observe

    def observe(self, document: dict[str, Any]) -> None:
        """Count one published document."""
        if document.get("schema") == "erc.emotion/1":
            total = (document.get("latency_ms") or {}).get("total")
            if document.get("provisional"):
                if total is not None:
                    self.provisional_latency.observe(total / 1000)
                return
            self.utterances.inc()
            if total is not None:
                self.final_latency.observe(total / 1000)
        elif document.get("schema") == "erc.status/1":
            # the report's counts are the session's totals so far: add what is new
            session = document.get("session_id", "")
            load = document.get("load") or {}
            for work, count in (load.get("shed_counts") or {}).items():
                seen = self._shed_seen.get((session, work), 0)
                if count > seen:
                    self.shed.labels(work).inc(count - seen)
                    self._shed_seen[(session, work)] = count
            if document.get("state") == "offline":
                self._shed_seen = {k: v for k, v in self._shed_seen.items() if k[0] != session}

    def text(self) -> bytes:
        return generate_latest(self.registry)


def merge_replicas(texts: dict[str, str]) -> str:
    """Several processes' metrics (Prometheus' text format) as one exposition, each sample
    labelled with its ``replica``: what ``/metrics`` answers on Ray, where every replica
    counts its own (``sum by (...)`` in a query adds them up)."""
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.utils import floatToGoString

    families: dict[str, tuple[str, str, list[str]]] = {}
    for replica, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            if family.name.endswith("_created"):  # each process's start times: noise here
                continue
            # the text format names a counter's family as its samples: ..._total
            name = family.name + "_total" if family.type == "counter" else family.name
            _, _, lines = families.setdefault(name, (family.type, family.documentation, []))
            for sample in family.samples:
                labels = {"replica": replica, **sample.labels}
                rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines.append(f"{sample.name}{{{rendered}}} {floatToGoString(sample.value)}")
    out: list[str] = []
    for name, (kind, documentation, lines) in families.items():
        out += [f"# HELP {name} {_escape(documentation)}", f"# TYPE {name} {kind}", *lines]
    return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class ModelBatches:
    """A model deployment's batch sizes on Ray, in its own registry (reported to the hub)."""

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self.observe = Histogram(
            "erc_model_batch_size", "Sessions' requests one model ran as one batch.", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry,
        ).labels(model).observe  # fmt: skip
        self.call = Histogram(
            "erc_model_call_seconds", "serve --ray: a model deployment's time on one batch.",
            ["model"], buckets=CALL_BUCKETS, registry=self.registry,
        ).labels(model).observe  # fmt: skip

    def text(self) -> str:
        return generate_latest(self.registry).decode()
