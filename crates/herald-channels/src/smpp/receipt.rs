//! What a `deliver_sm` brings (CHANNELS §7): a delivery receipt of a
//! message herald submitted (`esm_class & 0x04`), read from its TLVs first
//! and else from the receipt's text, or a person's message.

use herald_core::session::MessageStatus;

use super::pdu::{Sm, TLV_MESSAGE_STATE, TLV_RECEIPTED_MESSAGE_ID};
use super::text;

/// What one `deliver_sm` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Receipt(Receipt),
    /// A message from a person (mobile-originated).
    Message {
        from: String,
        to: String,
        text: String,
    },
}

/// A delivery receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The SMSC's id of the message, as the receipt gives it (hex or
    /// decimal: see [`id_forms`]).
    pub id: String,
    /// The receipt's `stat` word (`DELIVRD`, `UNDELIV`, …).
    pub stat: String,
    /// The receipt's `err`, if it gives one other than zero.
    pub err: Option<String>,
    /// Whom the message went to (the receipt's source address).
    pub to: String,
}

impl Receipt {
    /// What the `stat` means for the message (CHANNELS §7); `None` for a
    /// word herald does not know.
    pub fn status(&self) -> Option<MessageStatus> {
        Some(match self.stat.as_str() {
            "DELIVRD" => MessageStatus::Delivered,
            "ACCEPTD" | "ENROUTE" => MessageStatus::Sent,
            "REJECTD" => MessageStatus::Rejected,
            "EXPIRED" | "DELETED" | "UNDELIV" | "UNKNOWN" => MessageStatus::Failed,
            _ => return None,
        })
    }
}

/// The `stat` words of `message_state`'s values (SMPP 3.4 §5.3.2.35).
fn state_word(state: u8) -> Option<&'static str> {
    Some(match state {
        1 => "ENROUTE",
        2 => "DELIVRD",
        3 => "EXPIRED",
        4 => "DELETED",
        5 => "UNDELIV",
        6 => "ACCEPTD",
        7 => "UNKNOWN",
        8 => "REJECTD",
        _ => return None,
    })
}

/// The value of `key:` in a receipt's text: up to the next space.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find(key) {
        let start = from + at;
        let boundary = start == 0 || lower.as_bytes()[start - 1].is_ascii_whitespace();
        if boundary {
            let value = &text[start + key.len()..];
            return Some(value.split_whitespace().next().unwrap_or_default());
        }
        from = start + key.len();
    }
    None
}

/// Reads a `deliver_sm`.
pub fn read(sm: &Sm) -> Delivered {
    let body = text::decode(sm.data_coding, sm.esm_class, &sm.short_message);
    if sm.esm_class & 0x3C != 0x04 {
        return Delivered::Message {
            from: sm.source.addr.clone(),
            to: sm.destination.addr.clone(),
            text: body,
        };
    }
    let tlv_id = sm.tlv(TLV_RECEIPTED_MESSAGE_ID).map(|v| {
        String::from_utf8_lossy(v)
            .trim_end_matches('\0')
            .trim()
            .to_owned()
    });
    let tlv_stat = sm
        .tlv(TLV_MESSAGE_STATE)
        .and_then(|v| v.first().copied())
        .and_then(state_word);
    let id = tlv_id
        .filter(|id| !id.is_empty())
        .or_else(|| field(&body, "id:").map(str::to_owned))
        .unwrap_or_default();
    let stat = tlv_stat
        .map(str::to_owned)
        .or_else(|| field(&body, "stat:").map(|s| s.to_ascii_uppercase()))
        .unwrap_or_default();
    let err = field(&body, "err:")
        .filter(|e| !e.is_empty() && e.chars().any(|c| c != '0'))
        .map(str::to_owned);
    Delivered::Receipt(Receipt {
        id,
        stat,
        err,
        to: sm.source.addr.clone(),
    })
}

