//! Connections at work (CONTRACT §10): a stored connection's credentials
//! unsealed with the operator's key and opened into the client of the
//! provider it names.
//!
//! Credentials are sealed under the connection's id, so sealed bytes moved
//! to another connection's row do not open. Nothing here prints them: they
//! stay in [`herald_core::secret::Secret`]s from the moment they are read.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_channels::adapter::{
    CallOutcome, CallTurn, MachineDetection, NewCall, OutboundMessage, SendOutcome,
};
use herald_channels::connection::Credentials;
use herald_channels::smpp::{Smpp, SmppCredentials, SmppSettings};
use herald_channels::twilio::{self, Twilio, TwilioCredentials, TwilioSettings};
use herald_channels::vonage::voice::Voice;
use herald_channels::vonage::{self, Vonage, VonageCredentials};
use herald_channels::whatsapp_cloud::{WhatsappCloud, WhatsappCredentials};
use herald_channels::ProviderKind;
use herald_core::secret::Sealer;
use herald_core::ConnectionId;
use herald_limit::{Decision, RateLimiter};
use herald_store::{ConnectionRecord, Store};
use serde_json::Value;

use crate::Config;

/// Why a stored connection cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "connections are stored and HERALD_SECRET_KEY is not set: set it (or --secret-key) to \
         the key their credentials were sealed with"
    )]
    NoKey,
    #[error(
        "HERALD_SECRET_KEY does not open the credentials of connection {0}: it is not the key \
         they were sealed with"
    )]
    WrongKey(ConnectionId),
    /// Opened, but not what this build can read (written by a newer herald,
    /// or damaged).
    #[error("connection {0} cannot be read: {1}")]
    Unreadable(ConnectionId, String),
}

/// A connection's client, by provider.
pub enum Link {
    Vonage(Box<Vonage>),
    Twilio(Box<Twilio>),
    WhatsappCloud(Box<WhatsappCloud>),
    /// An SMSC's bind, held while the connection is open.
    Smpp(Arc<Smpp>),
    /// A provider whose adapter this build does not have yet.
    NotYet,
}

/// Why a connection cannot do what a session asks of it.
const CANNOT_SEND: &str = "the session's connection cannot send messages";
const CANNOT_CALL: &str = "the session's connection cannot place calls";

/// What a session asks of its connection's provider, whichever it is
/// (CHANNELS §1): each adapter turns it into its own requests.
impl Link {
    /// Sends one message.
    pub async fn send(&self, message: &OutboundMessage) -> SendOutcome {
        match self {
            Link::Vonage(vonage) => vonage.send(message).await,
            Link::Twilio(twilio) => twilio.send(message).await,
            Link::WhatsappCloud(whatsapp) => whatsapp.send(message).await,
            Link::Smpp(smpp) => smpp.send(message).await,
            Link::NotYet => SendOutcome::Refused {
                status: herald_core::session::MessageStatus::Failed,
                reason: CANNOT_SEND.into(),
            },
        }
    }

    /// The names of the webhooks a call asks for its first turn on and
    /// reports its progress to.
    pub fn call_webhooks(&self) -> (&'static str, &'static str) {
        match self {
            Link::Twilio(_) => ("voice", "voice_status"),
            Link::Vonage(_) | Link::WhatsappCloud(_) | Link::Smpp(_) | Link::NotYet => {
                ("answer", "event")
            }
        }
    }

    /// Places a call.
    pub async fn create_call(&self, call: &NewCall) -> CallOutcome {
        match self {
            Link::Vonage(vonage) => vonage.create_call(call).await,
            Link::Twilio(twilio) => twilio.create_call(call).await,
            Link::WhatsappCloud(_) | Link::Smpp(_) | Link::NotYet => CallOutcome::Refused {
                reason: CANNOT_CALL.into(),
            },
        }
    }

