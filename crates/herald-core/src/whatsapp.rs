//! WhatsApp template messages: the `components` a trigger fills a template
//! with (CONTRACT §3.3) and the placeholders of registered template texts
//! (§3.4, §4.4).
//!
//! `components` arrives as whatever JSON a client sent, so it is checked by
//! hand rather than by `serde`: each failure names the exact path at fault
//! (`components[1].parameters[0].text is required`), which is what the
//! contract's 400 answers carry. Once parsed, components serialize in the
//! WhatsApp Cloud API's own wire shape, ready to be stored and forwarded.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

/// A component validation failure; the message names the path at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ComponentError(pub String);

/// WhatsApp accepts a handful of components per message; more than this is a
/// client bug, and bounding it bounds what one request can make us store.
const MAX_COMPONENTS: usize = 10;
/// Per component, same reasoning.
const MAX_PARAMETERS: usize = 20;
/// A template body is at most 1024 characters on WhatsApp, so no single text
/// parameter can usefully be longer; refusing here beats a late provider error.
const MAX_TEXT_CHARS: usize = 1024;
/// Button indexes are 0-based positions among a template's buttons, of which
/// WhatsApp allows at most ten.
const MAX_BUTTON_INDEX: u8 = 9;

/// Which part of the template a component fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ComponentType {
    Header,
    Body,
    Button,
}

impl ComponentType {
    /// The wire name, as used in the contract's error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Body => "body",
            Self::Button => "button",
        }
    }
}

impl fmt::Display for ComponentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One component of a template message, checked.
///
/// Only [`parse_components`] (and deserialization, which runs the same
/// checks) makes one, so a button always has its `sub_type` and `index`, and
/// a header or body never has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "Value")]
pub struct Component {
    #[serde(rename = "type")]
    kind: ComponentType,
    /// Buttons only: `quick_reply`, `url`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    sub_type: Option<String>,
    /// Buttons only: the button's position in the template, 0 to 9.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 9)]
    index: Option<u8>,
    parameters: Vec<Parameter>,
}

impl Component {
    /// Which part of the template this component fills.
    pub fn kind(&self) -> ComponentType {
        self.kind
    }

    /// A button's sub-type (`quick_reply`, `url`, …); `None` for headers and bodies.
    pub fn sub_type(&self) -> Option<&str> {
        self.sub_type.as_deref()
    }

    /// A button's index; `None` for headers and bodies.
    pub fn index(&self) -> Option<u8> {
        self.index
    }

    /// The parameters, in order.
    pub fn parameters(&self) -> &[Parameter] {
        &self.parameters
    }

    /// Number of `text` parameters: what must match the template's
    /// placeholders.
    pub fn text_parameter_count(&self) -> usize {
        self.parameters
            .iter()
            .filter(|p| matches!(p, Parameter::Text { .. }))
            .count()
    }
}

impl TryFrom<Value> for Component {
    type Error = ComponentError;

    /// Deserializing a stored component runs the request checks again, so
    /// the store can't be a way around them.
    fn try_from(value: Value) -> Result<Self, Self::Error> {
        parse_component(&value, "component")
    }
}

/// A value for one placeholder or media slot of a template.
///
/// Serialized as WhatsApp does: the `type`, then the type's fields, nested
/// under the type's name except for `text`
/// (`{"type":"currency","currency":{"fallback_value":…,"code":…,"amount_1000":…}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WireParameter", from = "WireParameter")]
pub enum Parameter {
    Text {
        text: String,
    },
    Currency {
        fallback_value: String,
        code: String,
        amount_1000: i64,
    },
    DateTime {
        fallback_value: String,
    },
    Image {
        link: String,
    },
    Document {
        link: String,
        filename: Option<String>,
    },
    Video {
        link: String,
    },
    /// What a quick-reply button sends back when pressed.
    Payload {
        payload: String,
    },
}

/// [`Parameter`]'s wire shape. Kept apart so that the public enum stays flat
/// and pleasant to match on, while the JSON nests like WhatsApp's.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireParameter {
    Text {
        text: String,
    },
    Currency {
        #[schema(inline)]
        currency: WireCurrency,
    },
    DateTime {
        #[schema(inline)]
        date_time: WireDateTime,
    },
    Image {
        #[schema(inline)]
        image: WireMedia,
    },
    Document {
        #[schema(inline)]
        document: WireDocument,
    },
    Video {
        #[schema(inline)]
        video: WireMedia,
    },
    Payload {
        payload: String,
    },
}

