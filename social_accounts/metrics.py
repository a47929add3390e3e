"""Prometheus metrics shared by the web app, the workers and the scheduler.

Defined once here so every process registers the same names. The web app's ``/metrics`` shows
the registry of the process serving it (under ``run`` that is every component at once); worker
processes expose theirs through Dramatiq's Prometheus middleware when enabled.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ATTEMPTS",
    "COOLDOWNS_ACTIVE",
    "MESSAGE_LATENCY",
    "PLATFORM_ERRORS",
    "PLATFORM_REQUESTS",
    "QUEUE_DEPTH",
    "REFRESHES",
    "SCHEDULER_TICKS",
    "WEBHOOK_ATTEMPTS",
    "WEBHOOK_ENDPOINTS_FAILING",
]

ATTEMPTS = Counter(
    "social_accounts_attempts_total", "Connect attempts that ended, by platform and outcome", ["platform", "outcome"]
)
REFRESHES = Counter(
    "social_accounts_refreshes_total", "Token refreshes, by platform and outcome", ["platform", "outcome"]
)
PLATFORM_ERRORS = Counter(
    "social_accounts_platform_errors_total", "Platform call failures, by platform and error class", ["platform", "kind"]
)
PLATFORM_REQUESTS = Counter(
    "social_accounts_platform_requests_total",
    "Platform requests made for other modules, by platform and outcome (status class, or cooling_down)",
    ["platform", "outcome"],
)
COOLDOWNS_ACTIVE = Gauge("social_accounts_cooldowns_active", "Rate-limit cooldowns in force, by platform", ["platform"])
QUEUE_DEPTH = Gauge("social_accounts_queue_depth", "Messages waiting in each queue", ["queue"])
MESSAGE_LATENCY = Histogram(
    "social_accounts_message_latency_seconds",
    "Time from enqueue to the start of processing, by queue",
    ["queue"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 15, 60, 300, 1800),
)
SCHEDULER_TICKS = Counter(
    "social_accounts_scheduler_ticks_total", "Scheduler job runs, by job and outcome", ["job", "outcome"]
)
WEBHOOK_ATTEMPTS = Counter(
    "social_accounts_webhook_attempts_total", "Webhook delivery attempts, by outcome", ["outcome"]
)
WEBHOOK_ENDPOINTS_FAILING = Gauge(
    "social_accounts_webhook_endpoints_failing",
    "Webhook endpoints whose deliveries have failed for WEBHOOK_FAILING_AFTER_SECONDS (1 = failing)",
    ["endpoint"],
)