    /// A turn of the call `call_id` in the provider's own form: what its
    /// answer and input webhooks answer with, and what the state keeps.
    pub fn render(&self, turn: &CallTurn, call_id: &str, voice: &Voice) -> Value {
        match self {
            Link::Vonage(_) => serde_json::to_value(vonage::voice::ncco(turn, call_id, voice))
                .expect("NCCO serialises"),
            Link::Twilio(twilio) => {
                Value::String(twilio::voice::twiml(turn, &twilio.settings.voice))
            }
            Link::WhatsappCloud(_) | Link::Smpp(_) | Link::NotYet => Value::Null,
        }
    }

    /// What a voice webhook answers when the flow's next turn is not ready
    /// in time (CONTRACT §11.4): a short pause, then a fetch of `next_url`.
    pub fn hold_on(&self, next_url: String) -> Value {
        match self {
            Link::Vonage(_) => serde_json::to_value(vonage::voice::Ncco::hold_on(next_url))
                .expect("NCCO serialises"),
            Link::Twilio(_) => Value::String(twilio::voice::hold_on(&next_url)),
            Link::WhatsappCloud(_) | Link::Smpp(_) | Link::NotYet => Value::Null,
        }
    }

    /// Gives a live call a turn `render` made, replacing what it is doing;
    /// a turn with nothing in it hangs up. The operation's name, for the
    /// metrics, and what came of it.
    pub async fn push_turn(&self, call_id: &str, rendered: &Value) -> (&'static str, CallOutcome) {
        match self {
            Link::Vonage(vonage) => match rendered.as_array() {
                Some(actions) if actions.is_empty() => (
                    "hang_up",
                    vonage
                        .update_call(call_id, &vonage::voice::hangup_body())
                        .await,
                ),
                _ => {
                    let body = serde_json::json!({"action": "transfer",
                        "destination": {"type": "ncco", "ncco": rendered}});
                    ("transfer", vonage.update_call(call_id, &body).await)
                }
            },
            Link::Twilio(twilio) => match rendered.as_str() {
                Some(twiml) if twiml != twilio::voice::HANG_UP => {
                    let form = vec![("Twiml".to_owned(), twiml.to_owned())];
                    ("transfer", twilio.update_call(call_id, &form).await)
                }
                _ => ("hang_up", self.hang_up(call_id).await),
            },
            Link::WhatsappCloud(_) | Link::Smpp(_) | Link::NotYet => (
                "transfer",
                CallOutcome::Refused {
                    reason: CANNOT_CALL.into(),
                },
            ),
        }
    }

    /// Hangs up a live call.
    pub async fn hang_up(&self, call_id: &str) -> CallOutcome {
        match self {
            Link::Vonage(vonage) => {
                vonage
                    .update_call(call_id, &vonage::voice::hangup_body())
                    .await
            }
            Link::Twilio(twilio) => {
                let form = vec![("Status".to_owned(), "completed".to_owned())];
                twilio.update_call(call_id, &form).await
            }
            Link::WhatsappCloud(_) | Link::Smpp(_) | Link::NotYet => CallOutcome::Refused {
                reason: CANNOT_CALL.into(),
            },
        }
    }
}

/// A connection opened: its record (without the sealed bytes) and its
/// provider's client.
pub struct Opened {
    pub id: ConnectionId,
    pub account_id: herald_core::AccountId,
    pub provider: ProviderKind,
    pub link: Link,
    /// The pace of its sends.
    pub pace: Pace,
    /// The pace of the calls it places.
    pub call_pace: Pace,
    /// How its calls speak (the `language` and `style` settings).
    pub voice: Voice,
    /// What its calls do when an answering machine picks up, unless a
    /// trigger asks to hang up (the `machine_detection` setting).
    pub machine_detection: Option<MachineDetection>,
}

/// The pace a connection's requests of one kind keep, so that the
/// provider need not refuse them: at most `rate` a second. Each server
/// spaces its own requests evenly (one every `1/rate` s, in the order they
/// ask); with several servers, the rate limiter they share (Redis) also
/// admits at most `rate` in any one second between them all. A rate under
/// one a second is kept by each server for itself.
pub struct Pace {
    interval: Duration,
    next: Mutex<tokio::time::Instant>,
    /// The limiter's key and whole rate, for the pace between servers.
    shared: Option<(String, u32)>,
}

