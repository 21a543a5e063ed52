//! SMS over SMPP 3.4 (CHANNELS §7): herald as an ESME holding one
//! transceiver bind to the connection's SMSC, shared by every session on
//! the connection.
//!
//! - [`pdu`]: the PDUs on the wire; [`text`]: GSM 7-bit and UCS-2, long
//!   messages cut in parts; [`receipt`]: what a `deliver_sm` reports.
//! - [`Smpp`]: the bind. A task of its own connects, binds, answers the
//!   SMSC, sends `enquire_link`, and binds again with backoff when the
//!   bind is lost; sends wait for their answers by sequence number, at
//!   most `window` at once. Each `deliver_sm` is handed on as a
//!   [`Report`] and answered once whoever took it says it is kept.
//!
//! The PDU codec is herald's own: SMPP 3.4's seven request/response pairs
//! a transceiver needs are a few hundred lines, tested here without a
//! network and in `tests/api/smpp.rs` against an SMSC herald did not
//! write (the npm package `smpp`); `rusmpp` models SMPP 5 in full and its
//! client brings a TLS stack of its own.

pub mod pdu;
pub mod receipt;
pub mod text;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::net::is_internal;
use herald_core::secret::Secret;
use herald_core::session::MessageStatus;
use herald_core::Channel;
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::adapter::{Content, OutboundMessage, SendOutcome};
use crate::connection::{BadConnection, Credentials};
use pdu::{Address, Body, Malformed, Pdu, Sm, Tlv};
pub use receipt::{Delivered, Receipt};

/// The SMSC's port when the settings name none: SMPP's registered port.
const DEFAULT_PORT: u16 = 2775;
/// Requests outstanding at once when `window` says nothing.
const DEFAULT_WINDOW: usize = 10;
/// `enquire_link` every this often when `enquire_link_secs` says nothing
/// (CHANNELS §7: 30–60 s).
const DEFAULT_ENQUIRE_LINK: Duration = Duration::from_secs(30);
/// How long a connect, a bind or a request may take for an answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a send waits for a bind that is being made before it reports
/// the SMSC unavailable (the session driver tries again later).
const BIND_WAIT: Duration = Duration::from_secs(5);
/// The first pause before binding again, doubled each time up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The pause after the SMSC refused the bind itself (a wrong password),
/// doubled each time up to [`MAX_REFUSED_BACKOFF`]: an SMSC may lock an
/// account that keeps binding with a wrong password, and mending the
/// connection makes a bind of its own at once.
const REFUSED_BACKOFF: Duration = Duration::from_secs(60);
const MAX_REFUSED_BACKOFF: Duration = Duration::from_secs(600);
/// How long the SMSC has to answer `unbind` before the socket is closed.
const UNBIND_WAIT: Duration = Duration::from_secs(2);
/// How long a report handed on may take to be kept before the
/// `deliver_sm` is answered with an error (the SMSC sends it again).
const REPORT_WAIT: Duration = Duration::from_secs(30);
/// Reports held for the server at most; past that a `deliver_sm` is
/// answered `ESME_RMSGQFUL` and the SMSC sends it again later.
const REPORT_QUEUE: usize = 1024;
/// How often a part of a long message whose first part went is tried
/// again while the SMSC throttles it or the bind is down: the message
/// cannot be sent again whole without doubling what went.
const PART_TRIES: u32 = 20;
/// The ids of long messages' later parts remembered, so that their
/// receipts are answered at once rather than looked up in vain.
const LATER_PARTS_KEPT: usize = 4096;
/// The ids the SMSC gave messages on this bind remembered, most recent
/// last, so that a receipt's id is matched to the form it was given in
/// rather than to another message's id in the other base.
const GIVEN_KEPT: usize = 1 << 17;

/// How a text longer than a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongMessages {
    /// Parts with a concatenation header (`esm_class` 0x40).
    Udh,
    /// One `submit_sm` with the whole text in `message_payload`.
    Payload,
}

/// A connection's settings (CONTRACT §10.1a), read.
#[derive(Debug, Clone)]
pub struct SmppSettings {
    /// What the bind's log lines name it by (its connection's id).
    pub label: String,
    pub host: Option<String>,
    pub port: u16,
    pub system_type: String,
    pub tls: bool,
    pub source_ton: Option<u8>,
    pub source_npi: Option<u8>,
    pub window: usize,
    pub enquire_link: Duration,
    pub long_messages: LongMessages,
    /// Bind to an SMSC at a loopback or private address (the operator's
    /// choice, never an account's).
    pub allow_private: bool,
}

