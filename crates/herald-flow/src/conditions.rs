//! The rules of a Conditions node: which branch a conversation takes.
//!
//! A rule compares a parameter (unset reads as `""`) with a value, a
//! template rendered against the parameters. The operators:
//!
//! - `eq`, `ne`: numeric equality when both sides are numbers (so `"7"`
//!   equals `"7.0"`), else exact text equality (case matters).
//! - `lt`, `le`, `gt`, `ge`: numeric when both sides are numbers, else by
//!   text (byte order, so `"B" < "a"`).
//! - `contains`, `starts_with`: text, case matters; every text contains and
//!   starts with `""`.
//! - `is_set`: the parameter is present *and not empty*; `is_not_set` is
//!   its negation. An empty value counts as unset because a template reads
//!   an unset parameter as `""`: a flow cannot tell the two apart anywhere
//!   else either.
//!
//! A number is text that, trimmed, parses as a finite `f64` (`"-2.5"`,
//! `"1e3"`, `" 7 "`; not `"inf"` or `"NaN"`). A rule that needs a value but
//! has none compares with `""`.
//!
//! A branch with `match: all` holds when every rule holds (so an empty
//! list holds), with `match: any` when at least one does (so an empty list
//! does not).

use std::collections::BTreeMap;

use herald_core::flow::{Branch, Match, Op, Rule};

/// The next node of a Conditions node: the first branch that holds, else
/// `default`.
pub fn choose<'a>(
    branches: &'a [Branch],
    default: &'a str,
    parameters: &BTreeMap<String, String>,
) -> &'a str {
    branches
        .iter()
        .find(|b| branch_holds(b, parameters))
        .map_or(default, |b| b.next.as_str())
}

pub fn branch_holds(branch: &Branch, parameters: &BTreeMap<String, String>) -> bool {
    let holds = |rule: &Rule| rule_holds(rule, parameters);
    match branch.match_ {
        Match::All => branch.rules.iter().all(holds),
        Match::Any => branch.rules.iter().any(holds),
    }
}

pub fn rule_holds(rule: &Rule, parameters: &BTreeMap<String, String>) -> bool {
    let current = parameters.get(&rule.parameter).map_or("", String::as_str);
    let value = match rule.op {
        Op::IsSet | Op::IsNotSet => String::new(),
        _ => crate::render(rule.value.as_deref().unwrap_or(""), parameters),
    };
    compare(rule.op, current, &value)
}

/// Applies `op` to a parameter's value (`left`) and a rule's rendered value
/// (`right`); `is_set` and `is_not_set` look at `left` only.
pub fn compare(op: Op, left: &str, right: &str) -> bool {
    let numbers = || number(left).zip(number(right));
    match op {
        Op::Eq => numbers().map_or(left == right, |(a, b)| a == b),
        Op::Ne => !compare(Op::Eq, left, right),
        Op::Lt => numbers().map_or(left < right, |(a, b)| a < b),
        Op::Le => numbers().map_or(left <= right, |(a, b)| a <= b),
        Op::Gt => numbers().map_or(left > right, |(a, b)| a > b),
        Op::Ge => numbers().map_or(left >= right, |(a, b)| a >= b),
        Op::Contains => left.contains(right),
        Op::StartsWith => left.starts_with(right),
        Op::IsSet => !left.is_empty(),
        Op::IsNotSet => left.is_empty(),
    }
}

