//! Destinations: who a conversation is started with (CONTRACT §1.7).
//!
//! A trigger's `to` is parsed once, at the HTTP boundary, into a [`Destination`];
//! the store, the simulator and the channel adapters take the typed value and
//! never look at the raw string again. Every way of getting `to` wrong is the
//! same [`BadDestination`], because the contract answers all of them with one
//! 400 text and deliberately gives no further detail.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use phonenumber::metadata::DATABASE;
use phonenumber::Metadata;
use serde::{Serialize, Serializer};

/// The only error: its Display is exactly "Bad destination number format".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Bad destination number format")]
pub struct BadDestination;

/// E.164 numbers are at most 15 digits including the country code; the lower
/// bound is the contract's, and keeps short codes and typos out.
const PHONE_DIGITS: std::ops::RangeInclusive<usize> = 7..=15;

/// A phone number in the contract's form: digits only, country code first, no '+'.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Accepts the digits with their country code and one optional leading
    /// `+`; nothing else (no spaces, dashes or non-ASCII digits). The number
    /// must be 7 to 15 digits and a possible number for its country calling
    /// code.
    pub fn parse(s: &str) -> Result<Self, BadDestination> {
        let digits = s.strip_prefix('+').unwrap_or(s);
        // Checking bytes, not chars: other scripts' digits ('٣', '３') are
        // multi-byte and must not slip through `char::is_numeric`.
        if !PHONE_DIGITS.contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadDestination);
        }
        if !is_possible_number(digits) {
            return Err(BadDestination);
        }
        Ok(Self(digits.to_owned()))
    }

    /// The digits, country code first, without a `+`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// libphonenumber's "possible number" test for a string of ASCII digits that
/// starts with a country calling code: the code exists, and the length of the
/// national number is one that numbers of that code can have.
///
/// The `phonenumber` crate (0.3) has no public `is_possible`: its length check
/// lives in a private module, and the general descriptor it loads carries no
/// possible lengths, because upstream libphonenumber computes those at build
/// time as the union of the per-type descriptors' lengths (every type except
/// `noInternationalDialling`), a step this crate does not perform. So the same
/// union is taken here, over every region that shares the calling code.
///
/// Unlike libphonenumber's `isPossibleNumber`, "local only" lengths (numbers
/// diallable only inside their area, without the area code) are not accepted:
/// herald dials from a server, never from within the callee's area, so such a
/// number can't be reached, and accepting it would let through e.g. a UK
/// number with half its digits missing.
fn is_possible_number(digits: &str) -> bool {
    // A calling code never starts with 0 ("01…" would otherwise read as +1).
    if digits.starts_with('0') {
        return false;
    }
    // Calling codes are 1 to 3 digits and prefix-free (ITU-T E.164), so the
    // first prefix that is a known code is the only candidate.
    let Some((regions, national)) = (1..=3).find_map(|len| {
        let code: u16 = digits.get(..len)?.parse().ok()?;
        Some((DATABASE.by_code(&code)?, &digits[len..]))
    }) else {
        return false;
    };
    regions
        .iter()
        .flat_map(|meta| possible_lengths(meta))
        .any(|length| usize::from(length) == national.len())
}

/// The possible national lengths of one region, over all its number types
/// (see [`is_possible_number`] for why the general descriptor is not used).
fn possible_lengths(meta: &Metadata) -> impl Iterator<Item = u16> + '_ {
    let d = meta.descriptors();
    [
        d.fixed_line(),
        d.mobile(),
        d.toll_free(),
        d.premium_rate(),
        d.shared_cost(),
        d.personal_number(),
        d.voip(),
        d.pager(),
        d.uan(),
        d.voicemail(),
    ]
    .into_iter()
    .flatten()
    .flat_map(|desc| desc.possible_length().iter().copied())
}

/// Longest SIP URI accepted: far above any real one, low enough that a `to`
/// can't be used to stuff kilobytes into logs and callbacks.
const MAX_SIP_URI_LEN: usize = 512;

/// A SIP or SIPS URI, the subset of RFC 3261 §25.1 that names a callee:
/// `sip:user@host[:port][;params]`, also with `sips:`.
///
/// - user: unreserved, escaped (`%HH`) and user-unreserved (`&=+$,;?/`)
///   characters, non-empty (no password);
/// - host: a hostname, an IPv4 address or a bracketed IPv6 reference;
/// - port: 1 to 65535;
/// - params: `;name` or `;name=value` of RFC 3261 paramchars.
///
/// Headers (`?…`) are not accepted. The scheme is case-insensitive and kept
/// lowercased; everything else is kept exactly as given (escapes undecoded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SipUri {
    uri: String,
    secure: bool,
    user: String,
    host: String,
    port: Option<u16>,
    params: Vec<(String, Option<String>)>,
}

