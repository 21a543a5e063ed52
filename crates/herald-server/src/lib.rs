//! herald's server: the HTTP API, the workers that run sessions and deliver
//! callbacks, and their start-up and shutdown.
//!
//! The folders follow the path of a session:
//! - [`api`]: the HTTP API, one module per resource; a trigger's checks
//!   ([`api::triggers`]) end with the session and its dispatch job in the
//!   store (`herald-store`);
//! - [`session`]: the workers that run sessions: the [`session::dispatcher`]
//!   claims due jobs, the [`session::driver`] runs one wake of a session
//!   through its channel provider (`herald-channels`) and its flow
//!   (`herald-flow`);
//! - [`outbound`]: what reaches outside: the guarded HTTP client, the
//!   [`outbound::callbacks`] sender that reports to `status_url`s, flows'
//!   webhook calls and email;
//! - [`startup`]: configuration, the listener, start-up and shutdown.
//!
//! [`directory`] keeps in memory what every request looks up; [`leases`]
//! tracks the leased work a shutdown must finish or give back.

pub mod api;
pub mod campaigns;
pub mod clock;
pub mod directory;
pub mod leases;
pub mod metrics;
pub mod outbound;
pub mod providers;
pub mod session;
pub mod startup;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use startup::{config, start, start_with_store, App, AppState, Config, Server, Shutdown};
