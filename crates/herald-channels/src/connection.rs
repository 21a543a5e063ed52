//! Connections: an account's credentials and settings for one channel
//! provider (CONTRACT §10), checked field by field before anything is
//! stored.
//!
//! Each provider names its credentials, its settings and its webhooks (the
//! names of CONTRACT §10.1a); a provider's own module checks what only it
//! can (a Vonage private key must be one). The credentials of a checked
//! connection are kept in [`Secret`]s from here on: they are sealed before
//! they are stored (`HERALD_SECRET_KEY`) and shown nowhere.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use herald_core::secret::Secret;
use herald_core::Channel;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The channel providers a connection can be for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Vonage,
    Twilio,
    WhatsappCloud,
    Smpp,
    Sip,
}

/// The type of a setting's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    /// A whole number from 0.
    Count,
    Number,
    Flag,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// An object of texts (Twilio's content SIDs).
    Texts,
}

/// What a provider's connection holds.
struct Spec {
    credentials: &'static [&'static str],
    /// Credentials a connection may hold besides those it must.
    optional_credentials: &'static [&'static str],
    settings: &'static [(&'static str, Kind)],
    webhooks: &'static [&'static str],
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::Vonage,
        ProviderKind::Twilio,
        ProviderKind::WhatsappCloud,
        ProviderKind::Smpp,
        ProviderKind::Sip,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Vonage => "vonage",
            ProviderKind::Twilio => "twilio",
            ProviderKind::WhatsappCloud => "whatsapp_cloud",
            ProviderKind::Smpp => "smpp",
            ProviderKind::Sip => "sip",
        }
    }

    fn spec(self) -> Spec {
        use Kind::*;
        match self {
            ProviderKind::Vonage => Spec {
                credentials: &[
                    "application_id",
                    "private_key",
                    "api_key",
                    "api_secret",
                    "signature_secret",
                ],
                optional_credentials: &[],
                settings: &[
                    ("language", Text),
                    ("style", Count),
                    ("machine_detection", OneOf(&["continue", "hangup"])),
                    // Paces above Vonage's defaults, once Vonage has raised
                    // the account's limits.
                    ("calls_per_second", Number),
                    ("messages_per_second", Number),
                ],
                webhooks: &["answer", "event", "message_status", "message_inbound"],
            },
            ProviderKind::Twilio => Spec {
                credentials: &["account_sid", "auth_token"],
                // An API key (`SK…`) and its secret for the REST API, which
                // can be revoked on its own; the auth token is still needed,
                // since Twilio signs its webhooks with it.
                optional_credentials: &["api_key", "api_secret"],
                settings: &[
                    ("content_sids", Texts),
                    ("language", Text),
                    ("voice", Text),
                    // Paces other than Twilio's defaults, for an account
                    // whose limits Twilio has raised.
                    ("calls_per_second", Number),
                    ("messages_per_second", Number),
                ],
                webhooks: &["voice", "voice_status", "message_status", "message_inbound"],
            },
            ProviderKind::WhatsappCloud => Spec {
                credentials: &[
                    "phone_number_id",
                    "access_token",
                    "app_secret",
                    "verify_token",
                ],
                optional_credentials: &[],
                // A pace other than Meta's default, for a number whose
                // throughput Meta has raised.
                settings: &[("messages_per_second", Number)],
                webhooks: &["webhook"],
            },
            ProviderKind::Smpp => Spec {
                credentials: &["system_id", "password"],
                optional_credentials: &[],
                settings: &[
                    ("host", Text),
                    ("port", Count),
                    ("system_type", Text),
                    ("tls", Flag),
                    ("source_ton", Count),
                    ("source_npi", Count),
                    ("window", Count),
                    ("per_second", Number),
                    ("enquire_link_secs", Count),
                    ("long_messages", OneOf(&["udh", "payload"])),
                ],
                webhooks: &[],
            },
            ProviderKind::Sip => Spec {
                credentials: &["username", "password"],
                optional_credentials: &[],
                settings: &[
                    ("trunk", Text),
                    ("transport", OneOf(&["udp", "tcp", "tls"])),
                    ("caller_id", Text),
                    ("rtp_ports", Text),
                    ("language", Text),
                    ("voice", Text),
                ],
                webhooks: &[],
            },
        }
    }

    /// The names of the webhooks the provider calls, each a path of its
    /// own under `/providers/{connection_id}/`.
    pub fn webhooks(self) -> &'static [&'static str] {
        self.spec().webhooks
    }

    /// The channels this build carries over the provider. A provider whose
    /// adapter is still to come serves none: an agent cannot be published
    /// on its connections yet.
    pub fn channels(self) -> &'static [Channel] {
        match self {
            ProviderKind::Vonage | ProviderKind::Twilio => {
                &[Channel::Voice, Channel::Sms, Channel::Whatsapp]
            }
            ProviderKind::WhatsappCloud => &[Channel::Whatsapp],
            ProviderKind::Smpp => &[Channel::Sms],
            ProviderKind::Sip => &[],
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ProviderKind::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "provider must be one of {}",
                    ProviderKind::ALL.map(ProviderKind::as_str).join(", ")
                )
            })
    }
}