impl SipUri {
    /// Parses `sip:`/`sips:` URIs of the form described on [`SipUri`].
    pub fn parse(s: &str) -> Result<Self, BadDestination> {
        if s.len() > MAX_SIP_URI_LEN {
            return Err(BadDestination);
        }
        let (secure, rest) = split_sip_scheme(s).ok_or(BadDestination)?;
        // '@' is in no character set after the scheme except as this
        // separator (a user writes it as %40), so the first one is the one.
        let (user, rest) = rest.split_once('@').ok_or(BadDestination)?;
        if user.is_empty() || !is_made_of(user, USER_UNRESERVED) {
            return Err(BadDestination);
        }
        // ';' can't occur in a host or port, so it starts the parameters.
        let (hostport, params) = match rest.split_once(';') {
            Some((hostport, params)) => (hostport, Some(params)),
            None => (rest, None),
        };
        let (host, port) = parse_hostport(hostport).ok_or(BadDestination)?;
        let params = match params {
            Some(params) => parse_params(params).ok_or(BadDestination)?,
            None => Vec::new(),
        };
        let scheme = if secure { "sips" } else { "sip" };
        Ok(Self {
            uri: format!("{scheme}:{}", &s[scheme.len() + 1..]),
            secure,
            user: user.to_owned(),
            host: host.to_owned(),
            port,
            params,
        })
    }

    /// Whether this is a `sips:` URI (TLS end to end).
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The user part as written, escapes undecoded.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The host as written; an IPv6 reference keeps its brackets, as in the
    /// RFC 3261 grammar, so that `host:port` stays unambiguous.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, when one is given.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The URI parameters in order, as written: `(name, value)`.
    pub fn params(&self) -> &[(String, Option<String>)] {
        &self.params
    }

    /// The URI as given, with its scheme lowercased.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

/// `Some(is_secure, rest)` when `s` starts with `sip:` or `sips:` in any case.
fn split_sip_scheme(s: &str) -> Option<(bool, &str)> {
    let starts_with = |prefix: &str| {
        s.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    if starts_with("sip:") {
        Some((false, &s[4..]))
    } else if starts_with("sips:") {
        Some((true, &s[5..]))
    } else {
        None
    }
}

/// RFC 3261 `mark`: with alphanumerics, the `unreserved` set.
const MARK: &[u8] = b"-_.!~*'()";
/// RFC 3261 `user-unreserved`, allowed in the user part besides `unreserved`.
const USER_UNRESERVED: &[u8] = b"&=+$,;?/";
/// RFC 3261 `param-unreserved`, allowed in parameters besides `unreserved`.
const PARAM_UNRESERVED: &[u8] = b"[]/:&+$";

/// Whether `s` is made only of `unreserved` characters, `extra` ones, and
/// well-formed `%HH` escapes.
fn is_made_of(s: &str, extra: &[u8]) -> bool {
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        let ok = match b {
            b'%' => {
                let mut hex = || bytes.next().is_some_and(|h| h.is_ascii_hexdigit());
                hex() && hex()
            }
            _ => b.is_ascii_alphanumeric() || MARK.contains(&b) || extra.contains(&b),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Splits and checks `host[:port]`.
fn parse_hostport(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')? + 1;
        let (host, after) = s.split_at(end);
        host[1..end - 1].parse::<Ipv6Addr>().ok()?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        let (host, port) = match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        };
        if host.parse::<Ipv4Addr>().is_err() && !is_hostname(host) {
            return None;
        }
        (host, port)
    };
    let port = match port {
        None => None,
        Some(port) => Some(parse_port(port)?),
    };
    Some((host, port))
}

/// A decimal port in 1..=65535 (digits only: `u16::from_str` alone would also
/// take a leading '+').
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&port| port != 0)
}

/// RFC 3261 `hostname`: dot-separated labels of alphanumerics and inner
/// hyphens, an optional trailing dot, and a last label starting with a letter
/// (which is what tells `10.0.0.256` apart from a name). Labels are capped at
/// 63 characters and names at 253, as DNS requires.
fn is_hostname(s: &str) -> bool {
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let is_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    name.split('.').all(is_label)
        && name
            .rsplit('.')
            .next()
            .is_some_and(|top| top.starts_with(|c: char| c.is_ascii_alphabetic()))
}

