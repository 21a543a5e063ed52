//! Prometheus metrics (CONTRACT §9.3): requests by route and status,
//! sessions by outcome, callbacks by result, rate-limit rejections.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

pub struct Metrics {
    registry: Registry,
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
}
