//! What free text may hold.
//!
//! Free text (a session parameter's value, a template's parameter, a
//! flow's prompts) may hold any character but one: NUL (U+0000), which has
//! no meaning in text and which PostgreSQL cannot store. Every store gives
//! the same answer because the refusal comes before any of them: a 400 that
//! names the field.

use serde_json::Value;

/// What a field holding NUL is told.
pub const NO_NUL: &str = "must not contain NUL characters";

/// The path of the first string inside `value` (keys included) that holds
/// NUL, `value` itself being at `path`: `flow.nodes[2].text`.
pub fn nul_at(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) => s.contains('\0').then(|| path.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_at(item, &format!("{path}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(name, field)| {
            if name.contains('\0') {
                return Some(path.to_owned());
            }
            nul_at(field, &format!("{path}.{name}"))
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_the_first_string_with_a_nul() {
        let flow = json!({"nodes": [{"id": "a", "text": "hi"}, {"id": "b", "text": "x\u{0}y"}]});
        assert_eq!(nul_at(&flow, "flow").as_deref(), Some("flow.nodes[1].text"));
        let key = json!({"headers": {"X-A\u{0}": "v"}});
        assert_eq!(nul_at(&key, "flow").as_deref(), Some("flow.headers"));
        assert_eq!(nul_at(&json!({"a": ["\u{1}", 0, null]}), "x"), None);
    }
}
