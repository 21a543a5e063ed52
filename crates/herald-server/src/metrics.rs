//! Prometheus metrics (CONTRACT §9.3): requests by route and status,
//! sessions by outcome, callbacks by result, rate-limit rejections, and
//! providers: requests to them by result and how long they took, and
//! their webhooks by result.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub channel: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// A request to a provider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: &'static str,
    pub operation: &'static str,
    pub result: &'static str,
}

/// A provider's request to one of herald's webhooks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub provider: &'static str,
    pub webhook: &'static str,
    /// `applied`, `duplicate`, `unmatched`, `ignored`, `bad_signature`,
    /// `malformed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderOperation {
    pub provider: &'static str,
    pub operation: &'static str,
}

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    pub provider_requests: Family<ProviderLabels, Counter>,
    pub provider_latency: Family<ProviderOperation, Histogram, fn() -> Histogram>,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub sessions_accepted: Family<ChannelLabels, Counter>,
    pub sessions_dispatched: Family<ChannelLabels, Counter>,
    pub sessions_ended: Family<OutcomeLabels, Counter>,
    pub callbacks: Family<ResultLabels, Counter>,
    pub rate_limited: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let requests = Family::<RequestLabels, Counter>::default();
        let sessions_accepted = Family::<ChannelLabels, Counter>::default();
        let sessions_dispatched = Family::<ChannelLabels, Counter>::default();
        let sessions_ended = Family::<OutcomeLabels, Counter>::default();
        let callbacks = Family::<ResultLabels, Counter>::default();
        let rate_limited = Counter::default();
        let provider_requests = Family::<ProviderLabels, Counter>::default();
        let provider_latency =
            Family::<ProviderOperation, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_buckets,
            );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "provider_requests",
            "Requests to channel providers, by provider, operation and result",
            provider_requests.clone(),
        );
        registry.register(
            "provider_latency_seconds",
            "How long requests to channel providers took",
            provider_latency.clone(),
        );
        registry.register(
            "provider_webhooks",
            "Providers' webhooks, by provider, webhook and result",
            webhooks.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "sessions_accepted",
            "Sessions accepted by the trigger endpoints",
            sessions_accepted.clone(),
        );
        registry.register(
            "sessions_dispatched",
            "Session runs this server started (a session taken up again after a crash counts again)",
            sessions_dispatched.clone(),
        );
        registry.register(
            "sessions_ended",
            "Sessions that reached an outcome",
            sessions_ended.clone(),
        );
        registry.register(
            "callbacks",
            "Callback attempts by result (delivered, retry, failed, refused)",
            callbacks.clone(),
        );
        registry.register(
            "rate_limited",
            "Triggers refused with 429 by the rate limiter",
            rate_limited.clone(),
        );
        Metrics {
            registry,
            provider_requests,
            provider_latency,
            webhooks,
            requests,
            sessions_accepted,
            sessions_dispatched,
            sessions_ended,
            callbacks,
            rate_limited,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn callback(&self, result: &'static str) {
        self.callbacks.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn provider_request(
        &self,
        provider: &'static str,
        operation: &'static str,
        result: &'static str,
        took: Duration,
    ) {
        self.provider_requests
            .get_or_create(&ProviderLabels {
                provider,
                operation,
                result,
            })
            .inc();
        self.provider_latency
            .get_or_create(&ProviderOperation {
                provider,
                operation,
            })
            .observe(took.as_secs_f64());
    }

    pub fn webhook(&self, provider: &'static str, webhook: &'static str, result: &'static str) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                provider,
                webhook,
                result,
            })
            .inc();
    }
}