/// A message id as herald stores it: lower case, without leading zeros.
pub fn canonical(id: &str) -> String {
    let id = id.trim().to_ascii_lowercase();
    let trimmed = id.trim_start_matches('0');
    if trimmed.is_empty() && !id.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The forms a receipt's id may have had in `submit_sm_resp`, the likely
/// first: as it is; and, since SMSCs often answer a submit with a hex id
/// and report it in decimal (or the other way), the same number in the
/// other base.
pub fn id_forms(id: &str) -> Vec<String> {
    let id = canonical(id);
    let mut forms = vec![id.clone()];
    let mut add = |form: String| {
        if !forms.contains(&form) {
            forms.push(form);
        }
    };
    if id.len() <= 38 && id.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = id.parse::<u128>() {
            add(format!("{n:x}"));
        }
    }
    if id.len() <= 32 && !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        if let Ok(n) = u128::from_str_radix(&id, 16) {
            add(n.to_string());
        }
    }
    forms
}

#[cfg(test)]
mod tests {
    use super::super::pdu::{Address, Tlv};
    use super::*;

    fn receipt(text: &str, tlvs: Vec<Tlv>) -> Sm {
        Sm {
            source: Address {
                ton: 1,
                npi: 1,
                addr: "447700900123".into(),
            },
            esm_class: 0x04,
            short_message: text.as_bytes().to_vec(),
            tlvs,
            ..Sm::default()
        }
    }

    #[test]
    fn receipts_are_read_from_their_tlvs_first_then_their_text() {
        let text = "id:0123456789 sub:001 dlvrd:001 submit date:2511301200 \
                    done date:2511301201 stat:DELIVRD err:000 Text:Hello";
        let Delivered::Receipt(from_text) = read(&receipt(text, vec![])) else {
            panic!("a receipt")
        };
        assert_eq!(from_text.id, "0123456789");
        assert_eq!(from_text.stat, "DELIVRD");
        assert_eq!(from_text.err, None);
        assert_eq!(from_text.status(), Some(MessageStatus::Delivered));
        assert_eq!(from_text.to, "447700900123");
        let tlvs = vec![
            Tlv {
                tag: TLV_RECEIPTED_MESSAGE_ID,
                value: b"75bcd15\0".to_vec(),
            },
            Tlv {
                tag: TLV_MESSAGE_STATE,
                value: vec![5],
            },
        ];
        let text = "id:123456789 sub:001 dlvrd:000 stat:DELIVRD err:034";
        let Delivered::Receipt(from_tlvs) = read(&receipt(text, tlvs)) else {
            panic!("a receipt")
        };
        assert_eq!(from_tlvs.id, "75bcd15");
        assert_eq!(from_tlvs.stat, "UNDELIV");
        assert_eq!(from_tlvs.err.as_deref(), Some("034"));
        assert_eq!(from_tlvs.status(), Some(MessageStatus::Failed));
    }

    #[test]
    fn every_stat_has_its_status() {
        for (stat, status) in [
            ("DELIVRD", Some(MessageStatus::Delivered)),
            ("ACCEPTD", Some(MessageStatus::Sent)),
            ("ENROUTE", Some(MessageStatus::Sent)),
            ("REJECTD", Some(MessageStatus::Rejected)),
            ("EXPIRED", Some(MessageStatus::Failed)),
            ("DELETED", Some(MessageStatus::Failed)),
            ("UNDELIV", Some(MessageStatus::Failed)),
            ("UNKNOWN", Some(MessageStatus::Failed)),
            ("SKIPPED", None),
        ] {
            let r = Receipt {
                id: "1".into(),
                stat: stat.into(),
                err: None,
                to: String::new(),
            };
            assert_eq!(r.status(), status, "{stat}");
        }
    }

    #[test]
    fn a_person_s_message_is_not_a_receipt() {
        let mut sm = receipt("stat:DELIVRD", vec![]);
        sm.esm_class = 0;
        sm.destination.addr = "Acme".into();
        assert_eq!(
            read(&sm),
            Delivered::Message {
                from: "447700900123".into(),
                to: "Acme".into(),
                text: "stat:DELIVRD".into()
            }
        );
    }

    #[test]
    fn ids_are_matched_in_hex_and_in_decimal() {
        assert_eq!(canonical("00AbC"), "abc");
        assert_eq!(canonical("000"), "0");
        assert_eq!(
            id_forms("123456789"),
            ["123456789", "75bcd15", "4886718345"]
        );
        assert_eq!(id_forms("075BCD15"), ["75bcd15", "123456789"]);
        assert_eq!(id_forms("msg-1"), ["msg-1"]);
    }
}