impl Pace {
    /// A pace of `rate` a second for the requests `key` names.
    pub fn per_second(key: String, rate: f64) -> Pace {
        Pace {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(tokio::time::Instant::now()),
            shared: (rate >= 1.0).then(|| (key, rate.min(f64::from(u32::MAX)) as u32)),
        }
    }

    /// Waits for this request's turn: this server's, then the
    /// connection's among all servers. A limiter that cannot be reached
    /// leaves this server's own pace to keep.
    pub async fn wait(&self, limiter: &dyn RateLimiter) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
        let Some((key, rate)) = &self.shared else {
            return;
        };
        loop {
            match limiter.acquire(key, *rate).await {
                Ok(Decision::Admitted(_)) => return,
                Ok(Decision::Limited { retry_after }) => tokio::time::sleep(retry_after).await,
                Err(e) => {
                    tracing::warn!(error = %e, "a connection's pace is kept by this server alone");
                    return;
                }
            }
        }
    }
}

/// The messages a second a Vonage connection sends at most (from all
/// servers together), unless its `messages_per_second` setting says otherwise:
/// Vonage's documented limit on its APIs' requests other than call
/// creation (CHANNELS §3).
const VONAGE_MESSAGES_PER_SECOND: f64 = 15.0;
/// The calls a second a Vonage connection places at most (from all servers
/// together), unless its `calls_per_second` setting says otherwise: Vonage's
/// default limit on call creation (CHANNELS §3).
const VONAGE_CALLS_PER_SECOND: f64 = 3.0;

/// A bind kept, and when its connection last changed.
type KeptBind = (chrono::DateTime<chrono::Utc>, Arc<Smpp>);

/// The connections opened so far, kept while they do not change: a
/// webhook or a send must not unseal credentials and parse a key each
/// time. A change through this server's API forgets its connection at
/// once; one made elsewhere, within a refresh of the revisions.
#[derive(Default)]
pub struct Providers {
    opened: Mutex<HashMap<ConnectionId, Arc<Opened>>>,
    seen: AtomicI64,
    /// The binds to SMSCs, kept while their connection does not change
    /// (by when it last changed): forgetting an opened connection must
    /// not drop a bind, and the receipts an SMSC is about to send on it.
    binds: Mutex<HashMap<ConnectionId, KeptBind>>,
}

