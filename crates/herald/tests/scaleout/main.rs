//! The black-box suite of `tests/api` once more, on the scale-out backends:
//! every server on a fresh PostgreSQL schema, rate limits in a shared Redis.
//! Then what only several servers can show ([`instances`]): one global rate
//! limit, each session dispatched once, and nothing lost when one dies.
//!
//! PostgreSQL and Redis are found at `HERALD_TEST_POSTGRES_URL` and
//! `HERALD_TEST_REDIS_URL` (by default on 127.0.0.1, as `.ci/run` starts them).

#[path = "../api/helpers.rs"]
mod helpers;

#[path = "../api/agents.rs"]
mod agents;
#[path = "../api/callbacks.rs"]
mod callbacks;
#[path = "../api/campaigns.rs"]
mod campaigns;
#[path = "../api/connections.rs"]
mod connections;
#[path = "../api/conventions.rs"]
mod conventions;
#[path = "../api/conversations.rs"]
mod conversations;
#[path = "../api/crash.rs"]
mod crash;
#[path = "../api/durability.rs"]
mod durability;
#[path = "../api/examples.rs"]
mod examples;
#[path = "../api/failures.rs"]
mod failures;
#[path = "../api/fairness.rs"]
mod fairness;
#[path = "../api/hostile.rs"]
mod hostile;
#[path = "../api/idempotency.rs"]
mod idempotency;
#[path = "../api/make_call.rs"]
mod make_call;
#[path = "../api/messaging.rs"]
mod messaging;
#[path = "../api/operator.rs"]
mod operator;
#[path = "../api/opt_outs.rs"]
mod opt_outs;
#[path = "../api/outage.rs"]
mod outage;
#[path = "../api/provider_connections.rs"]
mod provider_connections;
#[path = "../api/rate_limits.rs"]
mod rate_limits;
#[path = "../api/secrets.rs"]
mod secrets;
#[path = "../api/sessions.rs"]
mod sessions;
#[path = "../api/smpp.rs"]
mod smpp;
#[path = "../api/tenancy.rs"]
mod tenancy;
#[path = "../api/twilio.rs"]
mod twilio;
#[path = "../api/vonage.rs"]
mod vonage;
#[path = "../api/whatsapp_cloud.rs"]
mod whatsapp_cloud;

mod instances;
mod smpp_servers;

const BACKEND: helpers::Backend = helpers::Backend::ScaleOut;