#[derive(Serialize, Deserialize, ToSchema)]
struct WireCurrency {
    fallback_value: String,
    code: String,
    amount_1000: i64,
}

#[derive(Serialize, Deserialize, ToSchema)]
struct WireDateTime {
    fallback_value: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
struct WireMedia {
    link: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
struct WireDocument {
    link: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filename: Option<String>,
}

impl From<Parameter> for WireParameter {
    fn from(p: Parameter) -> Self {
        match p {
            Parameter::Text { text } => Self::Text { text },
            Parameter::Currency {
                fallback_value,
                code,
                amount_1000,
            } => Self::Currency {
                currency: WireCurrency {
                    fallback_value,
                    code,
                    amount_1000,
                },
            },
            Parameter::DateTime { fallback_value } => Self::DateTime {
                date_time: WireDateTime { fallback_value },
            },
            Parameter::Image { link } => Self::Image {
                image: WireMedia { link },
            },
            Parameter::Document { link, filename } => Self::Document {
                document: WireDocument { link, filename },
            },
            Parameter::Video { link } => Self::Video {
                video: WireMedia { link },
            },
            Parameter::Payload { payload } => Self::Payload { payload },
        }
    }
}

impl From<WireParameter> for Parameter {
    fn from(p: WireParameter) -> Self {
        match p {
            WireParameter::Text { text } => Self::Text { text },
            WireParameter::Currency { currency } => Self::Currency {
                fallback_value: currency.fallback_value,
                code: currency.code,
                amount_1000: currency.amount_1000,
            },
            WireParameter::DateTime { date_time } => Self::DateTime {
                fallback_value: date_time.fallback_value,
            },
            WireParameter::Image { image } => Self::Image { link: image.link },
            WireParameter::Document { document } => Self::Document {
                link: document.link,
                filename: document.filename,
            },
            WireParameter::Video { video } => Self::Video { link: video.link },
            WireParameter::Payload { payload } => Self::Payload { payload },
        }
    }
}

// The OpenAPI schema must describe the JSON, not the Rust enum, so it is the
// wire type's, published under the public name.
impl PartialSchema for Parameter {
    fn schema() -> RefOr<Schema> {
        WireParameter::schema()
    }
}

impl ToSchema for Parameter {
    fn name() -> std::borrow::Cow<'static, str> {
        "Parameter".into()
    }
}

/// Validates a request's `components` value (anything a client may have
/// sent) and returns the typed components.
///
/// `null` counts as absent (CONTRACT §2.2) and gives no components. Unknown
/// fields are ignored, as everywhere in the API.
pub fn parse_components(value: &Value) -> Result<Vec<Component>, ComponentError> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(fail("components", "must be an array")),
    };
    if items.len() > MAX_COMPONENTS {
        return Err(fail(
            "components",
            format_args!("must have at most {MAX_COMPONENTS} items"),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_component(item, &format!("components[{i}]")))
        .collect()
}

fn parse_component(value: &Value, path: &str) -> Result<Component, ComponentError> {
    let fields = Fields::of(value, path)?;
    let kind = match fields.required("type")?.as_str() {
        Some("header") => ComponentType::Header,
        Some("body") => ComponentType::Body,
        Some("button") => ComponentType::Button,
        _ => {
            return Err(fields.fail("type", "must be one of header, body, button"));
        }
    };
    // A header or body carrying `sub_type`/`index` is tolerated like any other
    // unknown field, and dropped so that it is not forwarded.
    let (sub_type, index) = if kind == ComponentType::Button {
        let sub_type = fields.string("sub_type")?;
        if sub_type.is_empty() {
            return Err(fields.fail("sub_type", "must not be empty"));
        }
        (Some(sub_type.to_owned()), Some(fields.button_index()?))
    } else {
        (None, None)
    };
    let parameters = match fields.get("parameters") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_PARAMETERS {
                return Err(fields.fail(
                    "parameters",
                    format_args!("must have at most {MAX_PARAMETERS} items"),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(j, item)| parse_parameter(item, &format!("{path}.parameters[{j}]")))
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(fields.fail("parameters", "must be an array")),
    };
    Ok(Component {
        kind,
        sub_type,
        index,
        parameters,
    })
}

fn parse_parameter(value: &Value, path: &str) -> Result<Parameter, ComponentError> {
    let fields = Fields::of(value, path)?;
    let kind = fields.required("type")?.as_str();
    Ok(match kind {
        Some("text") => {
            let text = fields.string("text")?;
            if text.chars().count() > MAX_TEXT_CHARS {
                return Err(fields.fail(
                    "text",
                    format_args!("must be at most {MAX_TEXT_CHARS} characters"),
                ));
            }
            Parameter::Text {
                text: text.to_owned(),
            }
        }
        Some("currency") => {
            let currency = fields.object("currency")?;
            Parameter::Currency {
                fallback_value: currency.string("fallback_value")?.to_owned(),
                code: currency.string("code")?.to_owned(),
                amount_1000: currency.integer("amount_1000")?,
            }
        }
        Some("date_time") => Parameter::DateTime {
            fallback_value: fields
                .object("date_time")?
                .string("fallback_value")?
                .to_owned(),
        },
        Some("image") => Parameter::Image {
            link: fields.object("image")?.string("link")?.to_owned(),
        },
        Some("document") => {
            let document = fields.object("document")?;
            Parameter::Document {
                link: document.string("link")?.to_owned(),
                filename: document.optional_string("filename")?.map(str::to_owned),
            }
        }
        Some("video") => Parameter::Video {
            link: fields.object("video")?.string("link")?.to_owned(),
        },
        Some("payload") => Parameter::Payload {
            payload: fields.string("payload")?.to_owned(),
        },
        _ => {
            return Err(fields.fail(
                "type",
                "must be one of text, currency, date_time, image, document, video, payload",
            ))
        }
    })
}

/// A JSON object read field by field, knowing its own path for messages.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Fields<'a> {
    fn of(value: &'a Value, path: &str) -> Result<Self, ComponentError> {
        match value {
            Value::Object(map) => Ok(Self {
                map,
                path: path.to_owned(),
            }),
            _ => Err(fail(path, "must be an object")),
        }
    }

    fn fail(&self, field: &str, what: impl fmt::Display) -> ComponentError {
        fail(format_args!("{}.{field}", self.path), what)
    }

    /// A field's value; `null` is treated as absent, as in the rest of the
    /// contract (§2.2).
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn required(&self, field: &str) -> Result<&'a Value, ComponentError> {
        self.get(field)
            .ok_or_else(|| self.fail(field, "is required"))
    }

    fn string(&self, field: &str) -> Result<&'a str, ComponentError> {
        let text = self
            .required(field)?
            .as_str()
            .ok_or_else(|| self.fail(field, "must be a string"))?;
        self.no_nul(field, text)
    }

    fn optional_string(&self, field: &str) -> Result<Option<&'a str>, ComponentError> {
        self.get(field)
            .map(|v| {
                let text = v
                    .as_str()
                    .ok_or_else(|| self.fail(field, "must be a string"))?;
                self.no_nul(field, text)
            })
            .transpose()
    }

    /// Every text of a component is free text (CONTRACT §3.3).
    fn no_nul(&self, field: &str, text: &'a str) -> Result<&'a str, ComponentError> {
        if text.contains('\0') {
            return Err(self.fail(field, crate::text::NO_NUL));
        }
        Ok(text)
    }

    fn integer(&self, field: &str) -> Result<i64, ComponentError> {
        self.required(field)?
            .as_i64()
            .ok_or_else(|| self.fail(field, "must be an integer"))
    }

    fn object(&self, field: &str) -> Result<Fields<'a>, ComponentError> {
        Fields::of(self.required(field)?, &format!("{}.{field}", self.path))
    }

    /// A button's `index`: an integer, or a string of digits because that is
    /// how WhatsApp's own documentation writes it and clients copy from there.
    fn button_index(&self) -> Result<u8, ComponentError> {
        let index = match self.required("index")? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                // Too many digits to fit is still "a non-negative integer",
                // just too large.
                Some(s.parse().unwrap_or(u64::MAX))
            }
            _ => None,
        }
        .ok_or_else(|| self.fail("index", "must be a non-negative integer"))?;
        u8::try_from(index)
            .ok()
            .filter(|&i| i <= MAX_BUTTON_INDEX)
            .ok_or_else(|| self.fail("index", format_args!("must be at most {MAX_BUTTON_INDEX}")))
    }
}