/// A connection's credentials, by name; the values never print.
#[derive(Clone, Debug, Default)]
pub struct Credentials(BTreeMap<String, Secret<String>>);

impl Credentials {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|s| s.expose().as_str())
    }

    /// The credentials as stored, before sealing: a JSON object of texts.
    pub fn to_stored(&self) -> Vec<u8> {
        let map: BTreeMap<&str, &str> = self
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose().as_str()))
            .collect();
        serde_json::to_vec(&map).expect("texts serialise")
    }

    /// Credentials read back from their stored form.
    pub fn from_stored(bytes: &[u8]) -> Result<Self, String> {
        let map: BTreeMap<String, String> =
            serde_json::from_slice(bytes).map_err(|e| format!("stored credentials: {e}"))?;
        Ok(Credentials(
            map.into_iter().map(|(k, v)| (k, Secret::new(v))).collect(),
        ))
    }
}

/// Why a connection's fields are refused: the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadConnection(pub String);

fn bad(message: impl Into<String>) -> BadConnection {
    BadConnection(message.into())
}

/// Checks `credentials` (an object holding exactly the provider's
/// credential names, and any of its optional ones, each a non-empty text)
/// and hands them over sealed in [`Secret`]s. No value is quoted in an
/// error.
pub fn check_credentials(
    provider: ProviderKind,
    value: &Value,
) -> Result<Credentials, BadConnection> {
    let Value::Object(fields) = value else {
        return Err(bad("credentials must be an object"));
    };
    let Spec {
        credentials: names,
        optional_credentials: optional,
        ..
    } = provider.spec();
    let known = || names.iter().chain(optional);
    if let Some(unknown) = fields.keys().find(|k| !known().any(|n| n == k)) {
        let known: Vec<&str> = known().copied().collect();
        return Err(bad(format!(
            "credentials.{unknown} is not a {provider} credential (they are: {})",
            known.join(", ")
        )));
    }
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| fields.get(*n).is_none_or(Value::is_null))
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!(
            "credentials of a {provider} connection need: {}",
            missing.join(", ")
        )));
    }
    let mut credentials = BTreeMap::new();
    for name in known() {
        let text = match fields.get(*name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if !s.trim().is_empty() && !s.contains('\0') => s.clone(),
            Some(Value::String(_)) => {
                return Err(bad(format!("credentials.{name} must not be empty")))
            }
            Some(_) => return Err(bad(format!("credentials.{name} must be a string"))),
        };
        credentials.insert((*name).to_owned(), Secret::new(text));
    }
    let credentials = Credentials(credentials);
    match provider {
        ProviderKind::Vonage => {
            crate::vonage::VonageCredentials::from_credentials(&credentials)?;
        }
        ProviderKind::Twilio => {
            crate::twilio::TwilioCredentials::from_credentials(&credentials)?;
        }
        ProviderKind::WhatsappCloud => {
            crate::whatsapp_cloud::WhatsappCredentials::from_credentials(&credentials)?;
        }
        ProviderKind::Smpp => {
            crate::smpp::SmppCredentials::from_credentials(&credentials)?;
        }
        _ => {}
    }
    Ok(credentials)
}

