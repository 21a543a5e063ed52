//! SMPP 3.4 PDUs on the wire (CHANNELS §7): the few herald sends and
//! reads, encoded and decoded without I/O.
//!
//! Every PDU is a 16-byte header (`command_length`, `command_id`,
//! `command_status`, `sequence_number`, big-endian) and a body of
//! C-octet strings, single octets and TLVs. Only the PDUs of a transceiver
//! bind are modelled; any other command is [`Body::Other`], which herald
//! answers with `generic_nack`.

use std::fmt;

pub const BIND_TRANSCEIVER: u32 = 0x0000_0009;
pub const BIND_TRANSCEIVER_RESP: u32 = 0x8000_0009;
pub const SUBMIT_SM: u32 = 0x0000_0004;
pub const SUBMIT_SM_RESP: u32 = 0x8000_0004;
pub const DELIVER_SM: u32 = 0x0000_0005;
pub const DELIVER_SM_RESP: u32 = 0x8000_0005;
pub const UNBIND: u32 = 0x0000_0006;
pub const UNBIND_RESP: u32 = 0x8000_0006;
pub const ENQUIRE_LINK: u32 = 0x0000_0015;
pub const ENQUIRE_LINK_RESP: u32 = 0x8000_0015;
pub const GENERIC_NACK: u32 = 0x8000_0000;

/// Command statuses herald names.
pub const ESME_ROK: u32 = 0x00;
pub const ESME_RINVMSGLEN: u32 = 0x01;
pub const ESME_RINVCMDLEN: u32 = 0x02;
pub const ESME_RINVCMDID: u32 = 0x03;
pub const ESME_RSYSERR: u32 = 0x08;
pub const ESME_RBINDFAIL: u32 = 0x0D;
pub const ESME_RINVPASWD: u32 = 0x0E;
pub const ESME_RINVSYSID: u32 = 0x0F;
pub const ESME_RMSGQFUL: u32 = 0x14;
pub const ESME_RTHROTTLED: u32 = 0x58;

/// TLV tags herald writes or reads.
pub const TLV_RECEIPTED_MESSAGE_ID: u16 = 0x001E;
pub const TLV_MESSAGE_STATE: u16 = 0x0427;
pub const TLV_MESSAGE_PAYLOAD: u16 = 0x0424;

/// SMPP 3.4, in `interface_version`.
const INTERFACE_VERSION: u8 = 0x34;

/// The largest PDU herald reads: a `deliver_sm` with a long
/// `message_payload` fits well within it; anything longer is not SMPP.
pub const MAX_PDU: u32 = 64 * 1024;

/// The name of a command status, for reasons shown to the account.
pub fn status_name(status: u32) -> String {
    let name = match status {
        ESME_RINVMSGLEN => "ESME_RINVMSGLEN",
        ESME_RINVCMDLEN => "ESME_RINVCMDLEN",
        ESME_RINVCMDID => "ESME_RINVCMDID",
        0x04 => "ESME_RINVBNDSTS",
        0x05 => "ESME_RALYBND",
        ESME_RSYSERR => "ESME_RSYSERR",
        0x0A => "ESME_RINVSRCADR",
        0x0B => "ESME_RINVDSTADR",
        ESME_RBINDFAIL => "ESME_RBINDFAIL",
        ESME_RINVPASWD => "ESME_RINVPASWD",
        ESME_RINVSYSID => "ESME_RINVSYSID",
        ESME_RMSGQFUL => "ESME_RMSGQFUL",
        0x45 => "ESME_RSUBMITFAIL",
        ESME_RTHROTTLED => "ESME_RTHROTTLED",
        _ => return format!("0x{status:08X}"),
    };
    format!("{name} (0x{status:08X})")
}

/// An address: its type of number, numbering plan and digits (or name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    pub ton: u8,
    pub npi: u8,
    pub addr: String,
}

/// A TLV: its tag and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    pub tag: u16,
    pub value: Vec<u8>,
}