fn fail(path: impl fmt::Display, what: impl fmt::Display) -> ComponentError {
    ComponentError(format!("{path} {what}"))
}

/// Counts the numbered placeholders `{{1}}`, `{{2}}`, … of a registered
/// template text.
///
/// Returns `n` when the placeholders are exactly `{{1}}` to `{{n}}` (each may
/// repeat, in any order); `0` for a text without any. Gaps, `{{0}}`, anything
/// but a plain number between the braces, and unbalanced `{{`/`}}` are errors
/// with a message for the person registering the template. Single braces are
/// ordinary text.
pub fn placeholder_count(text: &str) -> Result<usize, String> {
    let mut seen = BTreeSet::new();
    let mut rest = text;
    loop {
        let open = rest.find("{{");
        let close = rest.find("}}");
        match (open, close) {
            (None, None) => break,
            (Some(open), Some(close)) if open < close => {
                let inner = &rest[open + 2..close];
                seen.insert(placeholder_number(inner)?);
                rest = &rest[close + 2..];
            }
            (Some(_), None) => {
                return Err("a placeholder opened with {{ is never closed with }}".to_owned())
            }
            (_, Some(_)) => return Err("}} without a matching {{".to_owned()),
        }
    }
    // The set is ordered and holds no 0, so it is exactly 1..=n when its
    // largest element equals its size.
    match seen.last() {
        None => Ok(0),
        Some(&max) if max == seen.len() => Ok(max),
        Some(_) => Err("placeholders must be numbered from {{1}} without gaps".to_owned()),
    }
}

