//! Channel providers: what places calls and sends messages.
//!
//! A [`Provider`] hides one channel technology behind the few operations a
//! session needs; the simulator is one. A [`connection`] is an account's
//! credentials for a real provider, checked here; each real provider has a
//! module of its own ([`vonage`]) with its wire types, its signing and
//! verification, its status mapping and its request building. The session
//! driver in `herald-server` calls them and records what they report.

pub mod adapter;
pub mod connection;
mod simulator;
pub mod smpp;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod twilio;
pub mod vonage;
pub mod whatsapp_cloud;

pub use connection::{BadConnection, Credentials, ProviderKind};
pub use simulator::Simulator;

use async_trait::async_trait;
use herald_core::session::MessageStatus;
use herald_core::Channel;

pub use herald_core::session::{AnsweredBy, CallFailure};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Answered(AnsweredBy),
    NotAnswered(CallFailure),
}

/// One outbound call.
#[derive(Debug, Clone)]
pub struct CallRequest {
    pub to: String,
    pub from: String,
    /// Digits the simulator keys its outcome on (CONTRACT §8.1).
    pub last_two_digits: Option<u8>,
}

/// What an outbound message carries.
#[derive(Debug, Clone)]
pub enum MessageContent {
    Text(String),
    /// A WhatsApp template message: the trigger's template and components.
    Template(serde_json::Value),
}

#[derive(Debug, Clone)]
pub struct OutboundMessage {
    pub channel: Channel,
    pub to: String,
    pub from: String,
    pub content: MessageContent,
    pub last_two_digits: Option<u8>,
}

/// A status a provider will report of a message it took, and how long
/// after the send: stored by the session and applied when it is due, as a
/// real provider's status webhook is (no task waits on a delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    pub after: std::time::Duration,
    pub status: MessageStatus,
}

/// What a dialled call comes to, and how long after the dialling: the
/// provider's report, which the session stores and applies when it is due
/// (no task waits on the ringing phone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialled {
    pub after: std::time::Duration,
    pub result: CallResult,
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Dials: what the call will come to, and when.
    fn dial(&self, call: &CallRequest) -> Dialled;
    /// Says `text` on an answered call and returns when it has been said.
    async fn say(&self, call: &CallRequest, text: &str);
    async fn hang_up(&self, call: &CallRequest);
    /// Hands an answered call over to `to` (a number or SIP URI); herald's
    /// part of the call ends there.
    async fn transfer(&self, call: &CallRequest, to: &str);
    /// Takes a message: every status it will come to, in order, and when.
    fn send(&self, message: &OutboundMessage) -> Vec<Reported>;
}