impl SmppSettings {
    /// The settings of a checked connection; what is absent or out of
    /// range takes its default.
    pub fn from_settings(settings: &Map<String, Value>) -> SmppSettings {
        let text = |name: &str| {
            settings
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let count = |name: &str| settings.get(name).and_then(Value::as_u64);
        SmppSettings {
            label: String::new(),
            allow_private: false,
            host: text("host"),
            port: count("port")
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .unwrap_or(DEFAULT_PORT),
            system_type: text("system_type").unwrap_or_default(),
            tls: settings
                .get("tls")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            source_ton: count("source_ton").and_then(|n| u8::try_from(n).ok()),
            source_npi: count("source_npi").and_then(|n| u8::try_from(n).ok()),
            window: count("window")
                .map(|n| n.clamp(1, 1000) as usize)
                .unwrap_or(DEFAULT_WINDOW),
            enquire_link: count("enquire_link_secs")
                .filter(|n| *n > 0)
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_ENQUIRE_LINK),
            long_messages: match text("long_messages").as_deref() {
                Some("payload") => LongMessages::Payload,
                _ => LongMessages::Udh,
            },
        }
    }
}

/// A connection's credentials: the ESME's system id and password.
#[derive(Debug, Clone)]
pub struct SmppCredentials {
    pub system_id: Secret<String>,
    pub password: Secret<String>,
}

impl SmppCredentials {
    pub fn from_credentials(credentials: &Credentials) -> Result<Self, BadConnection> {
        let get = |name: &str| {
            credentials
                .get(name)
                .map(|v| Secret::new(v.to_owned()))
                .ok_or_else(|| BadConnection(format!("credentials.{name} is missing")))
        };
        // SMPP 3.4 bounds them (15 and 8 characters), but SMSCs that take
        // longer ones exist: the SMSC is the judge, at the bind.
        Ok(SmppCredentials {
            system_id: get("system_id")?,
            password: get("password")?,
        })
    }
}

/// A `deliver_sm`, handed on: what it reports, and where to say it is
/// kept (`true`) or could not be (`false`: the SMSC is asked to send it
/// again). Dropping `kept` counts as `false`.
#[derive(Debug)]
pub struct Report {
    pub delivered: Delivered,
    pub kept: oneshot::Sender<bool>,
}

/// The bind's state, as sends see it.
#[derive(Debug, Clone)]
enum Bound {
    /// Not bound (yet, or any more): why. `refused` when the SMSC refused
    /// the bind itself (a wrong password): no send can go until the
    /// connection is mended.
    Down { reason: String, refused: bool },
    /// Bound: where the PDUs to send go.
    Up(mpsc::UnboundedSender<Vec<u8>>),
}

/// What the bind's task and the sends share.
struct Shared {
    settings: SmppSettings,
    credentials: SmppCredentials,
    bound: watch::Sender<Bound>,
    /// Requests awaiting their answer, by sequence number.
    pending: Mutex<HashMap<u32, oneshot::Sender<Pdu>>>,
    sequence: AtomicU32,
    window: Semaphore,
    reports: mpsc::Sender<Report>,
    /// The reference of the next long message's parts.
    reference: AtomicU8,
    /// The SMSC's ids of the parts of long messages after their first
    /// (the first's id is the message's), most recent last: their
    /// receipts are answered at once and go no further.
    later_parts: Mutex<std::collections::VecDeque<String>>,
    /// The ids the SMSC gave this bind's messages (canonical), in order
    /// and for lookup.
    given: Mutex<(
        std::collections::VecDeque<String>,
        std::collections::HashSet<String>,
    )>,
}

impl Shared {
    fn next_sequence(&self) -> u32 {
        // 0x00000001 to 0x7FFFFFFF (SMPP 3.4 §5.1.4).
        (self.sequence.fetch_add(1, Ordering::Relaxed) % 0x7FFF_FFFF) + 1
    }

    /// Remembers the id of a long message's later part.
    fn later_part(&self, id: String) {
        let mut parts = self.later_parts.lock().unwrap_or_else(|e| e.into_inner());
        if parts.len() >= LATER_PARTS_KEPT {
            parts.pop_front();
        }
        parts.push_back(receipt::canonical(&id));
    }

    /// Remembers an id the SMSC gave a message.
    fn given(&self, id: &str) {
        let mut given = self.given.lock().unwrap_or_else(|e| e.into_inner());
        let (order, set) = &mut *given;
        if order.len() >= GIVEN_KEPT {
            if let Some(oldest) = order.pop_front() {
                set.remove(&oldest);
            }
        }
        let id = receipt::canonical(id);
        if set.insert(id.clone()) {
            order.push_back(id);
        }
    }

