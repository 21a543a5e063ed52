//! The loopback SMSC of `herald bench`'s SMPP scenario ([`super::smpp`]),
//! on herald-channels' own PDU codec: it takes a transceiver bind with
//! the bench's credentials, answers each `submit_sm` at once with an id of
//! its own, and sends a delivery receipt (`stat:DELIVRD`, with the
//! `receipted_message_id` and `message_state` TLVs) for each straight
//! after the answer. A receipt answered with an error is sent again after
//! a pause, as an SMSC would. It counts what it took and sent, and notes
//! anything that is not what a well-behaved ESME sends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_channels::smpp::pdu::{self, Address, Body, Pdu, Sm, Tlv};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::providers::Fake;

/// How long the SMSC waits before sending again a receipt that herald
/// answered with an error.
const RESEND_AFTER: Duration = Duration::from_millis(200);

/// The delivery receipt of the message `submitted`, which the SMSC took
/// under the id `id`: from the person it went to, back to its sender.
pub fn receipt(id: &str, submitted: &Sm) -> Sm {
    let text = format!(
        "id:{id} sub:001 dlvrd:001 submit date:2612010000 done date:2612010000 stat:DELIVRD err:000 text:"
    );
    Sm {
        source: Address {
            ton: submitted.destination.ton,
            npi: submitted.destination.npi,
            addr: submitted.destination.addr.clone(),
        },
        destination: submitted.source.clone(),
        esm_class: 0x04,
        short_message: text.into_bytes(),
        tlvs: vec![
            Tlv {
                tag: pdu::TLV_RECEIPTED_MESSAGE_ID,
                value: [id.as_bytes(), &[0]].concat(),
            },
            // DELIVERED (SMPP 3.4 §5.3.2.35).
            Tlv {
                tag: pdu::TLV_MESSAGE_STATE,
                value: vec![2],
            },
        ],
        ..Sm::default()
    }
}

/// What the SMSC saw, shared by its connections.
#[derive(Default)]
struct State {
    system_id: String,
    password: String,
    binds: AtomicUsize,
    submits: AtomicUsize,
    /// When the last `submit_sm` came.
    last_submit: Mutex<Option<Instant>>,
    /// When the first receipt went.
    first_receipt: Mutex<Option<Instant>>,
    /// Receipts answered `ESME_ROK`, and answered otherwise (each sent
    /// again).
    receipts_kept: AtomicUsize,
    receipts_refused: AtomicUsize,
    next_id: AtomicU64,
    problems: Mutex<Vec<String>>,
}

impl State {
    fn problem(&self, what: String) {
        let mut problems = self.problems.lock().unwrap();
        if problems.len() < 20 {
            problems.push(what);
        }
    }
}

