//! Text templates in flows: `$NAME` or `${NAME}` stands for a parameter's
//! value, and `$$` for a literal `$`.
//!
//! A name is a run of ASCII letters, digits and underscores (the rule for
//! session parameter names). `$NAME` takes the longest such run and must
//! start with a letter or `_`; `${NAME}` takes any name, and is there for a
//! name followed by a letter or digit. A `$` that starts neither form is
//! kept as it is, so prices like `$5` need no escape. A parameter that is not set reads as the empty
//! string. Validation refuses references to parameters the flow never
//! defines, so an unset one is a parameter that could be set but was not.

use std::borrow::Cow;

/// One piece of a parsed template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Parameter(&'a str),
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Splits a template into text and parameter references, in order.
pub fn pieces(template: &str) -> Vec<Piece<'_>> {
    let bytes = template.as_bytes();
    let mut out = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        let rest = &bytes[i + 1..];
        // `$$`: a literal dollar; the text so far ends with the first `$`.
        if rest.first() == Some(&b'$') {
            out.push(Piece::Text(&template[text_start..=i]));
            i += 2;
            text_start = i;
            continue;
        }
        let (name_start, name_end, after) = if rest.first() == Some(&b'{') {
            let len = rest[1..].iter().take_while(|&&b| is_name_byte(b)).count();
            if len == 0 || rest.get(1 + len) != Some(&b'}') {
                i += 1;
                continue;
            }
            (i + 2, i + 2 + len, i + 3 + len)
        } else {
            let starts_name = rest
                .first()
                .is_some_and(|&b| b.is_ascii_alphabetic() || b == b'_');
            let len = rest.iter().take_while(|&&b| is_name_byte(b)).count();
            if !starts_name {
                i += 1;
                continue;
            }
            (i + 1, i + 1 + len, i + 1 + len)
        };
        if text_start < i {
            out.push(Piece::Text(&template[text_start..i]));
        }
        out.push(Piece::Parameter(&template[name_start..name_end]));
        i = after;
        text_start = after;
    }
    if text_start < bytes.len() {
        out.push(Piece::Text(&template[text_start..]));
    }
    out
}

/// The parameters a template refers to, in order, repeats included.
pub fn references(template: &str) -> impl Iterator<Item = &str> {
    pieces(template).into_iter().filter_map(|p| match p {
        Piece::Parameter(name) => Some(name),
        Piece::Text(_) => None,
    })
}

/// Fills a template in; `lookup` answers a parameter's value, `None` when
/// it is unset.
pub fn render<'a, 'v, F>(template: &'a str, lookup: F) -> Cow<'a, str>
where
    F: Fn(&str) -> Option<&'v str>,
{
    if !template.contains('$') {
        return Cow::Borrowed(template);
    }
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Parameter(name) => out.push_str(lookup(name).unwrap_or("")),
        }
    }
    Cow::Owned(out)
}

/// Escapes `text` so that it renders as itself.
pub fn escape(text: &str) -> String {
    text.replace('$', "$$")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn fill(template: &str, params: &[(&'static str, &'static str)]) -> String {
        let map: HashMap<&str, &'static str> = params.iter().copied().collect();
        render(template, |n| map.get(n).copied()).into_owned()
    }

    #[test]
    fn replaces_both_forms_and_keeps_stray_dollars() {
        let p = [("NAME", "Ada"), ("N", "3")];
        assert_eq!(fill("Hi $NAME!", &p), "Hi Ada!");
        assert_eq!(fill("${N}rd", &p), "3rd");
        assert_eq!(fill("$Nrd", &p), "");
        assert_eq!(fill("costs $$5 or $5", &p), "costs $5 or $5");
        assert_eq!(fill("$$NAME", &p), "$NAME");
        assert_eq!(fill("${ NAME}", &p), "${ NAME}");
        assert_eq!(fill("${NAME", &p), "${NAME");
        assert_eq!(fill("end $", &p), "end $");
        assert_eq!(fill("Hi $MISSING.", &p), "Hi .");
    }

    #[test]
    fn lists_references_in_order() {
        let refs: Vec<_> = references("$A and ${B_2}, $$C, $A").collect();
        assert_eq!(refs, ["A", "B_2", "A"]);
    }

    proptest! {
        #[test]
        fn escaped_text_renders_as_itself(text in ".{0,64}") {
            let escaped = escape(&text);
            prop_assert_eq!(render(&escaped, |_| Some("X")), text.as_str());
            prop_assert_eq!(references(&escaped).count(), 0);
        }

        #[test]
        fn rendering_substitutes_exactly_the_references(
            parts in proptest::collection::vec(("[a-z ,.!]{0,8}", "[A-Z_][A-Z0-9_]{0,6}"), 0..6),
        ) {
            // Text then `${NAME}`, repeated: the value appears where each
            // reference was and nothing else changes.
            let template: String = parts.iter().map(|(t, n)| format!("{t}${{{n}}}")).collect();
            let expected: String = parts.iter().map(|(t, n)| format!("{t}<{n}>")).collect();
            let values: HashMap<String, String> =
                parts.iter().map(|(_, n)| (n.clone(), format!("<{n}>"))).collect();
            let rendered = render(&template, |n| values.get(n).map(String::as_str));
            prop_assert_eq!(rendered, expected.as_str());
        }
    }
}
