"""Metrics: every Prometheus series the pipeline exports, in one registry.

The ingress serves them at ``GET /metrics``; workers and the callback consumer on
``SBCT_METRICS_PORT`` (see ``health.py``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter("sbct_http_requests_total", "HTTP requests by route and status",
                        ["route", "method", "status"], registry=REGISTRY)
HTTP_SECONDS = Histogram("sbct_http_request_seconds",
                         "HTTP request latency by route and status",
                         ["route", "status"], registry=REGISTRY,
                         buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
WEBHOOK_RECIPIENTS = Counter("sbct_webhook_recipients_total",
                             "Profiles received by webhooks, accepted or rejected",
                             ["endpoint", "outcome"], registry=REGISTRY)
PUBLISH_SECONDS = Histogram("sbct_publish_seconds", "Publish-to-confirm latency",
                            registry=REGISTRY,
                            buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .5, 2))
PUBLISH_FAILURES = Counter("sbct_publish_failures_total", "Publishes not confirmed",
                           ["reason"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("sbct_queue_depth",
                    "Messages ready per queue (name without the prefix: single, dead.jobs...)",
                    ["queue"], registry=REGISTRY)
DELIVERIES = Counter("sbct_deliveries_total", "Notifications by outcome",
                     ["outcome"], registry=REGISTRY)
BATCH_SECONDS = Histogram("sbct_delivery_batch_seconds", "Time to deliver one batch",
                          ["queue"], registry=REGISTRY)
RETRIES = Counter("sbct_retries_total", "Messages sent to a delay queue", ["queue"],
                  registry=REGISTRY)
REDELIVERIES_SKIPPED = Counter(
    "sbct_redeliveries_skipped_total",
    "Redelivered messages acked without running again: handled before, ack lost with the "
    "connection", ["queue"], registry=REGISTRY)
DEAD_LETTERS = Counter("sbct_dead_letters_total", "Messages or records dead-lettered",
                       ["queue"], registry=REGISTRY)
EVENTS_EXPORTED = Counter("sbct_events_exported_total", "Event records by export outcome",
                          ["app_id", "outcome"], registry=REGISTRY)
EVENTS_NO_IDENTIFIER = Counter("sbct_events_no_identifier_total",
                               "Notifications with no objectId nor identity: no event",
                               registry=REGISTRY)
EXPORT_LAG = Gauge("sbct_export_lag_seconds", "Age of the oldest event not yet exported",
                   ["app_id"], registry=REGISTRY)
EXPORT_SECONDS = Histogram("sbct_export_request_seconds", "CleverTap upload request latency",
                           registry=REGISTRY)
OUTBOX_DUPLICATES_SKIPPED = Counter(
    "sbct_outbox_duplicates_skipped_total",
    "Events messages not exported: the same outbox row was exported before by this process",
    registry=REGISTRY)
OUTBOX_REPUBLISHED = Counter("sbct_outbox_republished_total",
                             "Outbox rows republished by the sweeper", registry=REGISTRY)
EXPORT_RETRIES = Counter("sbct_export_retries_total",
                         "Event records sent to a delay queue, by app and cause",
                         ["app_id", "reason"], registry=REGISTRY)
EXPORT_DEAD_LETTERS = Counter("sbct_export_dead_letters_total",
                              "Event records dead-lettered, by app", ["app_id"],
                              registry=REGISTRY)
EXPORT_PARKED = Gauge("sbct_export_parked_events",
                      "Parked messages (refused credentials) waiting per app", ["app_id"],
                      registry=REGISTRY)