/// The number inside one `{{…}}`.
fn placeholder_number(inner: &str) -> Result<usize, String> {
    let is_number = !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit());
    if !is_number {
        return Err(format!("placeholder {{{{{inner}}}}} is not a number"));
    }
    if inner.starts_with('0') {
        return Err(format!(
            "placeholder {{{{{inner}}}}} is not allowed: placeholders are numbered from {{{{1}}}}, without leading zeros"
        ));
    }
    // A number too large for usize can't be gapless anyway.
    inner
        .parse()
        .map_err(|_| "placeholders must be numbered from {{1}} without gaps".to_owned())
}

/// Sum of text parameters over the components of the given kind (header or
/// body): what is compared with the template's placeholder count.
pub fn text_parameters(components: &[Component], kind: ComponentType) -> usize {
    components
        .iter()
        .filter(|c| c.kind == kind)
        .map(Component::text_parameter_count)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn error(value: Value) -> String {
        parse_components(&value).unwrap_err().0
    }

    fn text(s: &str) -> Parameter {
        Parameter::Text { text: s.to_owned() }
    }

    #[test]
    fn the_seed_example_parses() {
        let components = parse_components(&json!([
            {"type": "header", "parameters": [{"type": "text", "text": "PARAM1_VALUE"}]},
            {"type": "body", "parameters": [{"type": "text", "text": "PARAM2_VALUE"}]}
        ]))
        .unwrap();
        assert_eq!(components.len(), 2);
        assert_eq!(components[0].kind(), ComponentType::Header);
        assert_eq!(components[0].parameters(), [text("PARAM1_VALUE")]);
        assert_eq!(components[1].kind(), ComponentType::Body);
        assert_eq!(components[1].parameters(), [text("PARAM2_VALUE")]);
        assert_eq!(text_parameters(&components, ComponentType::Header), 1);
        assert_eq!(text_parameters(&components, ComponentType::Body), 1);
        assert_eq!(text_parameters(&components, ComponentType::Button), 0);
    }

    #[test]
    fn every_parameter_type_parses_and_serializes_in_the_wire_shape() {
        let wire = json!([
            {"type": "header", "parameters": [
                {"type": "document", "document": {"link": "https://example.com/a.pdf", "filename": "a.pdf"}}
            ]},
            {"type": "body", "parameters": [
                {"type": "text", "text": "Ada"},
                {"type": "currency", "currency": {"fallback_value": "$12.50", "code": "USD", "amount_1000": 12500}},
                {"type": "date_time", "date_time": {"fallback_value": "May 1st"}},
                {"type": "text", "text": "again"}
            ]},
            {"type": "button", "sub_type": "url", "index": 1, "parameters": [
                {"type": "text", "text": "order/42"}
            ]},
            {"type": "header", "parameters": [
                {"type": "image", "image": {"link": "https://example.com/a.png"}},
                {"type": "video", "video": {"link": "https://example.com/a.mp4"}},
                {"type": "document", "document": {"link": "https://example.com/b.pdf"}}
            ]}
        ]);
        let components = parse_components(&wire).unwrap();
        assert_eq!(
            components[1].parameters()[1],
            Parameter::Currency {
                fallback_value: "$12.50".into(),
                code: "USD".into(),
                amount_1000: 12500
            }
        );
        assert_eq!(components[1].text_parameter_count(), 2);
        assert_eq!(components[2].kind(), ComponentType::Button);
        assert_eq!(components[2].sub_type(), Some("url"));
        assert_eq!(components[2].index(), Some(1));
        assert_eq!(components[0].sub_type(), None);
        assert_eq!(text_parameters(&components, ComponentType::Header), 0);
        assert_eq!(text_parameters(&components, ComponentType::Body), 2);
        assert_eq!(serde_json::to_value(&components).unwrap(), wire);
    }

    #[test]
    fn lenient_where_clients_differ() {
        let components = parse_components(&json!([
            // No parameters at all, and null ones.
            {"type": "body"},
            {"type": "header", "parameters": null},
            // Unknown fields, and button-only fields on a body, are dropped.
            {"type": "body", "sub_type": "x", "index": 3, "extra": true,
             "parameters": [{"type": "text", "text": "t", "note": 1}]},
            // WhatsApp's documentation writes the index as a string.
            {"type": "button", "sub_type": "quick_reply", "index": "0"}
        ]))
        .unwrap();
        assert!(components[0].parameters().is_empty());
        assert!(components[1].parameters().is_empty());
        assert_eq!(components[2].sub_type(), None);
        assert_eq!(components[2].index(), None);
        assert_eq!(components[3].index(), Some(0));
        assert_eq!(
            serde_json::to_value(&components[2]).unwrap(),
            json!({"type": "body", "parameters": [{"type": "text", "text": "t"}]})
        );
        assert_eq!(parse_components(&Value::Null), Ok(vec![]));
        assert_eq!(parse_components(&json!([])), Ok(vec![]));
    }

    #[test]
    fn each_error_names_its_path() {
        let long = "x".repeat(MAX_TEXT_CHARS + 1);
        let eleven = vec![json!({"type": "body"}); 11];
        let twenty_one = vec![json!({"type": "text", "text": "t"}); 21];
        let cases = [
            (json!({}), "components must be an array"),
            (json!("body"), "components must be an array"),
            (json!(eleven), "components must have at most 10 items"),
            (json!([1]), "components[0] must be an object"),
            (json!([{"type": "body"}, []]), "components[1] must be an object"),
            (json!([{}]), "components[0].type is required"),
            (json!([{"type": null}]), "components[0].type is required"),
            (json!([{"type": "footer"}]), "components[0].type must be one of header, body, button"),
            (json!([{"type": "Body"}]), "components[0].type must be one of header, body, button"),
            (json!([{"type": 1}]), "components[0].type must be one of header, body, button"),
            (
                json!([{"type": "body"}, {"type": "body"}, {"type": "button", "index": 0}]),
                "components[2].sub_type is required",
            ),
            (
                json!([{"type": "button", "sub_type": 1, "index": 0}]),
                "components[0].sub_type must be a string",
            ),
            (
                json!([{"type": "button", "sub_type": "", "index": 0}]),
                "components[0].sub_type must not be empty",
            ),
            (
                json!([{"type": "button", "sub_type": "url"}]),
                "components[0].index is required",
            ),
            (
                json!([{"type": "body"}, {"type": "body"}, {"type": "button", "sub_type": "url", "index": -1}]),
                "components[2].index must be a non-negative integer",
            ),
            (
                json!([{"type": "button", "sub_type": "url", "index": 1.5}]),
                "components[0].index must be a non-negative integer",
            ),
            (
                json!([{"type": "button", "sub_type": "url", "index": "one"}]),
                "components[0].index must be a non-negative integer",
            ),
            (
                json!([{"type": "button", "sub_type": "url", "index": "-1"}]),
                "components[0].index must be a non-negative integer",
            ),
            (
                json!([{"type": "button", "sub_type": "url", "index": true}]),
                "components[0].index must be a non-negative integer",
            ),
            (
                json!([{"type": "button", "sub_type": "url", "index": 10}]),
                "components[0].index must be at most 9",
            ),
            (
                json!([{"type": "button", "sub_type": "url", "index": "99999999999999999999999"}]),
                "components[0].index must be at most 9",
            ),
            (
                json!([{"type": "body", "parameters": {}}]),
                "components[0].parameters must be an array",
            ),
            (
                json!([{"type": "body", "parameters": twenty_one}]),
                "components[0].parameters must have at most 20 items",
            ),
            (
                json!([{"type": "body", "parameters": ["x"]}]),
                "components[0].parameters[0] must be an object",
            ),
            (
                json!([{"type": "body", "parameters": [{"text": "x"}]}]),
                "components[0].parameters[0].type is required",
            ),
            (
                json!([{"type": "body", "parameters": [{"type": "text", "text": "a"}, {"type": "sticker"}]}]),
                "components[0].parameters[1].type must be one of text, currency, date_time, image, document, video, payload",
            ),
            (
                json!([{"type": "body"}, {"type": "body", "parameters": [{"type": "text"}]}]),
                "components[1].parameters[0].text is required",
            ),
            (
                json!([{"type": "body", "parameters": [{"type": "text", "text": 5}]}]),
                "components[0].parameters[0].text must be a string",
            ),
            (
                json!([{"type": "body", "parameters": [{"type": "text", "text": long}]}]),
                "components[0].parameters[0].text must be at most 1024 characters",
            ),
            (
                json!([{"type": "body", "parameters": [{"type": "currency"}]}]),
                "components[0].parameters[0].currency is required",
            ),
            (
                json!([{"type": "body", "parameters": [{"type": "currency", "currency": "USD"}]}]),
                "components[0].parameters[0].currency must be an object",
            ),
            (
                json!([{"type": "body", "parameters": [{"type": "currency", "currency": {"code": "USD", "amount_1000": 1}}]}]),
                "components[0].parameters[0].currency.fallback_value is required",
            ),
            (
                json!([{"type": "body", "parameters": [{"type": "currency", "currency": {"fallback_value": "$1", "amount_1000": 1}}]}]),
                "components[0].parameters[0].currency.code is required",
            ),
            (
                json!([{"type": "body", "parameters": [{"type": "currency", "currency": {"fallback_value": "$1", "code": "USD"}}]}]),
                "components[0].parameters[0].currency.amount_1000 is required",
            ),
            (
                json!([{"type": "body", "parameters": [{"type": "currency", "currency": {"fallback_value": "$1", "code": "USD", "amount_1000": "1000"}}]}]),
                "components[0].parameters[0].currency.amount_1000 must be an integer",
            ),
            (
                json!([{"type": "body", "parameters": [{"type": "currency", "currency": {"fallback_value": "$1", "code": "USD", "amount_1000": 1.5}}]}]),
                "components[0].parameters[0].currency.amount_1000 must be an integer",
            ),
            (
                json!([{"type": "body", "parameters": [{"type": "date_time", "date_time": {}}]}]),
                "components[0].parameters[0].date_time.fallback_value is required",
            ),
            (
                json!([{"type": "header", "parameters": [{"type": "image", "image": {"link": 1}}]}]),
                "components[0].parameters[0].image.link must be a string",
            ),
            (
                json!([{"type": "header", "parameters": [{"type": "video", "video": {}}]}]),
                "components[0].parameters[0].video.link is required",
            ),
            (
                json!([{"type": "header", "parameters": [{"type": "document", "document": {"link": "l", "filename": 1}}]}]),
                "components[0].parameters[0].document.filename must be a string",
            ),
            (
                json!([{"type": "header", "parameters": [{"type": "document"}]}]),
                "components[0].parameters[0].document is required",
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(error(value.clone()), expected, "{value}");
        }
    }

    #[test]
    fn text_limit_counts_characters_not_bytes() {
        let at_limit = "é".repeat(MAX_TEXT_CHARS);
        let value = json!([{"type": "body", "parameters": [{"type": "text", "text": at_limit}]}]);
        assert!(parse_components(&value).is_ok());
    }

    #[test]
    fn deserializing_runs_the_same_checks() {
        let ok: Vec<Component> = serde_json::from_value(json!([
            {"type": "button", "sub_type": "quick_reply", "index": 2, "parameters": []}
        ]))
        .unwrap();
        assert_eq!(ok[0].index(), Some(2));
        let err = serde_json::from_value::<Component>(json!({"type": "button", "sub_type": "url"}))
            .unwrap_err();
        assert_eq!(err.to_string(), "component.index is required");
    }

    #[test]
    fn quick_reply_buttons_carry_a_payload() {
        let parsed = parse_components(&json!([
            {"type": "button", "sub_type": "quick_reply", "index": 0,
             "parameters": [{"type": "payload", "payload": "CONFIRM"}]}
        ]))
        .unwrap();
        assert_eq!(
            parsed[0].parameters(),
            [Parameter::Payload {
                payload: "CONFIRM".into()
            }]
        );
        assert_eq!(parsed[0].text_parameter_count(), 0);
        let err = parse_components(&json!([
            {"type": "button", "sub_type": "quick_reply", "index": 0, "parameters": [{"type": "payload"}]}
        ]))
        .unwrap_err();
        assert_eq!(err.0, "components[0].parameters[0].payload is required");
    }

    #[test]
    fn parameter_serde_is_the_wire_shape() {
        let p = Parameter::Document {
            link: "l".into(),
            filename: None,
        };
        let wire = json!({"type": "document", "document": {"link": "l"}});
        assert_eq!(serde_json::to_value(&p).unwrap(), wire);
        assert_eq!(serde_json::from_value::<Parameter>(wire).unwrap(), p);
    }

    #[test]
    fn schema_describes_the_wire_shape() {
        let schema = serde_json::to_value(Component::schema()).unwrap();
        assert!(schema["properties"]["type"].is_object(), "{schema}");
        assert_eq!(Parameter::name(), "Parameter");
        let parameter = serde_json::to_value(Parameter::schema())
            .unwrap()
            .to_string();
        for field in [
            "currency",
            "date_time",
            "amount_1000",
            "fallback_value",
            "filename",
        ] {
            assert!(
                parameter.contains(field),
                "{field} missing from {parameter}"
            );
        }
    }

    #[test]
    fn placeholder_counts() {
        for (text, n) in [
            ("", 0),
            ("Hello there", 0),
            ("Hello {name}, {", 0),
            ("Hello {{1}}", 1),
            ("{{2}} then {{1}}", 2),
            ("{{1}}{{1}}{{1}}", 1),
            ("Dear {{1}}, your order {{2}} ships {{3}}. Thanks {{1}}!", 3),
            ("{{1}}}", 1),
            ("{ {{1}} }", 1),
        ] {
            assert_eq!(placeholder_count(text), Ok(n), "{text}");
        }
    }

    #[test]
    fn placeholder_errors() {
        let gap = "placeholders must be numbered from {{1}} without gaps";
        for (text, message) in [
            ("{{2}}", gap),
            ("{{1}} {{3}}", gap),
            ("{{99999999999999999999999999}}", gap),
            ("{{0}}", "placeholder {{0}} is not allowed: placeholders are numbered from {{1}}, without leading zeros"),
            ("{{01}}", "placeholder {{01}} is not allowed: placeholders are numbered from {{1}}, without leading zeros"),
            ("{{x}}", "placeholder {{x}} is not a number"),
            ("{{}}", "placeholder {{}} is not a number"),
            ("{{ 1 }}", "placeholder {{ 1 }} is not a number"),
            ("{{-1}}", "placeholder {{-1}} is not a number"),
            ("{{{1}}}", "placeholder {{{1}} is not a number"),
            ("Hi {{1", "a placeholder opened with {{ is never closed with }}"),
            ("Hi {{1}} and {{2", "a placeholder opened with {{ is never closed with }}"),
            ("Hi 1}}", "}} without a matching {{"),
            ("}}{{1}}", "}} without a matching {{"),
            ("{{1}}}}", "}} without a matching {{"),
        ] {
            assert_eq!(placeholder_count(text), Err(message.to_owned()), "{text}");
        }
    }

    /// Arbitrary JSON, nested a few levels deep.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
            // Words that steer the parser down its deeper paths.
            prop::sample::select(vec![
                "header",
                "body",
                "button",
                "text",
                "currency",
                "date_time",
                "image",
                "document",
                "video",
                "url",
                "0",
                "9",
                "10",
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            let key = prop::sample::select(vec![
                "type",
                "parameters",
                "sub_type",
                "index",
                "text",
                "currency",
                "date_time",
                "image",
                "document",
                "video",
                "payload",
                "link",
                "filename",
                "fallback_value",
                "code",
                "amount_1000",
                "other",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(key, inner, 0..6).prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    fn valid_parameter() -> impl Strategy<Value = Value> {
        // Any text but NUL, which no parameter may hold.
        let s = || "[^\\x00]{0,12}";
        prop_oneof![
            s().prop_map(|text| json!({"type": "text", "text": text})),
            (s(), "[A-Z]{3}", any::<i64>()).prop_map(|(f, c, a)| {
                json!({"type": "currency", "currency": {"fallback_value": f, "code": c, "amount_1000": a}})
            }),
            s().prop_map(|f| json!({"type": "date_time", "date_time": {"fallback_value": f}})),
            s().prop_map(|l| json!({"type": "image", "image": {"link": l}})),
            s().prop_map(|l| json!({"type": "video", "video": {"link": l}})),
            s().prop_map(|p| json!({"type": "payload", "payload": p})),
            (s(), prop::option::of(s())).prop_map(|(l, f)| match f {
                Some(f) => json!({"type": "document", "document": {"link": l, "filename": f}}),
                None => json!({"type": "document", "document": {"link": l}}),
            }),
        ]
    }

    fn valid_components() -> impl Strategy<Value = Value> {
        let component = (
            0..3u8,
            "[a-z_]{1,12}",
            0..=MAX_BUTTON_INDEX,
            prop::collection::vec(valid_parameter(), 0..=MAX_PARAMETERS),
        )
            .prop_map(|(kind, sub_type, index, parameters)| match kind {
                0 => json!({"type": "header", "parameters": parameters}),
                1 => json!({"type": "body", "parameters": parameters}),
                _ => json!({"type": "button", "sub_type": sub_type, "index": index, "parameters": parameters}),
            });
        prop::collection::vec(component, 0..=MAX_COMPONENTS).prop_map(Value::from)
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics(value in any_json()) {
            let _ = parse_components(&value);
            let _ = parse_components(&Value::from(vec![value.clone()]));
            let _ = parse_components(&json!([{"type": "body", "parameters": [value]}]));
        }

        #[test]
        fn parsed_components_serialize_back_to_themselves(value in valid_components()) {
            let components = parse_components(&value).unwrap();
            let wire = serde_json::to_value(&components).unwrap();
            prop_assert_eq!(&wire, &value);
            prop_assert_eq!(&parse_components(&wire).unwrap(), &components);
            let deserialized: Vec<Component> = serde_json::from_value(wire).unwrap();
            prop_assert_eq!(deserialized, components);
        }

        #[test]
        fn placeholder_count_finds_shuffled_placeholders(
            (n, texts) in (0usize..12).prop_flat_map(|n| {
                // Each of 1..=n at least once, some repeated, in any order.
                let repeats = prop::collection::vec(1..=n.max(1), 0..4)
                    .prop_map(move |extra| if n == 0 { vec![] } else { extra });
                (Just(n), repeats.prop_flat_map(move |extra| {
                    let mut all: Vec<usize> = (1..=n).collect();
                    all.extend(extra);
                    Just(all).prop_shuffle()
                }))
            }),
            filler in prop::collection::vec("[^{}]{0,6}", 13..=16),
        ) {
            let mut text = String::new();
            for (i, k) in texts.iter().enumerate() {
                text.push_str(&filler[i % filler.len()]);
                text.push_str(&format!("{{{{{k}}}}}"));
            }
            text.push_str(&filler[filler.len() - 1]);
            prop_assert_eq!(placeholder_count(&text), Ok(n), "{}", text);
        }

        #[test]
        fn placeholder_count_never_panics(text in "[{}0-9a ]{0,24}|.{0,24}") {
            if let Ok(n) = placeholder_count(&text) {
                prop_assert!(n <= text.len() / 5);
            }
        }
    }
}