/// `text` as a number, if it is one (trimmed, finite).
pub fn number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn rule(parameter: &str, op: Op, value: Option<&str>) -> Rule {
        Rule {
            parameter: parameter.into(),
            op,
            value: value.map(Into::into),
        }
    }

    #[test]
    fn every_operator() {
        let cases: &[(Op, &str, &str, bool)] = &[
            (Op::Eq, "7", "7.0", true),
            (Op::Eq, "abc", "abc", true),
            (Op::Eq, "abc", "ABC", false),
            (Op::Eq, "", "", true),
            (Op::Ne, "7", "7.0", false),
            (Op::Ne, "a", "b", true),
            (Op::Lt, "9", "10", true),
            (Op::Lt, "10", "9", false),
            (Op::Lt, "apple", "banana", true),
            (Op::Lt, "9", "apple", true),
            (Op::Le, "2", "2.0", true),
            (Op::Le, "b", "a", false),
            (Op::Gt, "10", "9", true),
            (Op::Gt, "b", "a", true),
            (Op::Ge, "-1", "-1", true),
            (Op::Ge, "-2", "-1", false),
            (Op::Contains, "hello world", "lo w", true),
            (Op::Contains, "hello", "Hello", false),
            (Op::StartsWith, "hello", "he", true),
            (Op::StartsWith, "hello", "lo", false),
            (Op::IsSet, "x", "", true),
            (Op::IsSet, "", "", false),
            (Op::IsNotSet, "", "", true),
            (Op::IsNotSet, "x", "", false),
            // Infinity and NaN are not numbers: compared as text.
            (Op::Lt, "inf", "5", false),
            (Op::Eq, "NaN", "NaN", true),
        ];
        for &(op, left, right, expected) in cases {
            assert_eq!(
                compare(op, left, right),
                expected,
                "{left:?} {op:?} {right:?}"
            );
        }
    }

    #[test]
    fn rules_read_parameters_and_render_values() {
        let p = params(&[("AGE", "42"), ("LIMIT", "40"), ("EMPTY", "")]);
        assert!(rule_holds(&rule("AGE", Op::Gt, Some("$LIMIT")), &p));
        assert!(!rule_holds(&rule("AGE", Op::Lt, Some("${LIMIT}")), &p));
        assert!(rule_holds(&rule("AGE", Op::IsSet, None), &p));
        assert!(rule_holds(&rule("EMPTY", Op::IsNotSet, None), &p));
        assert!(rule_holds(&rule("MISSING", Op::IsNotSet, None), &p));
        assert!(rule_holds(&rule("MISSING", Op::Eq, Some("")), &p));
        assert!(rule_holds(&rule("MISSING", Op::Eq, None), &p));
        assert!(!rule_holds(&rule("AGE", Op::Eq, None), &p));
    }

    fn branch(match_: Match, rules: Vec<Rule>, next: &str) -> Branch {
        Branch {
            match_,
            rules,
            next: next.into(),
        }
    }

    #[test]
    fn all_any_and_default() {
        let p = params(&[("A", "1"), ("B", "2")]);
        let yes = rule("A", Op::Eq, Some("1"));
        let no = rule("B", Op::Eq, Some("1"));
        assert!(branch_holds(
            &branch(Match::All, vec![yes.clone()], "x"),
            &p
        ));
        assert!(!branch_holds(
            &branch(Match::All, vec![yes.clone(), no.clone()], "x"),
            &p
        ));
        assert!(branch_holds(
            &branch(Match::Any, vec![no.clone(), yes.clone()], "x"),
            &p
        ));
        assert!(!branch_holds(
            &branch(Match::Any, vec![no.clone()], "x"),
            &p
        ));
        assert!(branch_holds(&branch(Match::All, vec![], "x"), &p));
        assert!(!branch_holds(&branch(Match::Any, vec![], "x"), &p));

        let branches = vec![
            branch(Match::All, vec![no.clone()], "first"),
            branch(Match::Any, vec![yes.clone()], "second"),
            branch(Match::All, vec![], "third"),
        ];
        assert_eq!(choose(&branches, "default", &p), "second");
        assert_eq!(choose(&branches[..1], "default", &p), "default");
        assert_eq!(choose(&[], "default", &p), "default");
    }

    fn finite() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
            (-1000i64..1000).prop_map(|n| n as f64),
            (-1000i64..1000).prop_map(|n| n as f64 / 4.0),
        ]
    }

    proptest! {
        #[test]
        fn numeric_comparisons_agree_with_f64(a in finite(), b in finite()) {
            let (l, r) = (a.to_string(), b.to_string());
            prop_assert_eq!(compare(Op::Eq, &l, &r), a == b);
            prop_assert_eq!(compare(Op::Ne, &l, &r), a != b);
            prop_assert_eq!(compare(Op::Lt, &l, &r), a < b);
            prop_assert_eq!(compare(Op::Le, &l, &r), a <= b);
            prop_assert_eq!(compare(Op::Gt, &l, &r), a > b);
            prop_assert_eq!(compare(Op::Ge, &l, &r), a >= b);
            // Integers written with a redundant fraction compare the same.
            let padded = format!("{l}{}", if l.contains('.') || l.contains('e') { "" } else { ".0" });
            prop_assert!(compare(Op::Eq, &padded, &l));
        }

        #[test]
        fn ne_is_the_negation_of_eq(a in ".{0,8}", b in ".{0,8}") {
            prop_assert_eq!(compare(Op::Ne, &a, &b), !compare(Op::Eq, &a, &b));
        }

        #[test]
        fn text_comparisons_are_a_total_order(a in "[a-z]{0,6}", b in "[a-z]{0,6}") {
            let lt = compare(Op::Lt, &a, &b);
            let eq = compare(Op::Eq, &a, &b);
            let gt = compare(Op::Gt, &a, &b);
            prop_assert_eq!(u8::from(lt) + u8::from(eq) + u8::from(gt), 1);
            prop_assert_eq!(compare(Op::Le, &a, &b), lt || eq);
            prop_assert_eq!(compare(Op::Ge, &a, &b), gt || eq);
        }

        #[test]
        fn empty_rule_lists(
            pairs in proptest::collection::btree_map("[A-Z]{1,3}", "[a-z0-9]{0,3}", 0..5),
        ) {
            prop_assert!(branch_holds(&branch(Match::All, vec![], "x"), &pairs));
            prop_assert!(!branch_holds(&branch(Match::Any, vec![], "x"), &pairs));
        }
    }
}
