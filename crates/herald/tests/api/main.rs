//! herald's black-box test suite: the real server on port 0, a database of
//! its own, a local callback receiver, and HTTP. Each module covers sections
//! of CONTRACT.md, named in its doc comment.
//!
//! This copy runs on the embedded default (a SQLite file, the in-process
//! limiter); `tests/scaleout` runs the same modules on PostgreSQL and Redis.

mod helpers;

mod agents;
mod callbacks;
mod campaigns;
mod connections;
mod conventions;
mod conversations;
mod crash;
mod durability;
mod examples;
mod failures;
mod fairness;
mod hostile;
mod idempotency;
mod make_call;
mod messaging;
mod operator;
mod opt_outs;
mod outage;
mod provider_connections;
mod rate_limits;
mod secrets;
mod sessions;
mod smpp;
mod tenancy;
mod twilio;
mod vonage;
mod whatsapp_cloud;

const BACKEND: helpers::Backend = helpers::Backend::Embedded;