    /// Whether a receipt is of a long message's later part.
    fn is_later_part(&self, delivered: &Delivered) -> bool {
        let Delivered::Receipt(receipt) = delivered else {
            return false;
        };
        let parts = self.later_parts.lock().unwrap_or_else(|e| e.into_inner());
        receipt::id_forms(&receipt.id)
            .iter()
            .any(|form| parts.contains(form))
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<Pdu>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One SMPP connection's bind, and its sends.
pub struct Smpp {
    shared: Arc<Shared>,
    started: AtomicBool,
    /// The bind's task, once started.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    reports: Mutex<Option<mpsc::Receiver<Report>>>,
    /// Set when the bind is no longer wanted: its task unbinds and ends.
    stop: watch::Sender<bool>,
}

impl Drop for Smpp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Why the SMSC did not bind herald.
struct NotBound {
    reason: String,
    /// The SMSC refused the bind (rather than not being reached).
    refused: bool,
}

impl Smpp {
    /// The bind of a connection; it is made once [`Smpp::start`] or a send
    /// asks for it.
    pub fn new(settings: SmppSettings, credentials: SmppCredentials) -> Smpp {
        let (reports, receiver) = mpsc::channel(REPORT_QUEUE);
        let window = Semaphore::new(settings.window);
        let (bound, _) = watch::channel(Bound::Down {
            reason: "herald has not bound to the SMSC yet".into(),
            refused: false,
        });
        Smpp {
            shared: Arc::new(Shared {
                settings,
                credentials,
                bound,
                pending: Mutex::new(HashMap::new()),
                sequence: AtomicU32::new(0),
                window,
                reports,
                reference: AtomicU8::new(0),
                later_parts: Mutex::new(std::collections::VecDeque::new()),
                given: Mutex::default(),
            }),
            started: AtomicBool::new(false),
            task: Mutex::new(None),
            reports: Mutex::new(Some(receiver)),
            stop: watch::channel(false).0,
        }
    }

    /// Starts holding the bind, once.
    pub fn start(&self) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let task = tokio::spawn(hold(self.shared.clone(), self.stop.subscribe()));
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// Unbinds (cleanly, if the SMSC answers in time) and stops binding:
    /// for a server that shuts down.
    pub async fn close(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(UNBIND_WAIT * 2, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }

    /// The form, of those a receipt's id may have had ([`receipt::id_forms`]),
    /// in which the SMSC gave the id to a message sent on this bind
    /// (canonical); `None` for an id it gave none of them recently (sent
    /// by another server, or before this one started). A receipt that
    /// comes before its message's id is stored must not be matched to
    /// another message whose id is the same number in the other base.
    pub fn given_form(&self, id: &str) -> Option<String> {
        let given = self.shared.given.lock().unwrap_or_else(|e| e.into_inner());
        receipt::id_forms(id)
            .into_iter()
            .find(|form| given.1.contains(form))
    }

    /// What the SMSC delivers over the bind: for whoever keeps it, once.
    pub fn take_reports(&self) -> Option<mpsc::Receiver<Report>> {
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Binds once, apart from the bind sends use, and unbinds: whether the
    /// SMSC takes the credentials (CONTRACT §10.2). The detail never
    /// quotes them.
    pub async fn check(&self) -> (bool, String) {
        let settings = &self.shared.settings;
        let Some(host) = &settings.host else {
            return (false, "settings.host must name the SMSC".into());
        };
        match connect(&self.shared).await {
            Ok(mut stream) => {
                let unbind = Pdu::new(self.shared.next_sequence(), Body::Unbind).encode();
                let _ = stream.write_all(&unbind).await;
                let _ = tokio::time::timeout(UNBIND_WAIT, read_pdu(&mut stream)).await;
                (
                    true,
                    format!("herald bound to the SMSC at {host}:{}", settings.port),
                )
            }
            Err(not) => (false, not.reason),
        }
    }

    /// Sends one SMS: its parts' `submit_sm`s over the bind, receipts
    /// asked for. The SMSC's id of the first part is the message's.
    pub async fn send(&self, message: &OutboundMessage) -> SendOutcome {
        let Content::Text(text) = &message.content else {
            return refused(MessageStatus::Failed, "an SMPP connection sends text only");
        };
        if message.channel != Channel::Sms {
            return refused(MessageStatus::Failed, "an SMPP connection sends SMS only");
        }
        self.start();
        if let Err(outcome) = self.wait_for_bind().await {
            return outcome;
        }
        let bodies = self.submits(message, text);
        let total = bodies.len();
        let mut first_id = None;
        for (i, sm) in bodies.into_iter().enumerate() {
            if i == 0 {
                match self.submit(sm).await {
                    Ok(id) => first_id = Some(id),
                    Err(outcome) => return outcome,
                }
                continue;
            }
            // The first part went: this one must go too, or the message
            // ends failed (sending it all again would double the first).
            let mut tries = 0;
            loop {
                tries += 1;
                match self.submit(sm.clone()).await {
                    Ok(id) => {
                        self.shared.later_part(id);
                        break;
                    }
                    Err(SendOutcome::Refused { status, reason }) => {
                        return SendOutcome::Refused {
                            status,
                            reason: format!("part {} of {total}: {reason}", i + 1),
                        }
                    }
                    Err(other) if tries >= PART_TRIES => {
                        return refused(
                            MessageStatus::Failed,
                            &format!(
                                "part {} of {total} could not be sent after the first had \
                                 gone: {other:?}",
                                i + 1
                            ),
                        );
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100 << tries.min(5))).await;
                        let _ = self.wait_for_bind().await;
                    }
                }
            }
        }
        SendOutcome::Accepted {
            id: receipt::canonical(&first_id.unwrap_or_default()),
        }
    }

    /// Waits (a little) for the bind; what to answer if it is not made.
    async fn wait_for_bind(&self) -> Result<(), SendOutcome> {
        let mut bound = self.shared.bound.subscribe();
        let waited = tokio::time::timeout(
            BIND_WAIT,
            bound.wait_for(|b| matches!(b, Bound::Up(_) | Bound::Down { refused: true, .. })),
        )
        .await;
        let state = match waited {
            Ok(Ok(state)) => state.clone(),
            _ => self.shared.bound.borrow().clone(),
        };
        match state {
            Bound::Up(_) => Ok(()),
            Bound::Down {
                reason,
                refused: true,
            } => Err(refused(MessageStatus::Failed, &reason)),
            Bound::Down { reason, .. } => Err(SendOutcome::Unavailable { reason }),
        }
    }

    /// The `submit_sm`s of a message: one, or one a part.
    fn submits(&self, message: &OutboundMessage, text: &str) -> Vec<Sm> {
        let settings = &self.shared.settings;
        let from = message.from.trim_start_matches('+');
        let numeric = !from.is_empty() && from.bytes().all(|b| b.is_ascii_digit());
        let source = Address {
            // International 1/1 for a number, alphanumeric 5/0 for a name,
            // unless the connection says otherwise.
            ton: settings.source_ton.unwrap_or(if numeric { 1 } else { 5 }),
            npi: settings.source_npi.unwrap_or(if numeric { 1 } else { 0 }),
            addr: from.to_owned(),
        };
        let destination = Address {
            ton: 1,
            npi: 1,
            addr: message.to.trim_start_matches('+').to_owned(),
        };
        let (coding, parts) = text::split(text);
        let base = Sm {
            service_type: String::new(),
            source,
            destination,
            registered_delivery: 0x01,
            data_coding: coding.data_coding(),
            ..Sm::default()
        };
        if parts.len() == 1 {
            return vec![Sm {
                short_message: parts.into_iter().next().unwrap_or_default(),
                ..base
            }];
        }
        match settings.long_messages {
            LongMessages::Payload => vec![Sm {
                tlvs: vec![Tlv {
                    tag: pdu::TLV_MESSAGE_PAYLOAD,
                    value: text::encode(text).1,
                }],
                ..base
            }],
            LongMessages::Udh => {
                let reference = self.shared.reference.fetch_add(1, Ordering::Relaxed);
                let total = parts.len().min(255) as u8;
                parts
                    .into_iter()
                    .take(255)
                    .enumerate()
                    .map(|(i, part)| Sm {
                        esm_class: 0x40,
                        short_message: [&text::udh(reference, total, i as u8 + 1)[..], &part]
                            .concat(),
                        ..base.clone()
                    })
                    .collect()
            }
        }
    }

    /// One `submit_sm` and its answer: the SMSC's id, or what to report.
    async fn submit(&self, sm: Sm) -> Result<String, SendOutcome> {
        let answer = request(&self.shared, Body::SubmitSm(Box::new(sm)))
            .await
            .map_err(|reason| SendOutcome::Unavailable { reason })?;
        match (answer.status, answer.body) {
            (pdu::ESME_ROK, Body::SubmitSmResp { message_id }) if !message_id.is_empty() => {
                Ok(message_id)
            }
            (pdu::ESME_ROK, _) => Err(SendOutcome::Unavailable {
                reason: "the SMSC answered the message without an id".into(),
            }),
            (pdu::ESME_RTHROTTLED | pdu::ESME_RMSGQFUL, _) => {
                Err(SendOutcome::Throttled { retry_after: None })
            }
            (status, _) => Err(refused(
                MessageStatus::Rejected,
                &format!("the SMSC refused the message: {}", pdu::status_name(status)),
            )),
        }
    }
}

fn refused(status: MessageStatus, reason: &str) -> SendOutcome {
    SendOutcome::Refused {
        status,
        reason: reason.to_owned(),
    }
}

/// Sends a request over the bind and waits for its answer, holding a
/// place in the window; why not, if it got none.
async fn request(shared: &Shared, body: Body) -> Result<Pdu, String> {
    let _place = shared
        .window
        .acquire()
        .await
        .map_err(|_| "the bind is closed".to_owned())?;
    let sequence = shared.next_sequence();
    let (tx, rx) = oneshot::channel();
    shared.pending().insert(sequence, tx);
    let sent = match &*shared.bound.borrow() {
        Bound::Up(out) => out.send(Pdu::new(sequence, body).encode()).is_ok(),
        Bound::Down { .. } => false,
    };
    if !sent {
        shared.pending().remove(&sequence);
        return Err("the bind to the SMSC is down".into());
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err("the bind to the SMSC was lost before it answered".into()),
        Err(_) => {
            shared.pending().remove(&sequence);
            Err("the SMSC did not answer in time".into())
        }
    }
}

/// Reads one PDU off a stream; `Ok(Err)` for one that is not SMPP (with
/// a length that cannot be read past, the stream is lost).
async fn read_pdu<R: AsyncReadExt + Unpin>(
    stream: &mut R,
) -> std::io::Result<Result<Pdu, Malformed>> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let length = match Pdu::length(&header).expect("four bytes") {
        Ok(length) => length as usize,
        Err(malformed) => return Ok(Err(malformed)),
    };
    let mut bytes = vec![0u8; length];
    bytes[..4].copy_from_slice(&header);
    stream.read_exact(&mut bytes[4..]).await?;
    Ok(Pdu::decode(&bytes))
}

/// Connects and binds as a transceiver.
async fn connect(shared: &Shared) -> Result<TcpStream, NotBound> {
    let settings = &shared.settings;
    let down = |reason: String| NotBound {
        reason,
        refused: false,
    };
    let Some(host) = &settings.host else {
        return Err(NotBound {
            reason: "the connection's settings.host must name the SMSC".into(),
            refused: true,
        });
    };
    if settings.tls {
        return Err(NotBound {
            reason: "this version of herald binds to an SMSC without TLS only: set \
                     settings.tls to false (or reach the SMSC through a TLS tunnel)"
                .into(),
            refused: true,
        });
    }
    let at = format!("{host}:{}", settings.port);
    // The account chose the host: unless the operator allows it, herald
    // connects to no address inside its own network, whatever the name
    // resolves to, and connects to the addresses it checked.
    let addresses: Vec<std::net::SocketAddr> =
        match tokio::time::timeout(ANSWER_TIMEOUT, tokio::net::lookup_host(&at)).await {
            Ok(Ok(addresses)) => addresses.collect(),
            Ok(Err(e)) => {
                return Err(down(format!(
                    "the SMSC's host {host} could not be resolved: {e}"
                )))
            }
            Err(_) => {
                return Err(down(format!(
                    "the SMSC's host {host} could not be resolved in time"
                )))
            }
        };
    if !settings.allow_private {
        if let Some(internal) = addresses.iter().find(|a| is_internal(a.ip())) {
            return Err(NotBound {
                reason: format!(
                    "the SMSC's host {host} is at {}, an internal address: herald binds to SMSCs \
                     inside its own network only when its operator allows it \
                     (HERALD_ALLOW_PRIVATE_SMSC)",
                    internal.ip()
                ),
                refused: true,
            });
        }
    }
    let mut stream =
        match tokio::time::timeout(ANSWER_TIMEOUT, TcpStream::connect(&addresses[..])).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(down(format!("the SMSC at {at} could not be reached: {e}"))),
            Err(_) => return Err(down(format!("the SMSC at {at} did not answer in time"))),
        };
    let _ = stream.set_nodelay(true);
    let sequence = shared.next_sequence();
    let bind = Pdu::bind(
        sequence,
        shared.credentials.system_id.expose(),
        shared.credentials.password.expose(),
        &settings.system_type,
    );
    if let Err(e) = stream.write_all(&bind.encode()).await {
        return Err(down(format!("the SMSC at {at} closed the connection: {e}")));
    }
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, read_pdu(&mut stream)).await {
        Ok(Ok(Ok(answer))) => answer,
        Ok(Ok(Err(malformed))) => {
            return Err(down(format!(
                "the SMSC at {at} answered the bind with {malformed}"
            )))
        }
        Ok(Err(_)) => {
            return Err(down(format!(
                "the SMSC at {at} closed the connection before answering the bind"
            )))
        }
        Err(_) => {
            return Err(down(format!(
                "the SMSC at {at} did not answer the bind in time"
            )))
        }
    };
    match (answer.status, &answer.body) {
        (pdu::ESME_ROK, Body::BindTransceiverResp { .. }) => Ok(stream),
        (status, Body::BindTransceiverResp { .. } | Body::GenericNack) => {
            let why = match status {
                pdu::ESME_RINVPASWD => ": the password is wrong",
                pdu::ESME_RINVSYSID => ": the system id is not known to it",
                pdu::ESME_RBINDFAIL => ": it refuses these credentials",
                _ => "",
            };
            Err(NotBound {
                reason: format!(
                    "the SMSC at {at} refused herald's bind with {}{why}",
                    pdu::status_name(status)
                ),
                refused: matches!(
                    status,
                    pdu::ESME_RINVPASWD | pdu::ESME_RINVSYSID | pdu::ESME_RBINDFAIL
                ),
            })
        }
        _ => Err(down(format!(
            "the SMSC at {at} answered the bind with something else"
        ))),
    }
}

