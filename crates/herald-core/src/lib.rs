//! herald's domain: the types every other crate speaks in.
//!
//! Nothing here does I/O or awaits. Values that come from outside (a
//! destination, an agent id, a session parameter) are parsed into types whose
//! constructors are the only way in, so code further along never re-checks a
//! string.

pub mod agent;
pub mod campaign;
pub mod destination;
pub mod flow;
pub mod ids;
pub mod keys;
pub mod net;
pub mod recipients;
pub mod secret;
pub mod session;
pub mod template;
pub mod text;
pub mod time;
pub mod trigger;
pub mod webhook;
pub mod whatsapp;
pub mod window;
pub mod zones;

pub use agent::{Channel, Region};
pub use destination::{BadDestination, Destination, PhoneNumber, SipUri};
pub use ids::{AccountId, AgentId, CampaignId, ConnectionId, ConversationUuid, SessionId};
