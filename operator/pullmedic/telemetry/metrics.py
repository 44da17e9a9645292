"""Prometheus metrics: one registry, names a platform team can alert on."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

DETECTIONS = Counter(
    "pullmedic_detections_total",
    "Pull failures diagnosed, by cause (one per workload and image).",
    ["cause"],
    registry=REGISTRY,
)
ACTIONS = Counter(
    "pullmedic_actions_total",
    "Remediation actions by type and outcome.",
    ["action", "outcome"],
    registry=REGISTRY,
)
PLANS = Counter(
    "pullmedic_plans_total",
    "Plans by mode and decision (applied, suggested, observed).",
    ["mode", "decision"],
    registry=REGISTRY,
)
PROVIDER_RUNS = Counter(
    "pullmedic_credential_provider_runs_total",
    "Credential provider plugin runs by provider and result (ok, failed); cached answers "
    "are not runs.",
    ["provider", "result"],
    registry=REGISTRY,
)
PROBE_SECONDS = Histogram(
    "pullmedic_probe_duration_seconds",
    "Time to diagnose one image against its registry.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
TIME_TO_ACTION = Histogram(
    "pullmedic_time_to_action_seconds",
    "From the first failure seen to the action taken.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
STUCK_PODS = Gauge(
    "pullmedic_stuck_pods",
    "Pods currently stuck pulling an image, by cause.",
    ["cause"],
    registry=REGISTRY,
)
PULL_ATTEMPTS = Gauge(
    "pullmedic_pull_attempts",
    "Kubelet pull attempts so far, summed over stuck workloads.",
    registry=REGISTRY,
)
SECONDS_LOST = Counter(
    "pullmedic_backoff_seconds_lost_total",
    "Seconds workloads spent stuck in image pull back-off before recovering.",
    registry=REGISTRY,
)
SECONDS_SAVED = Counter(
    "pullmedic_backoff_seconds_saved_total",
    "Back-off waiting avoided by recreating stuck pods after a fix.",
    registry=REGISTRY,
)
LOOP_RESTARTS = Counter(
    "pullmedic_loop_restarts_total",
    "Background loops restarted after a failure or a missed deadline, by loop.",
    ["loop"],
    registry=REGISTRY,
)
API_ERRORS = Counter(
    "pullmedic_kube_request_failures_total",
    "Kubernetes API calls that failed after their retries, by reason.",
    ["reason"],
    registry=REGISTRY,
)
IMAGE_UNAVAILABLE = Gauge(
    "pullmedic_image_unavailable",
    "1 for each workload whose template image would not pull for a new pod (audit).",
    ["namespace", "kind", "name", "cause"],
    registry=REGISTRY,
)
ADMISSIONS = Counter(
    "pullmedic_admission_reviews_total",
    "Admission reviews answered, by decision (allowed, warned, mutated, denied).",
    ["decision"],
    registry=REGISTRY,
)
WEBHOOK_CERT_RENEWALS = Counter(
    "pullmedic_webhook_certificate_renewals_total",
    "Webhook certificates the operator issued itself (--webhook-tls=self).",
    registry=REGISTRY,
)
WEBHOOK_CERT_EXPIRY = Gauge(
    "pullmedic_webhook_certificate_expiry_timestamp_seconds",
    "When the webhook's serving certificate expires (Unix time; --webhook-tls=self).",
    registry=REGISTRY,
)
REGISTRY_REQUESTS = Counter(
    "pullmedic_registry_requests_total",
    "Requests sent to registries, by registry host and HTTP method (GET, HEAD, POST).",
    ["host", "method"],
    registry=REGISTRY,
)
REGISTRY_QUOTA_REMAINING = Gauge(
    "pullmedic_registry_quota_remaining",
    "Pulls the registry says are left in its window (ratelimit-remaining), by host.",
    ["host"],
    registry=REGISTRY,
)
REGISTRY_GETS_WITHHELD = Counter(
    "pullmedic_registry_gets_withheld_total",
    "Manifest GETs not sent because the host's pull quota is down to the nodes' reserve.",
    ["host"],
    registry=REGISTRY,
)
CIRCUITS_OPENED = Counter(
    "pullmedic_circuits_opened_total",
    "Circuits opened: a fix for this workload did not hold, and pullmedic stopped fixing it.",
    ["namespace", "kind", "name", "cause"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "pullmedic_leader",
    "1 on the replica that holds the Lease and acts; 0 on standbys.",
    registry=REGISTRY,
)
HEALTHY = Gauge(
    "pullmedic_healthy",
    "1 when the liveness check passes (loops ticking, no wedged decision, pod watch alive).",
    registry=REGISTRY,
)
READY = Gauge(
    "pullmedic_ready",
    "1 when the watches are established and the API server answered recently.",
    registry=REGISTRY,
)


# Registry hosts come from image references, which tenants write: a pod naming a new host
# per replica must not grow every scrape without bound. The first MAX_HOSTS hosts seen keep
# series of their own; requests to any later one are counted under OTHER_HOST.
MAX_HOSTS = 64
OTHER_HOST = "other"


class HostLabels:
    """The ``host`` label value for a registry host, with the number of values capped."""

    def __init__(self, limit: int = MAX_HOSTS) -> None:
        self.limit = limit
        self._hosts: set[str] = set()
        self._lock = threading.Lock()  # plugin runs and the metrics server use threads

    def __call__(self, host: str) -> str:
        with self._lock:
            if host in self._hosts:
                return host
            if len(self._hosts) < self.limit:
                self._hosts.add(host)
                return host
        return OTHER_HOST


host_label = HostLabels()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr, registry=REGISTRY)