/// Parses what follows the first `;` after the host: `name[=value]` pairs
/// separated by `;`, names and given values non-empty.
fn parse_params(s: &str) -> Option<Vec<(String, Option<String>)>> {
    s.split(';')
        .map(|param| {
            let (name, value) = match param.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (param, None),
            };
            let is_token = |t: &str| !t.is_empty() && is_made_of(t, PARAM_UNRESERVED);
            if !is_token(name) || !value.into_iter().all(is_token) {
                return None;
            }
            Some((name.to_owned(), value.map(str::to_owned)))
        })
        .collect()
}

/// Where a conversation goes: a phone number, or (for voice) a SIP URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Phone(PhoneNumber),
    Sip(SipUri),
}

impl Destination {
    /// Voice endpoint: a phone number or, when it starts with `sip:`/`sips:`
    /// in any case, a SIP URI.
    pub fn parse_voice(s: &str) -> Result<Self, BadDestination> {
        if split_sip_scheme(s).is_some() {
            SipUri::parse(s).map(Self::Sip)
        } else {
            PhoneNumber::parse(s).map(Self::Phone)
        }
    }

    /// Messaging endpoints (SMS, WhatsApp): phone numbers only; a SIP URI is
    /// a [`BadDestination`] like any other non-number.
    pub fn parse_messaging(s: &str) -> Result<Self, BadDestination> {
        PhoneNumber::parse(s).map(Self::Phone)
    }