/// The loopback SMSC, until dropped.
pub struct Smsc {
    pub port: u16,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Smsc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Smsc {
    /// Listens on a free loopback port for binds with these credentials.
    pub async fn start(system_id: &str, password: &str) -> anyhow::Result<Smsc> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            system_id: system_id.to_owned(),
            password: password.to_owned(),
            next_id: AtomicU64::new(0x1000),
            ..State::default()
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(shared.clone(), stream));
            }
        });
        Ok(Smsc { port, state, task })
    }

    pub fn submits(&self) -> usize {
        self.state.submits.load(Ordering::Relaxed)
    }

    pub fn binds(&self) -> usize {
        self.state.binds.load(Ordering::Relaxed)
    }

    pub fn receipts_kept(&self) -> usize {
        self.state.receipts_kept.load(Ordering::Relaxed)
    }

    pub fn receipts_refused(&self) -> usize {
        self.state.receipts_refused.load(Ordering::Relaxed)
    }

    pub fn last_submit(&self) -> Option<Instant> {
        *self.state.last_submit.lock().unwrap()
    }

    pub fn first_receipt(&self) -> Option<Instant> {
        *self.state.first_receipt.lock().unwrap()
    }

    /// Waits until `n` receipts have been answered `ESME_ROK`.
    pub async fn wait_for_kept(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while self.receipts_kept() < n {
            if Instant::now() > deadline {
                anyhow::bail!("herald kept {} of {n} receipts", self.receipts_kept());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Fake for Smsc {
    fn name(&self) -> &'static str {
        "SMSC"
    }

    fn problems(&self) -> Vec<String> {
        self.state.problems.lock().unwrap().clone()
    }

    fn messages_taken(&self) -> usize {
        self.submits()
    }
}

/// Reads one PDU; `None` at the end of the stream or on one that is not
/// SMPP.
async fn read_pdu<R: AsyncReadExt + Unpin>(reader: &mut R) -> Option<Result<Pdu, pdu::Malformed>> {
    let mut header = [0u8; 4];
    reader.read_exact(&mut header).await.ok()?;
    let length = Pdu::length(&header)?.ok()? as usize;
    let mut bytes = vec![0u8; length];
    bytes[..4].copy_from_slice(&header);
    reader.read_exact(&mut bytes[4..]).await.ok()?;
    Some(Pdu::decode(&bytes))
}

/// Serves one ESME's connection until it closes or unbinds.
async fn serve(state: Arc<State>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let (out, mut to_write) = mpsc::unbounded_channel::<Vec<u8>>();
    // Writes what is queued, flushing once the queue is empty: answers and
    // receipts go out in few writes under load, at once when idle.
    let writing = tokio::spawn(async move {
        let mut writer = BufWriter::with_capacity(64 * 1024, writer);
        while let Some(bytes) = to_write.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
            while let Ok(bytes) = to_write.try_recv() {
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
    });
    // Receipts awaiting their answer, by sequence number.
    let pending: Arc<Mutex<HashMap<u32, Sm>>> = Arc::default();
    let sequence = Arc::new(AtomicU64::new(1));
    let mut bound = false;
    while let Some(read) = read_pdu(&mut reader).await {
        let pdu = match read {
            Ok(pdu) => pdu,
            Err(malformed) => {
                state.problem(format!(
                    "herald sent a PDU the SMSC cannot read: {malformed}"
                ));
                continue;
            }
        };
        match &pdu.body {
            Body::BindTransceiver {
                system_id,
                password,
                ..
            } => {
                let status = if *system_id == state.system_id && *password == state.password {
                    bound = true;
                    state.binds.fetch_add(1, Ordering::Relaxed);
                    pdu::ESME_ROK
                } else {
                    state.problem(format!("a bind as {system_id:?} with a wrong password"));
                    pdu::ESME_RINVPASWD
                };
                let answer = Pdu {
                    status,
                    sequence: pdu.sequence,
                    body: Body::BindTransceiverResp {
                        system_id: "bench-smsc".into(),
                    },
                };
                let _ = out.send(answer.encode());
            }
            Body::SubmitSm(sm) if bound => {
                let now = Instant::now();
                *state.last_submit.lock().unwrap() = Some(now);
                state.submits.fetch_add(1, Ordering::Relaxed);
                let id = format!("{:x}", state.next_id.fetch_add(1, Ordering::Relaxed));
                let answer = Pdu::new(
                    pdu.sequence,
                    Body::SubmitSmResp {
                        message_id: id.clone(),
                    },
                );
                let _ = out.send(answer.encode());
                if sm.registered_delivery & 0x03 == 0 {
                    state.problem("a submit_sm asked for no receipt".into());
                    continue;
                }
                let report = receipt(&id, sm);
                let n = next_sequence(&sequence);
                pending.lock().unwrap().insert(n, report.clone());
                state
                    .first_receipt
                    .lock()
                    .unwrap()
                    .get_or_insert_with(Instant::now);
                let _ = out.send(Pdu::new(n, Body::DeliverSm(Box::new(report))).encode());
            }
            Body::DeliverSmResp => {
                let Some(report) = pending.lock().unwrap().remove(&pdu.sequence) else {
                    state.problem(format!(
                        "a deliver_sm_resp to no receipt ({})",
                        pdu.sequence
                    ));
                    continue;
                };
                if pdu.status == pdu::ESME_ROK {
                    state.receipts_kept.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // Not kept: sent again in a moment, as SMSCs do.
                state.receipts_refused.fetch_add(1, Ordering::Relaxed);
                let (out, pending, sequence) = (out.clone(), pending.clone(), sequence.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(RESEND_AFTER).await;
                    let n = next_sequence(&sequence);
                    pending.lock().unwrap().insert(n, report.clone());
                    let _ = out.send(Pdu::new(n, Body::DeliverSm(Box::new(report))).encode());
                });
            }
            Body::EnquireLink | Body::Unbind => {
                if let Some(answer) = pdu.response(pdu::ESME_ROK) {
                    let _ = out.send(answer.encode());
                }
                if pdu.body == Body::Unbind {
                    break;
                }
            }
            Body::EnquireLinkResp | Body::UnbindResp => {}
            other => {
                state.problem(format!(
                    "herald sent {:#010x} (bound: {bound})",
                    other.command_id()
                ));
                if let Some(answer) = pdu.response(pdu::ESME_RINVCMDID) {
                    let _ = out.send(answer.encode());
                }
            }
        }
    }
    drop(out);
    let _ = writing.await;
}

fn next_sequence(sequence: &AtomicU64) -> u32 {
    (sequence.fetch_add(1, Ordering::Relaxed) % 0x7FFF_FFFF) as u32 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channels::smpp::receipt::{self, Delivered, Receipt};

    #[test]
    fn a_receipt_reads_as_the_delivery_of_the_message_it_names() {
        let submitted = Sm {
            source: Address {
                ton: 1,
                npi: 1,
                addr: "447700900001".into(),
            },
            destination: Address {
                ton: 1,
                npi: 1,
                addr: "447700900123".into(),
            },
            registered_delivery: 1,
            short_message: b"Hello".to_vec(),
            ..Sm::default()
        };
        let report = receipt("1a2b", &submitted);
        assert_eq!(report.destination.addr, "447700900001");
        // Through the wire and back, as herald reads it: by its TLVs.
        let bytes = Pdu::new(7, Body::DeliverSm(Box::new(report.clone()))).encode();
        let Body::DeliverSm(read) = Pdu::decode(&bytes).unwrap().body else {
            panic!("not a deliver_sm");
        };
        let expected = Delivered::Receipt(Receipt {
            id: "1a2b".into(),
            stat: "DELIVRD".into(),
            err: None,
            to: "447700900123".into(),
        });
        assert_eq!(receipt::read(&read), expected);
        // And by its text alone, for an ESME that reads no TLVs.
        let text_only = Sm {
            tlvs: vec![],
            ..report
        };
        assert_eq!(receipt::read(&text_only), expected);
    }
}