impl Providers {
    /// The connection, opened; `None` if it does not exist.
    pub async fn get(
        &self,
        config: &Config,
        store: &dyn Store,
        id: &ConnectionId,
    ) -> anyhow::Result<Option<Arc<Opened>>> {
        if let Some(opened) = self
            .opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(Some(opened.clone()));
        }
        let Some(record) = store.connection_for_work(id).await? else {
            return Ok(None);
        };
        let mut opened = open(config, &record)?;
        if let Link::Smpp(smpp) = &mut opened.link {
            *smpp = self.bind_of(&record, smpp.clone());
        }
        let opened = Arc::new(opened);
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), opened.clone());
        Ok(Some(opened))
    }

    /// The bind kept for the connection as `record` has it; `fresh` (not
    /// yet started) if there is none, or the connection changed since.
    fn bind_of(&self, record: &ConnectionRecord, fresh: Arc<Smpp>) -> Arc<Smpp> {
        let mut binds = self.binds.lock().unwrap_or_else(|e| e.into_inner());
        match binds.get(&record.id) {
            Some((at, kept)) if *at == record.updated_at => kept.clone(),
            _ => {
                // A bind made with what the connection held before goes
                // (unbinding once the sessions using it let it go).
                binds.insert(record.id.clone(), (record.updated_at, fresh.clone()));
                fresh
            }
        }
    }

    /// Lets the bind of a deleted connection go.
    pub fn drop_bind(&self, id: &ConnectionId) {
        self.binds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Every bind kept, to unbind them at shutdown.
    pub fn binds(&self) -> Vec<Arc<Smpp>> {
        self.binds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(_, smpp)| smpp.clone())
            .collect()
    }

    pub fn forget(&self, id: &ConnectionId) {
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Forgets every connection when the store's revision of them moved.
    pub fn saw(&self, revision: i64) {
        if self.seen.swap(revision, Ordering::Relaxed) != revision {
            self.opened
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }
}

impl Opened {
    /// Asks the provider whether the credentials work (CONTRACT §10.2); the
    /// detail is fit to show the account.
    pub async fn check(&self) -> (bool, String) {
        match &self.link {
            Link::Vonage(vonage) => vonage.check().await,
            Link::Twilio(twilio) => twilio.check().await,
            Link::WhatsappCloud(whatsapp) => whatsapp.check().await,
            Link::Smpp(smpp) => smpp.check().await,
            Link::NotYet => (
                false,
                format!("this version of herald cannot reach {} yet", self.provider),
            ),
        }
    }
}

/// Seals a connection's credentials under its id.
pub fn seal(sealer: &Sealer, id: &ConnectionId, credentials: &Credentials) -> Vec<u8> {
    sealer.seal(id.as_str(), &credentials.to_stored())
}

/// The messages a second a Twilio connection sends at most, unless its
/// `messages_per_second` setting says otherwise. Twilio queues what an
/// account sends faster than its numbers' rates (CHANNELS §6); this keeps
/// that queue short.
const TWILIO_MESSAGES_PER_SECOND: f64 = 10.0;
/// The calls a second a Twilio connection places at most, unless its
/// `calls_per_second` setting says otherwise: Twilio's default limit on
/// an account's call creation (CHANNELS §6).
const TWILIO_CALLS_PER_SECOND: f64 = 1.0;

/// The messages a second a WhatsApp Cloud connection sends at most, unless
/// its `messages_per_second` setting says otherwise: the Cloud API's
/// default throughput of a business number (Meta raises it to 1 000 for
/// numbers that qualify).
const WHATSAPP_MESSAGES_PER_SECOND: f64 = 80.0;

/// The messages a second an SMPP connection sends at most (from all
/// servers together), unless its `per_second` setting says otherwise:
/// SMSCs' throughput is agreed account by account; this is a rate most
/// take without throttling, and `per_second` raises it.
const SMPP_MESSAGES_PER_SECOND: f64 = 50.0;

/// The rate limiter's key of a connection's requests of one kind: apart
/// from every agent's key.
fn pace_key(connection: &ConnectionId, kind: &str) -> String {
    format!("pace:{connection}:{kind}")
}

/// Unseals a stored connection's credentials.
pub fn unseal(
    sealer: Option<&Sealer>,
    record: &ConnectionRecord,
) -> Result<Credentials, OpenError> {
    let sealer = sealer.ok_or(OpenError::NoKey)?;
    let plain = sealer
        .open(record.id.as_str(), &record.sealed)
        .map_err(|_| OpenError::WrongKey(record.id.clone()))?;
    Credentials::from_stored(&plain).map_err(|e| OpenError::Unreadable(record.id.clone(), e))
}

/// Opens a stored connection into its provider's client.
pub fn open(config: &Config, record: &ConnectionRecord) -> Result<Opened, OpenError> {
    let unreadable = |why: String| OpenError::Unreadable(record.id.clone(), why);
    let provider: ProviderKind = record.provider.parse().map_err(unreadable)?;
    let credentials = unseal(config.secret_key.as_deref(), record)?;
    let setting = |name: &str| record.settings.get(name);
    let rate = |name: &str, default: f64| {
        setting(name)
            .and_then(|v| v.as_f64())
            .filter(|r| r.is_finite() && *r > 0.0)
            .unwrap_or(default)
    };
    let (link, pace, call_pace) = match provider {
        ProviderKind::Vonage => {
            let credentials = VonageCredentials::from_credentials(&credentials)
                .map_err(|e| unreadable(e.to_string()))?;
            (
                Link::Vonage(Box::new(Vonage::new(&config.vonage_api_url, credentials))),
                Pace::per_second(
                    pace_key(&record.id, "messages"),
                    rate("messages_per_second", VONAGE_MESSAGES_PER_SECOND),
                ),
                Pace::per_second(
                    pace_key(&record.id, "calls"),
                    rate("calls_per_second", VONAGE_CALLS_PER_SECOND),
                ),
            )
        }
        ProviderKind::Twilio => {
            let credentials = TwilioCredentials::from_credentials(&credentials)
                .map_err(|e| unreadable(e.to_string()))?;
            let text = |name: &str| setting(name).and_then(|v| v.as_str()).map(str::to_owned);
            let settings = TwilioSettings {
                content_sids: setting("content_sids")
                    .and_then(|v| v.as_object())
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect(),
                voice: twilio::voice::Voice {
                    language: text("language"),
                    voice: text("voice"),
                },
            };
            (
                Link::Twilio(Box::new(Twilio::new(
                    &config.twilio_api_url,
                    credentials,
                    settings,
                ))),
                Pace::per_second(
                    pace_key(&record.id, "messages"),
                    rate("messages_per_second", TWILIO_MESSAGES_PER_SECOND),
                ),
                Pace::per_second(
                    pace_key(&record.id, "calls"),
                    rate("calls_per_second", TWILIO_CALLS_PER_SECOND),
                ),
            )
        }
        ProviderKind::WhatsappCloud => {
            let credentials = WhatsappCredentials::from_credentials(&credentials)
                .map_err(|e| unreadable(e.to_string()))?;
            (
                Link::WhatsappCloud(Box::new(WhatsappCloud::new(
                    &config.whatsapp_api_url,
                    credentials,
                ))),
                Pace::per_second(
                    pace_key(&record.id, "messages"),
                    rate("messages_per_second", WHATSAPP_MESSAGES_PER_SECOND),
                ),
                Pace::per_second(pace_key(&record.id, "calls"), 1.0),
            )
        }
        ProviderKind::Smpp => {
            let credentials = SmppCredentials::from_credentials(&credentials)
                .map_err(|e| unreadable(e.to_string()))?;
            let settings = SmppSettings {
                label: record.id.to_string(),
                allow_private: config.allow_private_smsc,
                ..SmppSettings::from_settings(&record.settings)
            };
            (
                Link::Smpp(Arc::new(Smpp::new(settings, credentials))),
                Pace::per_second(
                    pace_key(&record.id, "messages"),
                    rate("per_second", SMPP_MESSAGES_PER_SECOND),
                ),
                Pace::per_second(pace_key(&record.id, "calls"), 1.0),
            )
        }
        _ => (
            Link::NotYet,
            Pace::per_second(pace_key(&record.id, "messages"), 1.0),
            Pace::per_second(pace_key(&record.id, "calls"), 1.0),
        ),
    };
    let voice = Voice {
        language: setting("language")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        style: setting("style")
            .and_then(|v| v.as_u64())
            .and_then(|n| u32::try_from(n).ok()),
    };
    let machine_detection = match setting("machine_detection").and_then(|v| v.as_str()) {
        Some("continue") => Some(MachineDetection::Continue),
        Some("hangup") => Some(MachineDetection::Hangup),
        _ => None,
    };
    Ok(Opened {
        id: record.id.clone(),
        account_id: record.account_id,
        provider,
        link,
        pace,
        call_pace,
        voice,
        machine_detection,
    })
}

/// Checks at start-up that the key opens every stored connection, so that
/// a missing or wrong key stops the server now, with a message saying what
/// to set, rather than failing every session later.
pub async fn check_key(config: &Config, store: &dyn Store) -> anyhow::Result<()> {
    for record in store.all_connections().await? {
        unseal(config.secret_key.as_deref(), &record)?;
    }
    Ok(())
}

/// The URLs a provider is to call for a connection, by webhook name
/// (CONTRACT §10.5): `{public_url}/providers/{id}/{name}`. Empty without a
/// public URL.
pub fn webhooks(
    public_url: Option<&str>,
    id: &ConnectionId,
    provider: ProviderKind,
) -> BTreeMap<String, String> {
    let Some(base) = public_url else {
        return BTreeMap::new();
    };
    provider
        .webhooks()
        .iter()
        .map(|name| (name.to_string(), format!("{base}/providers/{id}/{name}")))
        .collect()
}