/// The body shared by `submit_sm` and `deliver_sm` (SMPP 3.4 §4.4, §4.6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sm {
    pub service_type: String,
    pub source: Address,
    pub destination: Address,
    pub esm_class: u8,
    pub protocol_id: u8,
    pub priority_flag: u8,
    pub schedule_delivery_time: String,
    pub validity_period: String,
    pub registered_delivery: u8,
    pub replace_if_present_flag: u8,
    pub data_coding: u8,
    pub sm_default_msg_id: u8,
    pub short_message: Vec<u8>,
    pub tlvs: Vec<Tlv>,
}

impl Sm {
    pub fn tlv(&self, tag: u16) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|t| t.tag == tag)
            .map(|t| t.value.as_slice())
    }
}

/// What a PDU carries, by command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    BindTransceiver {
        system_id: String,
        password: String,
        system_type: String,
    },
    /// A bind's answer: the SMSC's own id.
    BindTransceiverResp {
        system_id: String,
    },
    SubmitSm(Box<Sm>),
    SubmitSmResp {
        message_id: String,
    },
    DeliverSm(Box<Sm>),
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    Unbind,
    UnbindResp,
    GenericNack,
    /// A command herald does not take.
    Other(u32),
}

impl Body {
    pub fn command_id(&self) -> u32 {
        match self {
            Body::BindTransceiver { .. } => BIND_TRANSCEIVER,
            Body::BindTransceiverResp { .. } => BIND_TRANSCEIVER_RESP,
            Body::SubmitSm(_) => SUBMIT_SM,
            Body::SubmitSmResp { .. } => SUBMIT_SM_RESP,
            Body::DeliverSm(_) => DELIVER_SM,
            Body::DeliverSmResp => DELIVER_SM_RESP,
            Body::EnquireLink => ENQUIRE_LINK,
            Body::EnquireLinkResp => ENQUIRE_LINK_RESP,
            Body::Unbind => UNBIND,
            Body::UnbindResp => UNBIND_RESP,
            Body::GenericNack => GENERIC_NACK,
            Body::Other(id) => *id,
        }
    }
}

/// One PDU.
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    pub status: u32,
    pub sequence: u32,
    pub body: Body,
}

/// A PDU's debug form never shows a bind's password.
impl fmt::Debug for Pdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Pdu");
        d.field("status", &self.status)
            .field("sequence", &self.sequence);
        match &self.body {
            Body::BindTransceiver {
                system_id,
                system_type,
                ..
            } => d
                .field("command", &"bind_transceiver")
                .field("system_id", system_id)
                .field("system_type", system_type),
            body => d.field("body", body),
        };
        d.finish()
    }
}

/// Why bytes are not a PDU herald can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The length is under a header's or over [`MAX_PDU`]: the stream
    /// cannot be read past it.
    #[error("a PDU's length of {0} bytes is not SMPP")]
    Length(u32),
    /// The header is readable but the body is not: the PDU can be
    /// answered (`generic_nack`) and the stream read on.
    #[error("a {command:#010x} PDU whose body cannot be read: {why}")]
    Body {
        command: u32,
        sequence: u32,
        why: &'static str,
    },
}

impl Pdu {
    pub fn new(sequence: u32, body: Body) -> Pdu {
        Pdu {
            status: ESME_ROK,
            sequence,
            body,
        }
    }

    /// A bind as herald's transceiver asks it.
    pub fn bind(sequence: u32, system_id: &str, password: &str, system_type: &str) -> Pdu {
        Pdu::new(
            sequence,
            Body::BindTransceiver {
                system_id: system_id.to_owned(),
                password: password.to_owned(),
                system_type: system_type.to_owned(),
            },
        )
    }

