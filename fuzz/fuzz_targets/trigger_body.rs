//! Any JSON object through both trigger body parsers: the body is whatever a
//! client sends, so no input may panic them, and what they accept must keep
//! the promises the server relies on.

#![no_main]

use herald_core::trigger::{parse_messaging, parse_voice};
use herald_core::{Channel, Destination};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(obj) = serde_json::from_slice::<Map<String, Value>>(data) else {
        return;
    };
    if let Ok(body) = parse_voice(&obj) {
        assert_eq!(body.channel, Channel::Voice);
        assert!(body.whatsapp.is_none());
    }
    if let Ok(body) = parse_messaging(&obj) {
        assert_ne!(body.channel, Channel::Voice);
        assert_eq!(body.whatsapp.is_some(), body.channel == Channel::Whatsapp);
        assert!(matches!(body.to, Destination::Phone(_)));
    }
});