    /// The canonical text: digits for a phone number, the URI for SIP.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Phone(number) => number.as_str(),
            Self::Sip(uri) => uri.as_str(),
        }
    }

    /// What the simulator keys outcomes on (CONTRACT §8.1): the last two
    /// digits of a phone number, or of a SIP URI's user part when that is all
    /// ASCII digits (at least two); `None` otherwise.
    pub fn last_two_digits(&self) -> Option<u8> {
        let digits = match self {
            Self::Phone(number) => number.as_str(),
            Self::Sip(uri) => uri.user(),
        };
        if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits[digits.len() - 2..].parse().ok()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// All three travel as the plain string the client sent (normalised), which is
// what callbacks, session listings and the store expect.
impl Serialize for Destination {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Serialize for SipUri {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn phone(s: &str) -> Result<String, BadDestination> {
        PhoneNumber::parse(s).map(|p| p.as_str().to_owned())
    }

    #[test]
    fn bad_destination_has_the_contract_text() {
        assert_eq!(BadDestination.to_string(), "Bad destination number format");
    }

    #[test]
    fn phone_numbers_accepted() {
        for (input, digits) in [
            ("447700900123", "447700900123"),
            ("+447700900123", "447700900123"),
            // The seed's voice example (Israel, 10-digit national number).
            ("9725411116037", "9725411116037"),
            ("14155550123", "14155550123"),
            ("+14155550123", "14155550123"),
            // UK 7-digit national number (freephone 0800 1111 style).
            ("448001111", "448001111"),
            // Germany allows national numbers up to 13 digits: 15 in all.
            ("491234567890123", "491234567890123"),
            // A non-geographic calling code (international freephone).
            ("80012345678", "80012345678"),
        ] {
            assert_eq!(phone(input).as_deref(), Ok(digits), "{input}");
        }
    }

    #[test]
    fn phone_numbers_rejected() {
        for input in [
            "",
            "+",
            "++447700900123",
            "+ 447700900123",
            "44 7700 900123",
            "44-7700-900123",
            "44-7700",
            "(44)7700900123",
            "447700900123 ",
            " 447700900123",
            "44770090012a",
            "abcdefghij",
            "447700900123+",
            "4477009001\u{0}3",
            // 6 and 16 digits.
            "123456",
            "+123456",
            "4477009001234567",
            // Arabic-Indic and fullwidth digits.
            "\u{664}\u{664}\u{667}\u{667}\u{660}\u{660}\u{669}\u{660}\u{660}\u{661}\u{662}\u{663}",
            "\u{ff14}\u{ff14}\u{ff17}\u{ff17}\u{ff10}\u{ff10}\u{ff19}\u{ff10}\u{ff10}\u{ff11}\u{ff12}\u{ff13}",
            // UK national numbers are 7, 9 or 10 digits: 6 and 8 aren't.
            "44770090",
            "4477009001",
            // UK, 11 national digits: too long.
            "4477009001234",
            // +1 national numbers are 10 digits (or 7, for some Canadian
            // services): 8 and 12 are neither.
            "141555501",
            "1415555012345",
            // No country calling code starts with 0; "01…" must not read as +1.
            "04155550123",
            "014155550123",
            "0447700900123",
            // Unassigned calling codes.
            "2801234567",
            "9991234567",
        ] {
            assert_eq!(phone(input), Err(BadDestination), "{input:?}");
        }
    }

    #[test]
    fn sip_uris_accepted() {
        let uri = SipUri::parse("sip:alice@example.com").unwrap();
        assert!(!uri.is_secure());
        assert_eq!(
            (uri.user(), uri.host(), uri.port(), uri.params()),
            ("alice", "example.com", None, &[][..])
        );
        assert_eq!(uri.as_str(), "sip:alice@example.com");

        let uri = SipUri::parse("sip:1001@10.0.0.5:5060").unwrap();
        assert_eq!(
            (uri.user(), uri.host(), uri.port()),
            ("1001", "10.0.0.5", Some(5060))
        );

        let uri = SipUri::parse("sips:bob@[2001:db8::1]:5061;transport=tls").unwrap();
        assert!(uri.is_secure());
        assert_eq!(
            (uri.user(), uri.host(), uri.port()),
            ("bob", "[2001:db8::1]", Some(5061))
        );
        assert_eq!(
            uri.params(),
            &[("transport".to_owned(), Some("tls".to_owned()))]
        );
        assert_eq!(uri.as_str(), "sips:bob@[2001:db8::1]:5061;transport=tls");

        let uri = SipUri::parse("SIP:Alice@Example.com").unwrap();
        assert_eq!(uri.as_str(), "sip:Alice@Example.com");
        assert_eq!((uri.user(), uri.host()), ("Alice", "Example.com"));
        assert_eq!(SipUri::parse("SiPs:a@b").unwrap().as_str(), "sips:a@b");

        let uri = SipUri::parse("sip:+1%20(415);ext=1?x/y@host.example.:1;lr;maddr=[::1]").unwrap();
        assert_eq!(uri.user(), "+1%20(415);ext=1?x/y");
        assert_eq!(uri.host(), "host.example.");
        assert_eq!(uri.port(), Some(1));
        assert_eq!(
            uri.params(),
            &[
                ("lr".to_owned(), None),
                ("maddr".to_owned(), Some("[::1]".to_owned()))
            ]
        );

        for ok in [
            "sip:u@h:65535",
            "sip:u@[::ffff:10.0.0.1]",
            "sip:u@a-b.c-d.example",
            "sip:u@x1",
            "sip:u@255.255.255.255",
        ] {
            assert!(SipUri::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn sip_uris_rejected() {
        let too_long = format!("sip:{}@example.com", "a".repeat(500));
        for input in [
            "",
            "sip:",
            "sips:",
            "sip:@host",
            "sip:user@",
            "sip:host",
            "sip:user@host:",
            "sip:user@host:0",
            "sip:user@host:99999",
            "sip:user@host:65536",
            "sip:user@host:+5060",
            "sip:user@host:50a",
            "sip:user@host:5060:5061",
            "sip:user@ho st",
            "sip:us er@host",
            " sip:user@host",
            "sip:user@host ",
            "sip:user@host;",
            "sip:user@host;;lr",
            "sip:user@host;=tls",
            "sip:user@host;transport=",
            "sip:user@host;a=b=c",
            "sip:user@host;na me=x",
            "sip:user@-host",
            "sip:user@host-",
            "sip:user@host..com",
            "sip:user@.host",
            "sip:user@10.0.0.256",
            "sip:user@1.2.3",
            "sip:user@[2001:db8::1",
            "sip:user@[zz::1]",
            "sip:user@[fe80::1%eth0]",
            "sip:user@2001:db8::1",
            "sip:user@[::1]5060",
            "sip:user@host_name",
            "sip:user:password@host",
            "sip:us%zzer@host",
            "sip:user%4@host",
            "sip:user@host?subject=hi",
            "sip:a@b@c",
            "sip:usér@host",
            "sip:user@hóst",
            "tel:123",
            "sip:user@host\u{7}",
            "sip:us\u{0}er@host",
            "sip:user@host\r\nX-Evil: 1",
            "sip:user@host;lr\r\n",
            "sip:user@host\t",
            too_long.as_str(),
        ] {
            assert_eq!(SipUri::parse(input), Err(BadDestination), "{input:?}");
        }
    }

    #[test]
    fn voice_takes_numbers_and_sip_messaging_only_numbers() {
        assert_eq!(
            Destination::parse_voice("+447700900123").unwrap(),
            Destination::Phone(PhoneNumber::parse("447700900123").unwrap())
        );
        let sip = Destination::parse_voice("Sip:alice@example.com").unwrap();
        assert!(matches!(sip, Destination::Sip(_)));
        assert_eq!(sip.as_str(), "sip:alice@example.com");
        assert_eq!(sip.to_string(), "sip:alice@example.com");

        assert_eq!(
            Destination::parse_messaging("sip:alice@example.com"),
            Err(BadDestination)
        );
        assert!(Destination::parse_messaging("447700900123").is_ok());
        // A malformed SIP URI does not fall back to being read as a number.
        assert_eq!(Destination::parse_voice("sip:"), Err(BadDestination));
        assert_eq!(
            Destination::parse_voice("tel:+447700900123"),
            Err(BadDestination)
        );
    }

    #[test]
    fn last_two_digits_key_the_simulator() {
        let voice = |s| Destination::parse_voice(s).unwrap().last_two_digits();
        assert_eq!(voice("447700900190"), Some(90));
        assert_eq!(voice("447700900105"), Some(5));
        assert_eq!(voice("sip:1095@pbx.example"), Some(95));
        assert_eq!(voice("sip:07@pbx.example"), Some(7));
        assert_eq!(voice("sip:7@pbx.example"), None);
        assert_eq!(voice("sip:alice92@pbx.example"), None);
        assert_eq!(voice("sip:+4477009001@pbx.example"), None);
    }

    #[test]
    fn serializes_as_a_plain_string() {
        let phone = Destination::parse_voice("+447700900123").unwrap();
        assert_eq!(serde_json::to_value(&phone).unwrap(), "447700900123");
        let sip = Destination::parse_voice("SIPS:bob@host;transport=tls").unwrap();
        assert_eq!(
            serde_json::to_value(&sip).unwrap(),
            "sips:bob@host;transport=tls"
        );
        let Destination::Sip(uri) = sip else {
            unreachable!()
        };
        assert_eq!(
            serde_json::to_value(&uri).unwrap(),
            "sips:bob@host;transport=tls"
        );
        assert_eq!(
            serde_json::to_value(PhoneNumber::parse("14155550123").unwrap()).unwrap(),
            "14155550123"
        );
    }

    /// Calling codes with their possible national lengths, written down from
    /// libphonenumber's metadata independently of the code under test.
    const KNOWN_CODES: &[(&str, &[usize])] = &[
        ("44", &[7, 9, 10]),
        // 7 is a Canadian UAN length, shared by the whole +1 plan.
        ("1", &[7, 10]),
        ("972", &[7, 8, 9, 10, 11, 12]),
        ("33", &[9]),
        ("800", &[8]),
    ];

    fn known_code_number() -> impl Strategy<Value = (String, bool)> {
        (prop::sample::select(KNOWN_CODES), 1usize..=14).prop_flat_map(|((code, lengths), n)| {
            let possible = lengths.contains(&n) && (7..=15).contains(&(code.len() + n));
            proptest::string::string_regex(&format!("[0-9]{{{n}}}"))
                .unwrap()
                .prop_map(move |national| (format!("{code}{national}"), possible))
        })
    }

    /// One piece of a SIP user or parameter: a plain character or an escape.
    fn sip_token(chars: &'static str) -> impl Strategy<Value = String> {
        prop_oneof![
            4 => proptest::string::string_regex(chars).unwrap(),
            1 => "%[0-9a-fA-F]{2}",
        ]
    }

    fn sip_text(chars: &'static str) -> impl Strategy<Value = String> {
        prop::collection::vec(sip_token(chars), 1..12).prop_map(|parts| parts.concat())
    }

    const USER_CHAR: &str = "[a-zA-Z0-9\\-_.!~*'()&=+$,;?/]";
    const PARAM_CHAR: &str = "[a-zA-Z0-9\\-_.!~*'()\\[\\]/:&+$]";

    fn sip_host() -> impl Strategy<Value = String> {
        let label = "[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?";
        let top = "[a-zA-Z]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?";
        prop_oneof![
            (prop::collection::vec(label, 0..4), top, any::<bool>()).prop_map(
                |(labels, top, dot)| {
                    let mut name = labels.into_iter().map(|l| l + ".").collect::<String>();
                    name.push_str(&top);
                    if dot {
                        name.push('.');
                    }
                    name
                }
            ),
            any::<[u8; 4]>().prop_map(|octets| Ipv4Addr::from(octets).to_string()),
            any::<[u16; 8]>().prop_map(|segments| format!("[{}]", Ipv6Addr::from(segments))),
        ]
    }

    type SipPieces = (
        bool,
        String,
        String,
        Option<u16>,
        Vec<(String, Option<String>)>,
    );

    fn sip_pieces() -> impl Strategy<Value = SipPieces> {
        (
            any::<bool>(),
            sip_text(USER_CHAR),
            sip_host(),
            prop::option::of(1u16..),
            prop::collection::vec(
                (sip_text(PARAM_CHAR), prop::option::of(sip_text(PARAM_CHAR))),
                0..4,
            ),
        )
    }

    fn sip_string(scheme: &str, (_, user, host, port, params): &SipPieces) -> String {
        let mut s = format!("{scheme}:{user}@{host}");
        if let Some(port) = port {
            s.push_str(&format!(":{port}"));
        }
        for (name, value) in params {
            s.push(';');
            s.push_str(name);
            if let Some(value) = value {
                s.push('=');
                s.push_str(value);
            }
        }
        s
    }

    proptest! {
        #[test]
        fn digit_strings_parse_to_themselves_or_fail(digits in "[0-9]{7,15}") {
            if let Ok(number) = PhoneNumber::parse(&digits) {
                prop_assert_eq!(number.as_str(), digits.as_str());
            }
        }

        #[test]
        fn possibility_follows_the_calling_code((number, possible) in known_code_number()) {
            prop_assert_eq!(PhoneNumber::parse(&number).is_ok(), possible, "{}", number);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            let _ = PhoneNumber::parse(&s);
            let _ = SipUri::parse(&s);
            let _ = Destination::parse_voice(&s);
            let _ = Destination::parse_messaging(&s);
            let sip = format!("sip:{s}");
            let _ = SipUri::parse(&sip);
        }

        #[test]
        fn sip_shaped_strings_never_panic(s in "(?i:sips?):[a-z0-9@:;=\\[\\]%.+-]{0,40}") {
            let _ = SipUri::parse(&s);
        }

        #[test]
        fn a_plus_prefix_never_changes_the_result(
            s in prop_oneof!["[0-9]{0,17}", any::<String>()]
                .prop_filter("starts with +", |s| !s.starts_with('+'))
        ) {
            prop_assert_eq!(PhoneNumber::parse(&s), PhoneNumber::parse(&format!("+{s}")));
        }

        #[test]
        fn phone_numbers_round_trip((number, _) in known_code_number()) {
            if let Ok(parsed) = Destination::parse_messaging(&number) {
                prop_assert_eq!(Destination::parse_messaging(parsed.as_str()), Ok(parsed.clone()));
                prop_assert_eq!(Destination::parse_voice(parsed.as_str()), Ok(parsed));
            }
        }

        #[test]
        fn well_formed_sip_uris_parse_into_their_pieces(
            pieces in sip_pieces(),
            upper in any::<bool>(),
        ) {
            let (secure, user, host, port, params) = &pieces;
            let scheme = if *secure { "sips" } else { "sip" };
            let written_scheme = if upper { scheme.to_uppercase() } else { scheme.to_owned() };
            let written = sip_string(&written_scheme, &pieces);
            let uri = SipUri::parse(&written);
            prop_assert!(uri.is_ok(), "{}", written);
            let uri = uri.unwrap();
            prop_assert_eq!(uri.is_secure(), *secure);
            prop_assert_eq!(uri.user(), user.as_str());
            prop_assert_eq!(uri.host(), host.as_str());
            prop_assert_eq!(uri.port(), *port);
            prop_assert_eq!(uri.params(), params.as_slice());
            prop_assert_eq!(uri.as_str(), sip_string(scheme, &pieces));

            let again = SipUri::parse(uri.as_str());
            prop_assert_eq!(again.as_ref(), Ok(&uri));
            let voice = Destination::parse_voice(&written);
            prop_assert_eq!(voice, Ok(Destination::Sip(uri)));
        }
    }
}