    /// The answer to this request with `status`, or `None` for a PDU that
    /// is itself an answer.
    pub fn response(&self, status: u32) -> Option<Pdu> {
        let body = match &self.body {
            Body::DeliverSm(_) => Body::DeliverSmResp,
            Body::EnquireLink => Body::EnquireLinkResp,
            Body::Unbind => Body::UnbindResp,
            Body::SubmitSm(_) => Body::SubmitSmResp {
                message_id: String::new(),
            },
            Body::BindTransceiver { .. } => Body::BindTransceiverResp {
                system_id: String::new(),
            },
            Body::Other(id) if id & GENERIC_NACK == 0 => Body::GenericNack,
            _ => return None,
        };
        Some(Pdu {
            status,
            sequence: self.sequence,
            body,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 16];
        match &self.body {
            Body::BindTransceiver {
                system_id,
                password,
                system_type,
            } => {
                cstring(&mut out, system_id);
                cstring(&mut out, password);
                cstring(&mut out, system_type);
                out.push(INTERFACE_VERSION);
                // addr_ton, addr_npi, address_range: any.
                out.extend_from_slice(&[0, 0, 0]);
            }
            Body::BindTransceiverResp { system_id } => cstring(&mut out, system_id),
            Body::SubmitSm(sm) | Body::DeliverSm(sm) => {
                // Parts are cut to fit (140 octets and a header); a longer
                // text goes in message_payload.
                debug_assert!(sm.short_message.len() <= 254);
                cstring(&mut out, &sm.service_type);
                for a in [&sm.source, &sm.destination] {
                    out.push(a.ton);
                    out.push(a.npi);
                    cstring(&mut out, &a.addr);
                }
                out.extend_from_slice(&[sm.esm_class, sm.protocol_id, sm.priority_flag]);
                cstring(&mut out, &sm.schedule_delivery_time);
                cstring(&mut out, &sm.validity_period);
                out.extend_from_slice(&[
                    sm.registered_delivery,
                    sm.replace_if_present_flag,
                    sm.data_coding,
                    sm.sm_default_msg_id,
                    sm.short_message.len() as u8,
                ]);
                out.extend_from_slice(&sm.short_message);
                for tlv in &sm.tlvs {
                    out.extend_from_slice(&tlv.tag.to_be_bytes());
                    out.extend_from_slice(&(tlv.value.len() as u16).to_be_bytes());
                    out.extend_from_slice(&tlv.value);
                }
            }
            Body::SubmitSmResp { message_id } => cstring(&mut out, message_id),
            Body::DeliverSmResp => out.push(0),
            _ => {}
        }
        let length = out.len() as u32;
        out[0..4].copy_from_slice(&length.to_be_bytes());
        out[4..8].copy_from_slice(&self.body.command_id().to_be_bytes());
        out[8..12].copy_from_slice(&self.status.to_be_bytes());
        out[12..16].copy_from_slice(&self.sequence.to_be_bytes());
        out
    }

    /// The length a PDU starting with `header` has, checked; `None` while
    /// fewer than four bytes are in.
    pub fn length(header: &[u8]) -> Option<Result<u32, Malformed>> {
        let length = u32::from_be_bytes(header.get(0..4)?.try_into().ok()?);
        Some(if (16..=MAX_PDU).contains(&length) {
            Ok(length)
        } else {
            Err(Malformed::Length(length))
        })
    }

    /// Reads one whole PDU (`bytes` is exactly its `command_length`).
    pub fn decode(bytes: &[u8]) -> Result<Pdu, Malformed> {
        let word = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        if bytes.len() < 16 || word(0) as usize != bytes.len() {
            return Err(Malformed::Length(bytes.len() as u32));
        }
        let (command, status, sequence) = (word(4), word(8), word(12));
        let bad = |why| Malformed::Body {
            command,
            sequence,
            why,
        };
        let mut r = Reader {
            bytes: &bytes[16..],
        };
        // An answer with an error status may carry no body at all.
        let failed = status != ESME_ROK && command & GENERIC_NACK != 0;
        let body = match command {
            BIND_TRANSCEIVER => Body::BindTransceiver {
                system_id: r.cstring().ok_or_else(|| bad("system_id"))?,
                password: r.cstring().ok_or_else(|| bad("password"))?,
                system_type: r.cstring().ok_or_else(|| bad("system_type"))?,
            },
            BIND_TRANSCEIVER_RESP => Body::BindTransceiverResp {
                system_id: r.cstring().unwrap_or_default(),
            },
            SUBMIT_SM | DELIVER_SM => {
                let sm = r.sm().ok_or_else(|| bad("its fields"))?;
                if command == SUBMIT_SM {
                    Body::SubmitSm(Box::new(sm))
                } else {
                    Body::DeliverSm(Box::new(sm))
                }
            }
            SUBMIT_SM_RESP => match r.cstring() {
                Some(message_id) => Body::SubmitSmResp { message_id },
                None if failed => Body::SubmitSmResp {
                    message_id: String::new(),
                },
                None => return Err(bad("message_id")),
            },
            DELIVER_SM_RESP => Body::DeliverSmResp,
            ENQUIRE_LINK => Body::EnquireLink,
            ENQUIRE_LINK_RESP => Body::EnquireLinkResp,
            UNBIND => Body::Unbind,
            UNBIND_RESP => Body::UnbindResp,
            GENERIC_NACK => Body::GenericNack,
            other => Body::Other(other),
        };
        Ok(Pdu {
            status,
            sequence,
            body,
        })
    }
}

fn cstring(out: &mut Vec<u8>, text: &str) {
    out.extend(text.bytes().filter(|b| *b != 0));
    out.push(0);
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(*first)
    }

    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        if self.bytes.len() < n {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(taken.to_vec())
    }