/// Holds the bind until `stop`: binds, serves, and binds again with
/// backoff when the bind is lost or refused.
async fn hold(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *stop.borrow() {
            return;
        }
        let lost = match connect(&shared).await {
            Ok(stream) => {
                backoff = FIRST_BACKOFF;
                tracing::info!(connection = %shared.settings.label, "bound to the SMSC");
                serve(&shared, stream, &mut stop).await
            }
            Err(not) => not,
        };
        let refused = lost.refused;
        let stopping = *stop.borrow();
        if !stopping {
            tracing::warn!(connection = %shared.settings.label, reason = %lost.reason,
                "the bind to the SMSC is down");
        }
        shared.bound.send_replace(Bound::Down {
            reason: lost.reason,
            refused: lost.refused,
        });
        // Whatever awaited an answer on the lost bind gets none.
        shared.pending().clear();
        if stopping {
            return;
        }
        let pause = if refused {
            backoff.max(REFUSED_BACKOFF)
        } else {
            backoff
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
        backoff = if refused {
            (pause * 2).min(MAX_REFUSED_BACKOFF)
        } else {
            (backoff * 2).min(MAX_BACKOFF)
        };
    }
}

/// Serves a bound connection until it is lost or `stop`; why it ended.
async fn serve(shared: &Shared, stream: TcpStream, stop: &mut watch::Receiver<bool>) -> NotBound {
    let lost = |reason: &str| NotBound {
        reason: reason.to_owned(),
        refused: false,
    };
    let (mut reader, mut writer) = stream.into_split();
    let (out, mut to_write) = mpsc::unbounded_channel::<Vec<u8>>();
    let writing = tokio::spawn(async move {
        while let Some(bytes) = to_write.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    // Reading in a task of its own, so that no PDU is cut when a timer
    // fires (`read_exact` cannot be cancelled halfway).
    let (read_tx, mut read) = mpsc::channel(64);
    let reading = tokio::spawn(async move {
        loop {
            let next = read_pdu(&mut reader).await;
            let end = !matches!(next, Ok(Ok(_)) | Ok(Err(Malformed::Body { .. })));
            if read_tx.send(next).await.is_err() || end {
                break;
            }
        }
    });
    shared.bound.send_replace(Bound::Up(out.clone()));
    let mut ticker = tokio::time::interval(shared.settings.enquire_link);
    ticker.tick().await;
    let mut unanswered_links = 0u32;
    let mut parts = Parts::default();
    // Often enough to hand on a person's message whose parts stopped
    // coming.
    let mut overdue = tokio::time::interval(PARTS_WAIT / 4);
    let write = |pdu: Pdu| {
        let _ = out.send(pdu.encode());
    };
    let ended = loop {
        tokio::select! {
            next = read.recv() => {
                let pdu = match next {
                    Some(Ok(Ok(pdu))) => pdu,
                    Some(Ok(Err(Malformed::Body { command, sequence, why }))) => {
                        tracing::warn!(connection = %shared.settings.label, command, why,
                            "the SMSC sent a PDU herald cannot read");
                        write(Pdu { status: pdu::ESME_RINVCMDLEN, sequence, body: Body::GenericNack });
                        continue;
                    }
                    Some(Ok(Err(malformed @ Malformed::Length(_)))) => {
                        tracing::warn!(connection = %shared.settings.label, %malformed,
                            "the SMSC sent what is not SMPP");
                        write(Pdu { status: pdu::ESME_RINVCMDLEN, sequence: 0, body: Body::GenericNack });
                        break lost("the SMSC sent what is not SMPP");
                    }
                    Some(Err(_)) | None => break lost("the SMSC closed the bind"),
                };
                match pdu.body {
                    Body::DeliverSm(ref sm) => deliver(shared, &mut parts, &out, pdu.sequence, sm),
                    Body::EnquireLink => write(pdu.response(pdu::ESME_ROK).expect("a request")),
                    Body::Unbind => {
                        write(pdu.response(pdu::ESME_ROK).expect("a request"));
                        break lost("the SMSC unbound");
                    }
                    Body::EnquireLinkResp => unanswered_links = 0,
                    Body::Other(id) if id & pdu::GENERIC_NACK == 0 => {
                        write(pdu.response(pdu::ESME_RINVCMDID).expect("a request"));
                    }
                    _ => {
                        // An id is remembered before any receipt read
                        // after it is handed on.
                        if let (pdu::ESME_ROK, Body::SubmitSmResp { message_id }) = (pdu.status, &pdu.body) {
                            if !message_id.is_empty() {
                                shared.given(message_id);
                            }
                        }
                        // An answer: to whichever request has its number.
                        if let Some(waiting) = shared.pending().remove(&pdu.sequence) {
                            let _ = waiting.send(pdu);
                        }
                    }
                }
            }
            _ = overdue.tick() => {
                for (whole, sequences) in parts.overdue() {
                    hand_on(shared, &out, whole, sequences);
                }
            }
            _ = ticker.tick() => {
                if unanswered_links >= 2 {
                    break lost("the SMSC stopped answering enquire_link");
                }
                unanswered_links += 1;
                write(Pdu::new(shared.next_sequence(), Body::EnquireLink));
            }
            _ = stop.changed() => {
                write(Pdu::new(shared.next_sequence(), Body::Unbind));
                // Until the SMSC answers (or a little while), answers to
                // what is under way still land.
                let _ = tokio::time::timeout(UNBIND_WAIT, async {
                    while let Some(Ok(Ok(pdu))) = read.recv().await {
                        match pdu.body {
                            Body::UnbindResp => return,
                            Body::DeliverSm(_) => {
                                // Not taken: the SMSC keeps it for the next bind.
                                write(pdu.response(pdu::ESME_RSYSERR).expect("a request"));
                            }
                            _ => {
                                if let Some(waiting) = shared.pending().remove(&pdu.sequence) {
                                    let _ = waiting.send(pdu);
                                }
                            }
                        }
                    }
                })
                .await;
                break lost("herald unbound");
            }
        }
    };
    shared.bound.send_replace(Bound::Down {
        reason: ended.reason.clone(),
        refused: false,
    });
    drop(out);
    reading.abort();
    // What was written last (an unbind, its answer) goes out; answers of
    // reports still being kept are not waited for on a lost bind.
    let mut writing = writing;
    if tokio::time::timeout(UNBIND_WAIT, &mut writing)
        .await
        .is_err()
    {
        writing.abort();
    }
    ended
}

/// The parts of people's long messages come so far on one bind, by
/// sender, recipient, reference and count: each part's sequence number
/// and text, and when the first came. Their `deliver_sm`s are answered
/// once the whole message is kept (a bind lost first has the SMSC send
/// them all again).
#[derive(Default)]
struct Parts {
    partial: HashMap<(String, String, u16, u8), Partial>,
}

/// What came of a `deliver_sm` taken.
enum Taken {
    /// Not a part: the report as it is.
    Whole(Delivered),
    /// A part, held for the others.
    Held,
    /// The last part: the whole message, and every part's sequence.
    Complete(Delivered, Vec<u32>),
}

struct Partial {
    texts: std::collections::BTreeMap<u8, String>,
    sequences: Vec<u32>,
    since: tokio::time::Instant,
}

/// How long the parts of a person's message are waited for before what
/// came is handed on as it is.
const PARTS_WAIT: Duration = Duration::from_secs(10);

impl Parts {
    /// Takes a `deliver_sm`: a part of a person's message is held until
    /// every part is in.
    fn take(&mut self, sm: &Sm, sequence: u32) -> Taken {
        let delivered = receipt::read(sm);
        let Some((reference, total, seq)) = text::concatenation(sm.esm_class, &sm.short_message)
        else {
            return Taken::Whole(delivered);
        };
        let Delivered::Message { from, to, text } = delivered else {
            return Taken::Whole(delivered);
        };
        let key = (from, to, reference, total);
        let partial = self.partial.entry(key.clone()).or_insert_with(|| Partial {
            texts: Default::default(),
            sequences: vec![],
            since: tokio::time::Instant::now(),
        });
        partial.texts.insert(seq, text);
        partial.sequences.push(sequence);
        if partial.texts.len() < total as usize {
            return Taken::Held;
        }
        let (whole, sequences) = self
            .partial
            .remove(&key)
            .expect("just seen")
            .into_message(key);
        Taken::Complete(whole, sequences)
    }

    /// The messages whose parts have been waited for long enough, each
    /// with what came of it.
    fn overdue(&mut self) -> Vec<(Delivered, Vec<u32>)> {
        let due: Vec<_> = self
            .partial
            .iter()
            .filter(|(_, p)| p.since.elapsed() >= PARTS_WAIT)
            .map(|(k, _)| k.clone())
            .collect();
        due.into_iter()
            .filter_map(|key| {
                let partial = self.partial.remove(&key)?;
                Some(partial.into_message(key))
            })
            .collect()
    }
}

impl Partial {
    fn into_message(self, (from, to, _, _): (String, String, u16, u8)) -> (Delivered, Vec<u32>) {
        let text = self.texts.into_values().collect::<String>();
        (Delivered::Message { from, to, text }, self.sequences)
    }
}

/// Hands a `deliver_sm` on and answers it once it is kept: `ESME_ROK`,
/// or an error the SMSC sends it again after. A part of a person's long
/// message waits for the others.
fn deliver(
    shared: &Shared,
    parts: &mut Parts,
    out: &mpsc::UnboundedSender<Vec<u8>>,
    sequence: u32,
    sm: &Sm,
) {
    match parts.take(sm, sequence) {
        Taken::Whole(delivered) => hand_on(shared, out, delivered, vec![sequence]),
        Taken::Held => {}
        Taken::Complete(whole, sequences) => hand_on(shared, out, whole, sequences),
    }
}

/// Hands a report on and answers the `deliver_sm`s it came in.
fn hand_on(
    shared: &Shared,
    out: &mpsc::UnboundedSender<Vec<u8>>,
    delivered: Delivered,
    sequences: Vec<u32>,
) {
    let (kept, was_kept) = oneshot::channel();
    let report = Report { delivered, kept };
    let answer = move |status| {
        sequences
            .iter()
            .flat_map(|&sequence| {
                Pdu {
                    status,
                    sequence,
                    body: Body::DeliverSmResp,
                }
                .encode()
            })
            .collect::<Vec<u8>>()
    };
    if shared.is_later_part(&report.delivered) {
        let _ = out.send(answer(pdu::ESME_ROK));
        return;
    }
    if shared.reports.try_send(report).is_err() {
        let _ = out.send(answer(pdu::ESME_RMSGQFUL));
        return;
    }
    let out = out.clone();
    tokio::spawn(async move {
        let status = match tokio::time::timeout(REPORT_WAIT, was_kept).await {
            Ok(Ok(true)) => pdu::ESME_ROK,
            _ => pdu::ESME_RSYSERR,
        };
        let _ = out.send(answer(status));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_id_is_matched_to_the_form_the_smsc_gave() {
        let credentials = SmppCredentials {
            system_id: Secret::new("herald".to_owned()),
            password: Secret::new("pw".to_owned()),
        };
        let smpp = Smpp::new(SmppSettings::from_settings(&Map::new()), credentials);
        // 0x1A2B is 6699, and 0x6699 could be another message's id.
        smpp.shared.given("1A2B");
        assert_eq!(smpp.given_form("1a2b").as_deref(), Some("1a2b"));
        assert_eq!(smpp.given_form("6699").as_deref(), Some("1a2b"));
        assert_eq!(smpp.given_form("0001A2B").as_deref(), Some("1a2b"));
        assert_eq!(smpp.given_form("4351"), None);
        smpp.shared.given("4351");
        assert_eq!(smpp.given_form("4351").as_deref(), Some("4351"));
    }
}