/// Checks `settings` (an object of the provider's settings, each of its
/// type); `null` or absent is no settings.
pub fn check_settings(
    provider: ProviderKind,
    value: Option<&Value>,
) -> Result<Map<String, Value>, BadConnection> {
    let fields = match value {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Object(fields)) => fields,
        Some(_) => return Err(bad("settings must be an object")),
    };
    let spec = provider.spec().settings;
    for (name, value) in fields {
        let Some((_, kind)) = spec.iter().find(|(n, _)| n == name) else {
            let known: Vec<&str> = spec.iter().map(|(n, _)| *n).collect();
            return Err(bad(format!(
                "settings.{name} is not a {provider} setting (they are: {})",
                known.join(", ")
            )));
        };
        let fits = match kind {
            Kind::Text => value
                .as_str()
                .is_some_and(|s| !s.is_empty() && s.len() <= 1024 && !s.contains('\0')),
            Kind::Count => value.as_u64().is_some(),
            Kind::Number => value.as_f64().is_some_and(|n| n.is_finite() && n > 0.0),
            Kind::Flag => value.is_boolean(),
            Kind::OneOf(words) => value.as_str().is_some_and(|s| words.contains(&s)),
            Kind::Texts => value.as_object().is_some_and(|m| {
                m.values().all(|v| {
                    v.as_str()
                        .is_some_and(|s| !s.is_empty() && !s.contains('\0'))
                })
            }),
        };
        if !fits {
            let what = match kind {
                Kind::Text => "a non-empty string of at most 1024 bytes".to_owned(),
                Kind::Count => "a whole number from 0".to_owned(),
                Kind::Number => "a number above 0".to_owned(),
                Kind::Flag => "true or false".to_owned(),
                Kind::OneOf(words) => format!("one of {}", words.join(", ")),
                Kind::Texts => "an object of non-empty strings".to_owned(),
            };
            return Err(bad(format!("settings.{name} must be {what}")));
        }
    }
    Ok(fields.clone())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn providers_parse_by_their_names() {
        for p in ProviderKind::ALL {
            assert_eq!(p.as_str().parse::<ProviderKind>(), Ok(p));
        }
        let error = "nexmo".parse::<ProviderKind>().unwrap_err();
        assert_eq!(
            error,
            "provider must be one of vonage, twilio, whatsapp_cloud, smpp, sip"
        );
    }

    #[test]
    fn credentials_are_exactly_the_provider_s_names() {
        let twilio = |v: Value| check_credentials(ProviderKind::Twilio, &v).map(|_| ());
        let sid = format!("AC{}", "0".repeat(32));
        assert_eq!(
            twilio(json!({"account_sid": sid, "auth_token": "t0ken"})),
            Ok(())
        );
        for (value, message) in [
            (json!("AC1:t0ken"), "credentials must be an object"),
            (
                json!({"account_sid": "AC1"}),
                "credentials of a twilio connection need: auth_token",
            ),
            (
                json!({"account_sid": "AC1", "auth_token": "t", "key": "k"}),
                "credentials.key is not a twilio credential (they are: account_sid, auth_token, api_key, api_secret)",
            ),
            (
                json!({"account_sid": "AC1", "auth_token": "t", "api_key": ""}),
                "credentials.api_key must not be empty",
            ),
            (
                json!({"account_sid": "AC1", "auth_token": 7}),
                "credentials.auth_token must be a string",
            ),
            (
                json!({"account_sid": " ", "auth_token": "t"}),
                "credentials.account_sid must not be empty",
            ),
            (
                json!({"account_sid": "AC1", "auth_token": "t"}),
                "credentials.account_sid must be the account's SID: AC and 32 hexadecimal digits",
            ),
        ] {
            assert_eq!(twilio(value), Err(bad(message)));
        }
    }

    #[test]
    fn settings_are_of_their_types() {
        let smpp = |v: Value| check_settings(ProviderKind::Smpp, Some(&v)).map(|_| ());
        assert_eq!(
            smpp(
                json!({"host": "smsc.example.com", "port": 2775, "tls": true,
                        "per_second": 12.5, "long_messages": "udh"})
            ),
            Ok(())
        );
        for (value, message) in [
            (json!({"port": "2775"}), "settings.port must be a whole number from 0"),
            (json!({"tls": 1}), "settings.tls must be true or false"),
            (json!({"long_messages": "split"}), "settings.long_messages must be one of udh, payload"),
            (json!({"speed": 1}), "settings.speed is not a smpp setting (they are: host, port, system_type, tls, source_ton, source_npi, window, per_second, enquire_link_secs, long_messages)"),
            (json!([1]), "settings must be an object"),
        ] {
            assert_eq!(smpp(value), Err(bad(message)));
        }
        assert_eq!(
            check_settings(ProviderKind::WhatsappCloud, Some(&json!({"x": 1}))),
            Err(bad(
                "settings.x is not a whatsapp_cloud setting (they are: messages_per_second)"
            ))
        );
        assert_eq!(
            check_settings(ProviderKind::Sip, Some(&json!({"x": 1}))).map(|_| ()),
            Err(bad(
                "settings.x is not a sip setting (they are: trunk, transport, caller_id, rtp_ports, language, voice)"
            ))
        );
        assert_eq!(check_settings(ProviderKind::Sip, None), Ok(Map::new()));
    }

    #[test]
    fn stored_credentials_read_back_and_never_print() {
        let credentials = check_credentials(
            ProviderKind::Sip,
            &json!({"username": "herald", "password": "s3cret"}),
        )
        .unwrap();
        assert!(!format!("{credentials:?}").contains("s3cret"));
        let back = Credentials::from_stored(&credentials.to_stored()).unwrap();
        assert_eq!(back.get("password"), Some("s3cret"));
    }
}