    /// A C-octet string (at most 255 bytes and its NUL).
    fn cstring(&mut self) -> Option<String> {
        let end = self.bytes.iter().take(256).position(|b| *b == 0)?;
        let text = String::from_utf8_lossy(&self.bytes[..end]).into_owned();
        self.bytes = &self.bytes[end + 1..];
        Some(text)
    }

    fn address(&mut self) -> Option<Address> {
        Some(Address {
            ton: self.u8()?,
            npi: self.u8()?,
            addr: self.cstring()?,
        })
    }

    fn sm(&mut self) -> Option<Sm> {
        let mut sm = Sm {
            service_type: self.cstring()?,
            source: self.address()?,
            destination: self.address()?,
            esm_class: self.u8()?,
            protocol_id: self.u8()?,
            priority_flag: self.u8()?,
            schedule_delivery_time: self.cstring()?,
            validity_period: self.cstring()?,
            registered_delivery: self.u8()?,
            replace_if_present_flag: self.u8()?,
            data_coding: self.u8()?,
            sm_default_msg_id: self.u8()?,
            ..Sm::default()
        };
        let length = self.u8()? as usize;
        sm.short_message = self.take(length)?;
        while !self.bytes.is_empty() {
            let tag = u16::from_be_bytes([self.u8()?, self.u8()?]);
            let length = u16::from_be_bytes([self.u8()?, self.u8()?]) as usize;
            let value = self.take(length)?;
            sm.tlvs.push(Tlv { tag, value });
        }
        Some(sm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm() -> Sm {
        Sm {
            source: Address {
                ton: 5,
                npi: 0,
                addr: "Acme".into(),
            },
            destination: Address {
                ton: 1,
                npi: 1,
                addr: "447700900123".into(),
            },
            registered_delivery: 1,
            short_message: b"Hello".to_vec(),
            tlvs: vec![Tlv {
                tag: TLV_MESSAGE_STATE,
                value: vec![2],
            }],
            ..Sm::default()
        }
    }

    #[test]
    fn every_pdu_reads_back_as_it_was_written() {
        for body in [
            Body::BindTransceiver {
                system_id: "herald".into(),
                password: "pw".into(),
                system_type: "".into(),
            },
            Body::BindTransceiverResp {
                system_id: "smsc".into(),
            },
            Body::SubmitSm(Box::new(sm())),
            Body::SubmitSmResp {
                message_id: "1a2b".into(),
            },
            Body::DeliverSm(Box::new(sm())),
            Body::DeliverSmResp,
            Body::EnquireLink,
            Body::EnquireLinkResp,
            Body::Unbind,
            Body::UnbindResp,
            Body::GenericNack,
        ] {
            let pdu = Pdu::new(7, body);
            let bytes = pdu.encode();
            assert_eq!(Pdu::length(&bytes), Some(Ok(bytes.len() as u32)));
            assert_eq!(Pdu::decode(&bytes), Ok(pdu));
        }
    }

    #[test]
    fn a_bind_is_laid_out_as_smpp_3_4_says() {
        let bytes = Pdu::bind(1, "ab", "pw", "").encode();
        assert_eq!(
            bytes,
            [
                0, 0, 0, 27, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, b'a', b'b', 0, b'p', b'w', 0, 0,
                0x34, 0, 0, 0
            ]
        );
        assert!(!format!("{:?}", Pdu::bind(1, "ab", "s3cret", "")).contains("s3cret"));
    }

    #[test]
    fn malformed_bytes_are_told_apart() {
        assert_eq!(Pdu::length(&[0, 0, 0]), None);
        assert_eq!(Pdu::length(&[0, 0, 0, 3]), Some(Err(Malformed::Length(3))));
        assert_eq!(
            Pdu::length(&[0x7f, 0, 0, 0]),
            Some(Err(Malformed::Length(0x7f00_0000)))
        );
        // A deliver_sm cut short: answerable, by its sequence number.
        let mut bytes = Pdu::new(9, Body::DeliverSm(Box::new(sm()))).encode();
        bytes.truncate(24);
        bytes[0..4].copy_from_slice(&24u32.to_be_bytes());
        assert!(matches!(
            Pdu::decode(&bytes),
            Err(Malformed::Body {
                command: DELIVER_SM,
                sequence: 9,
                ..
            })
        ));
        // An unknown command reads, to be nacked.
        let other = Pdu::new(3, Body::Other(0x0000_0077));
        let read = Pdu::decode(&other.encode()).unwrap();
        assert_eq!(read.body, Body::Other(0x77));
        assert_eq!(
            read.response(ESME_RINVCMDID).unwrap().body,
            Body::GenericNack
        );
        // A failed submit_sm_resp may have no body.
        let mut failed = Pdu::new(4, Body::EnquireLinkResp).encode();
        failed[4..8].copy_from_slice(&SUBMIT_SM_RESP.to_be_bytes());
        failed[8..12].copy_from_slice(&ESME_RTHROTTLED.to_be_bytes());
        assert_eq!(
            Pdu::decode(&failed).unwrap().body,
            Body::SubmitSmResp {
                message_id: String::new()
            }
        );
        assert_eq!(status_name(0x58), "ESME_RTHROTTLED (0x00000058)");
    }

    /// Whatever the bytes, reading them answers (never panics): every cut
    /// and every flipped byte of real PDUs, and noise.
    #[test]
    fn no_bytes_make_reading_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let real = [
            Pdu::new(1, Body::SubmitSm(Box::new(sm()))).encode(),
            Pdu::new(2, Body::DeliverSm(Box::new(sm()))).encode(),
            Pdu::bind(3, "herald", "pw", "x").encode(),
        ];
        for pdu in &real {
            for cut in 0..pdu.len() {
                let mut bytes = pdu[..cut].to_vec();
                if bytes.len() >= 4 {
                    bytes[0..4].copy_from_slice(&(cut as u32).to_be_bytes());
                }
                let _ = Pdu::decode(&bytes);
            }
            for _ in 0..2000 {
                let mut bytes = pdu.clone();
                let at = 16 + (next() as usize) % (bytes.len() - 16);
                bytes[at] = next() as u8;
                let _ = Pdu::decode(&bytes);
            }
        }
        for _ in 0..2000 {
            let length = 16 + (next() as usize) % 200;
            let mut bytes: Vec<u8> = (0..length).map(|_| next() as u8).collect();
            bytes[0..4].copy_from_slice(&(length as u32).to_be_bytes());
            let _ = Pdu::decode(&bytes);
            let _ = Pdu::length(&bytes);
        }
    }
}
