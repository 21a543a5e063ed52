//! Webhook nodes: the request the driver makes, and what its answer means
//! for the conversation.
//!
//! Every text of the request (URL, header values, body) is a template,
//! rendered as it is: parameter values are not escaped for URLs or JSON.
//! The method defaults to `POST` and is sent upper-cased; the timeout
//! defaults to 10 s and is kept within 1 to 30 s.
//!
//! An answer leaves by `success` when its status is 2xx and, if the node
//! maps fields of the answer into parameters, its body is JSON. Each
//! mapping reads a JSON pointer (`/order/status`): a string is taken as it
//! is, a number or boolean as its JSON text, an object or array as compact
//! JSON; `null` or a missing field leaves the parameter as it was.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_core::flow::{Header, ResponseMapping};
use serde_json::Value;

use crate::{render, WebhookRequest};

pub const DEFAULT_METHOD: &str = "POST";
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
pub const MAX_TIMEOUT_SECS: u64 = 30;

/// The request a Webhook node makes, rendered against `parameters`.
pub fn request(
    method: Option<&str>,
    url: &str,
    headers: &[Header],
    body: Option<&str>,
    timeout_secs: Option<u64>,
    parameters: &BTreeMap<String, String>,
) -> WebhookRequest {
    WebhookRequest {
        method: method.unwrap_or(DEFAULT_METHOD).to_ascii_uppercase(),
        url: render(url, parameters),
        headers: headers
            .iter()
            .map(|h| (h.name.clone(), render(&h.value, parameters)))
            .collect(),
        body: body.map(|b| render(b, parameters)),
        timeout: Duration::from_secs(
            timeout_secs
                .unwrap_or(DEFAULT_TIMEOUT_SECS)
                .clamp(1, MAX_TIMEOUT_SECS),
        ),
    }
}

/// What an answer sets: `Some` (parameter, value) pairs, in the order of
/// the mappings, when the call succeeded; `None` when it leaves by
/// `failure`.
pub fn read_answer(
    mappings: &[ResponseMapping],
    status: u16,
    body: &str,
) -> Option<Vec<(String, String)>> {
    if !(200..300).contains(&status) {
        return None;
    }
    if mappings.is_empty() {
        return Some(Vec::new());
    }
    let document: Value = serde_json::from_str(body).ok()?;
    Some(
        mappings
            .iter()
            .filter_map(|m| {
                let value = match document.pointer(&m.path)? {
                    Value::Null => return None,
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Some((m.parameter.clone(), value))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(parameter: &str, path: &str) -> ResponseMapping {
        ResponseMapping {
            parameter: parameter.into(),
            path: path.into(),
        }
    }

    #[test]
    fn reads_each_kind_of_json_value() {
        let body = r#"{"s": "ok", "n": 4.5, "i": 7, "b": true, "z": null,
                       "o": {"a": [1, 2]}, "list": ["x", "y"]}"#;
        let mappings = [
            map("S", "/s"),
            map("N", "/n"),
            map("I", "/i"),
            map("B", "/b"),
            map("Z", "/z"),
            map("O", "/o"),
            map("L1", "/list/1"),
            map("MISSING", "/nope"),
            map("BAD", "not a pointer"),
        ];
        let set = read_answer(&mappings, 200, body).unwrap();
        let expected: Vec<(String, String)> = [
            ("S", "ok"),
            ("N", "4.5"),
            ("I", "7"),
            ("B", "true"),
            ("O", r#"{"a":[1,2]}"#),
            ("L1", "y"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(set, expected);
    }

    #[test]
    fn failures() {
        assert_eq!(read_answer(&[], 204, ""), Some(vec![]));
        assert_eq!(read_answer(&[], 299, "not json"), Some(vec![]));
        assert_eq!(read_answer(&[], 300, "{}"), None);
        assert_eq!(read_answer(&[], 500, "{}"), None);
        assert_eq!(read_answer(&[], 199, "{}"), None);
        assert_eq!(read_answer(&[map("A", "/a")], 200, "<html>"), None);
    }

    #[test]
    fn requests_are_rendered_with_defaults() {
        let params: BTreeMap<String, String> = [("ID".to_string(), "42".to_string())].into();
        let headers = [Header {
            name: "X-Id".into(),
            value: "id-$ID".into(),
        }];
        let r = request(
            None,
            "https://x.test/o/$ID",
            &headers,
            Some("{\"id\": $ID}"),
            None,
            &params,
        );
        assert_eq!(r.method, "POST");
        assert_eq!(r.url, "https://x.test/o/42");
        assert_eq!(r.headers, vec![("X-Id".to_string(), "id-42".to_string())]);
        assert_eq!(r.body.as_deref(), Some("{\"id\": 42}"));
        assert_eq!(r.timeout, Duration::from_secs(10));
        let r = request(Some("get"), "u", &[], None, Some(99), &params);
        assert_eq!(
            (r.method.as_str(), r.timeout, r.body),
            ("GET", Duration::from_secs(30), None)
        );
        assert_eq!(
            request(None, "u", &[], None, Some(0), &params).timeout,
            Duration::from_secs(1)
        );
    }
}
