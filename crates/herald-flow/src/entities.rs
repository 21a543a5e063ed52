//! Entities: reading a value out of what the person said, for Collect
//! Input nodes.
//!
//! Each built-in entity finds the first thing of its kind in the text and
//! writes it in one canonical form, so that later nodes (conditions,
//! webhooks) see `7`, `2024-11-21` or `14:30` whatever the person typed or
//! said. `None` means "not understood": the node asks again.
//!
//! - `any`: the trimmed text, when not empty.
//! - `number`: the first number: ASCII digits with an optional sign,
//!   thousands groups (`1,234`) and decimal point, or an English word
//!   (`zero` to `nineteen`, the tens `twenty` to `ninety`, and compounds like
//!   `twenty-one`); written canonically (`007` → `7`, `-2.50` → `-2.5`,
//!   `-0` → `0`). Keypad digits are kept as they are (`0042`), without a
//!   final `#`.
//! - `yes_no`: `yes` or `no` from the words of the reply (see [`YES`] and
//!   [`NO`]); a reply with words of both or neither is not understood.
//! - `date`: `YYYY-MM-DD`. Reads `2024-11-21`, `21/11/2024`, `21/11` (also
//!   with `.` or `-` between the parts), `21 November`, `November 21`,
//!   `21st of November` (months by name or three-letter abbreviation, an
//!   optional four-digit year after them), `today`, `tomorrow` and weekday
//!   names (the next such day after today). A date without a year is its
//!   next occurrence, today included. "Today" is the UTC date of `now`.
//!   Impossible dates (`31/02`) are not understood.
//! - `time`: `HH:MM`, 24-hour. Reads `14:30`, `9:05`, `2pm`, `2:30 pm`,
//!   `2 p.m.`, `noon` (or `midday`) and `midnight`; a bare number is no
//!   time, nor is one out of range (`25:00`, `13pm`).
//! - `email`: the first plausible address, its domain lowercased.
//! - `phone_number`: the first run of 7 to 15 digits, which may start with
//!   `+` and be broken up by spaces, dashes, dots and parentheses; written
//!   as the digits alone.
//! - any other name: the flow's custom entity of that name. A value or a
//!   synonym is found when its words appear in the reply's words, in order
//!   and next to each other, ignoring case and punctuation; the longest
//!   such phrase wins (the earlier value on a tie) and the parameter gets
//!   that entry's value. An unknown entity finds nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, Days, NaiveDate, Weekday};
use herald_core::flow::{CustomEntity, FlowDefinition};

use crate::classifier::words;
use crate::InputMode;

/// The names of the built-in entities.
pub const BUILT_IN: [&str; 7] = [
    "any",
    "number",
    "yes_no",
    "date",
    "time",
    "email",
    "phone_number",
];

/// Words that answer `yes`.
pub const YES: &[&str] = &[
    "yes", "y", "yeah", "yep", "sure", "ok", "okay", "correct", "right", "confirm", "1",
];
/// Words that answer `no`.
pub const NO: &[&str] = &["no", "n", "nope", "nah", "not", "wrong", "cancel", "2"];

/// Reads `entity` out of `text`; `None` when it is not there.
pub fn extract(
    entity: &str,
    text: &str,
    kind: InputMode,
    flow: &FlowDefinition,
    now: SystemTime,
) -> Option<String> {
    match entity {
        "any" => any(text),
        "number" => number(text, kind),
        "yes_no" => yes_no(text),
        "date" => date(text, today(now)),
        "time" => time(text),
        "email" => email(text),
        "phone_number" => phone_number(text),
        name => flow
            .entities
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| custom(e, text)),
    }
}

/// The UTC date of `now`.
pub fn today(now: SystemTime) -> NaiveDate {
    let ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .date_naive()
}

pub fn any(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The words of `text` (runs of alphanumeric characters), lowercased, each
/// with the byte range it has in `text`.
fn words_at(text: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            out.push((s, i, text[s..i].to_lowercase()));
        }
    }
    if let Some(s) = start {
        out.push((s, text.len(), text[s..].to_lowercase()));
    }
    out
}

// ---------------------------------------------------------------- number

const SMALL_NUMBERS: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 8] = [
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

pub fn number(text: &str, kind: InputMode) -> Option<String> {
    if kind == InputMode::Dtmf {
        let keys = text.trim().trim_end_matches('#');
        if !keys.is_empty() && keys.bytes().all(|b| b.is_ascii_digit()) {
            return Some(keys.to_owned());
        }
    }
    match (first_numeral(text), first_number_word(text)) {
        (Some((at, n)), Some((word_at, w))) => Some(if word_at < at { w } else { n }),
        (numeral, word) => numeral.or(word).map(|(_, n)| n),
    }
}

/// The first number written in digits, with where it starts.
fn first_numeral(text: &str) -> Option<(usize, String)> {
    let b = text.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    // A sign belongs to the number unless it joins two words ("covid-19").
    let joins = |i: usize| i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] >= 0x80);
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let mut j = i;
        let mut negative = false;
        let starts_digits = |j: usize| digit(j) || (b.get(j) == Some(&b'.') && digit(j + 1));
        if matches!(b[j], b'-' | b'+') && !joins(j) && starts_digits(j + 1) {
            negative = b[j] == b'-';
            j += 1;
        } else if !starts_digits(j) {
            i += 1;
            continue;
        }
        let int_start = j;
        while digit(j) {
            j += 1;
        }
        let mut int = text[int_start..j].to_owned();
        if (1..=3).contains(&int.len()) {
            // Thousands groups: a comma and exactly three digits.
            while b.get(j) == Some(&b',') && digit(j + 1) && digit(j + 2) && digit(j + 3) {
                if digit(j + 4) {
                    break;
                }
                int.push_str(&text[j + 1..j + 4]);
                j += 4;
            }
        }
        let mut fraction = "";
        if b.get(j) == Some(&b'.') && digit(j + 1) {
            let f = j + 1;
            j = f;
            while digit(j) {
                j += 1;
            }
            fraction = &text[f..j];
        }
        return Some((start, canonical_number(negative, &int, fraction)));
    }
    None
}

fn canonical_number(negative: bool, int: &str, fraction: &str) -> String {
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let fraction = fraction.trim_end_matches('0');
    let mut out = String::with_capacity(int.len() + fraction.len() + 2);
    if negative && !(int == "0" && fraction.is_empty()) {
        out.push('-');
    }
    out.push_str(int);
    if !fraction.is_empty() {
        out.push('.');
        out.push_str(fraction);
    }
    out
}

/// The first number written in English words, with where it starts.
fn first_number_word(text: &str) -> Option<(usize, String)> {
    let words = words_at(text);
    for (k, (start, end, word)) in words.iter().enumerate() {
        if let Some(n) = SMALL_NUMBERS.iter().position(|w| w == word) {
            return Some((*start, n.to_string()));
        }
        if let Some(t) = TENS.iter().position(|w| w == word) {
            let tens = 20 + 10 * t;
            // "twenty-one", "twenty one".
            if let Some((next_start, _, next)) = words.get(k + 1) {
                let joined = text[*end..*next_start]
                    .chars()
                    .all(|c| c == ' ' || c == '-');
                if let Some(unit) = SMALL_NUMBERS[1..10].iter().position(|w| w == next) {
                    if joined {
                        return Some((*start, (tens + unit + 1).to_string()));
                    }
                }
            }
            return Some((*start, tens.to_string()));
        }
    }
    None
}

// ---------------------------------------------------------------- yes/no

pub fn yes_no(text: &str) -> Option<String> {
    let (mut yes, mut no) = (false, false);
    for word in words(text) {
        yes |= YES.contains(&word.as_str());
        no |= NO.contains(&word.as_str());
    }
    match (yes, no) {
        (true, false) => Some("yes".into()),
        (false, true) => Some("no".into()),
        _ => None,
    }
}

// ---------------------------------------------------------------- date

/// The first date in `text`, as `YYYY-MM-DD`; `today` resolves relative
/// dates and dates without a year.
pub fn date(text: &str, today: NaiveDate) -> Option<String> {
    [
        numeric_date(text, today),
        named_date(text, today),
        relative_date(text, today),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|(at, _)| *at)
    .map(|(_, d)| d.format("%Y-%m-%d").to_string())
}

/// The first valid date of `month` and `day` on or after `today`.
fn next_occurrence(today: NaiveDate, month: u32, day: u32) -> Option<NaiveDate> {
    // Eight years always include a leap year, for 29 February.
    (today.year()..=today.year() + 8)
        .find_map(|y| NaiveDate::from_ymd_opt(y, month, day).filter(|d| *d >= today))
}

fn resolve(today: NaiveDate, year: Option<i32>, month: u32, day: u32) -> Option<NaiveDate> {
    match year {
        Some(y) => NaiveDate::from_ymd_opt(y, month, day),
        None => next_occurrence(today, month, day),
    }
}

/// `2024-11-21`, `21/11/2024`, `21/11`: digit groups joined by one kind of
/// separator (`/`, `-` or `.`).
fn numeric_date(text: &str, today: NaiveDate) -> Option<(usize, NaiveDate)> {
    let b = text.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let mut i = 0;
    while i < b.len() {
        if !digit(i) {
            i += 1;
            continue;
        }
        let start = i;
        let mut groups = Vec::with_capacity(3);
        let mut separator = None;
        loop {
            let g = i;
            while digit(i) {
                i += 1;
            }
            groups.push(&text[g..i]);
            match b.get(i) {
                Some(&c)
                    if matches!(c, b'/' | b'-' | b'.')
                        && separator.unwrap_or(c) == c
                        && digit(i + 1) =>
                {
                    separator = Some(c);
                    i += 1;
                }
                _ => break,
            }
        }
        let short = |s: &str| (1..=2).contains(&s.len());
        let n = |s: &str| s.parse::<u32>().ok();
        let found = match groups[..] {
            [y, m, d] if y.len() == 4 && short(m) && short(d) => {
                NaiveDate::from_ymd_opt(y.parse().ok()?, n(m)?, n(d)?)
            }
            [d, m, y] if short(d) && short(m) && y.len() == 4 => {
                NaiveDate::from_ymd_opt(y.parse().ok()?, n(m)?, n(d)?)
            }
            [d, m] if short(d) && short(m) => next_occurrence(today, n(m)?, n(d)?),
            _ => None,
        };
        if let Some(d) = found {
            return Some((start, d));
        }
    }
    None
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

fn month_of(word: &str) -> Option<u32> {
    let i = MONTHS.iter().position(|m| *m == word).or_else(|| {
        let abbreviation = if word == "sept" { "sep" } else { word };
        (abbreviation.len() == 3)
            .then(|| MONTHS.iter().position(|m| m.starts_with(abbreviation)))
            .flatten()
    })?;
    Some(i as u32 + 1)
}

/// `21`, `21st`, `2nd`: a day of the month.
fn day_of(word: &str) -> Option<u32> {
    let digits = word.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &word[digits.len()..];
    if !(1..=2).contains(&digits.len())
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !matches!(suffix, "" | "st" | "nd" | "rd" | "th")
    {
        return None;
    }
    digits.parse().ok().filter(|d| (1..=31).contains(d))
}

fn year_of(word: &str) -> Option<i32> {
    (word.len() == 4 && word.bytes().all(|b| b.is_ascii_digit()))
        .then(|| word.parse().ok())
        .flatten()
}

/// `21 November [2025]`, `21st of November`, `November 21[, 2025]`,
/// `November the 21st`.
fn named_date(text: &str, today: NaiveDate) -> Option<(usize, NaiveDate)> {
    let words = words_at(text);
    let word = |k: usize| words.get(k).map(|(_, _, w)| w.as_str());
    for (k, (at, _, _)) in words.iter().enumerate() {
        let mut found = None;
        if let Some(day) = word(k).and_then(day_of) {
            let mut m = k + 1;
            if word(m) == Some("of") {
                m += 1;
            }
            if let Some(month) = word(m).and_then(month_of) {
                found = resolve(today, word(m + 1).and_then(year_of), month, day);
            }
        }
        if found.is_none() {
            if let Some(month) = word(k).and_then(month_of) {
                let mut d = k + 1;
                if word(d) == Some("the") {
                    d += 1;
                }
                if let Some(day) = word(d).and_then(day_of) {
                    found = resolve(today, word(d + 1).and_then(year_of), month, day);
                }
            }
        }
        if let Some(d) = found {
            return Some((*at, d));
        }
    }
    None
}

const WEEKDAYS: [(&str, Weekday); 7] = [
    ("monday", Weekday::Mon),
    ("tuesday", Weekday::Tue),
    ("wednesday", Weekday::Wed),
    ("thursday", Weekday::Thu),
    ("friday", Weekday::Fri),
    ("saturday", Weekday::Sat),
    ("sunday", Weekday::Sun),
];

/// `today`, `tomorrow`, `friday`.
fn relative_date(text: &str, today: NaiveDate) -> Option<(usize, NaiveDate)> {
    words_at(text).into_iter().find_map(|(at, _, word)| {
        let date = match word.as_str() {
            "today" => Some(today),
            "tomorrow" => today.succ_opt(),
            _ => {
                let (_, weekday) = WEEKDAYS.iter().find(|(name, _)| *name == word)?;
                let ahead = (7 + weekday.num_days_from_monday()
                    - today.weekday().num_days_from_monday())
                    % 7;
                let ahead = if ahead == 0 { 7 } else { ahead };
                today.checked_add_days(Days::new(u64::from(ahead)))
            }
        };
        date.map(|d| (at, d))
    })
}

// ---------------------------------------------------------------- time

/// The first time of day in `text`, as `HH:MM`.
pub fn time(text: &str) -> Option<String> {
    let named = words_at(text)
        .into_iter()
        .find_map(|(at, _, word)| match word.as_str() {
            "noon" | "midday" => Some((at, (12, 0))),
            "midnight" => Some((at, (0, 0))),
            _ => None,
        });
    let (_, (h, m)) = match (numeric_time(text), named) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    }?;
    Some(format!("{h:02}:{m:02}"))
}

fn numeric_time(text: &str) -> Option<(usize, (u32, u32))> {
    let b = text.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let two_digits_at = |i: usize| digit(i) && digit(i + 1) && !digit(i + 2);
    let mut i = 0;
    while i < b.len() {
        if !digit(i) {
            i += 1;
            continue;
        }
        let start = i;
        while digit(i) {
            i += 1;
        }
        // Part of a larger number ("2.5", "21/11", "1:2:3") or too long.
        let inside = start > 0 && matches!(b[start - 1], b'.' | b':' | b'/' | b',');
        if i - start > 2 || inside {
            continue;
        }
        let hour: u32 = text[start..i].parse().ok()?;
        let mut j = i;
        let mut minute = None;
        if b.get(j) == Some(&b':') && two_digits_at(j + 1) {
            minute = text[j + 1..j + 3].parse::<u32>().ok();
            j += 3;
            // Seconds are allowed and dropped.
            if b.get(j) == Some(&b':') && two_digits_at(j + 1) {
                j += 3;
            }
        }
        let found = match (minute, meridiem(&text[j..])) {
            (minute, Some(pm)) if (1..=12).contains(&hour) => {
                Some((hour % 12 + if pm { 12 } else { 0 }, minute.unwrap_or(0)))
            }
            (Some(minute), None) if hour < 24 => Some((hour, minute)),
            _ => None,
        };
        if let Some((h, m)) = found.filter(|(_, m)| *m < 60) {
            return Some((start, (h, m)));
        }
        i = j;
    }
    None
}

/// Whether `rest` starts (after blanks) with a.m. (`Some(false)`) or p.m.
/// (`Some(true)`).
fn meridiem(rest: &str) -> Option<bool> {
    let rest = rest.trim_start();
    const FORMS: [(&str, bool); 6] = [
        ("a.m.", false),
        ("p.m.", true),
        ("a.m", false),
        ("p.m", true),
        ("am", false),
        ("pm", true),
    ];
    FORMS.iter().find_map(|&(form, pm)| {
        let head = rest.get(..form.len())?;
        let ends = !rest[form.len()..]
            .chars()
            .next()
            .is_some_and(char::is_alphanumeric);
        (head.eq_ignore_ascii_case(form) && ends).then_some(pm)
    })
}

// ---------------------------------------------------------------- email

pub fn email(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let local_byte = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&c);
    let domain_byte = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'-';
    for (at, _) in text.match_indices('@') {
        let mut s = at;
        while s > 0 && local_byte(b[s - 1]) {
            s -= 1;
        }
        let mut e = at + 1;
        while e < b.len() && domain_byte(b[e]) {
            e += 1;
        }
        // Quotes and dots around the address belong to the sentence.
        let local = text[s..at].trim_start_matches(['.', '\'', '`']);
        let domain = text[at + 1..e].trim_end_matches(['.', '-']);
        if plausible_email(local, domain) {
            return Some(format!("{local}@{}", domain.to_ascii_lowercase()));
        }
    }
    None
}

fn plausible_email(local: &str, domain: &str) -> bool {
    let local_ok =
        !local.is_empty() && local.len() <= 64 && !local.ends_with('.') && !local.contains("..");
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = domain.len() <= 253
        && labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'))
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()));
    local_ok && domain_ok
}

// ---------------------------------------------------------------- phone

pub fn phone_number(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !(b[i].is_ascii_digit() || b[i] == b'+' || b[i] == b'(') {
            i += 1;
            continue;
        }
        let mut j = i;
        if b[j] == b'+' {
            j += 1;
        }
        let mut digits = String::new();
        while j < b.len() && (b[j].is_ascii_digit() || b" -.()".contains(&b[j])) {
            if b[j].is_ascii_digit() {
                digits.push(b[j] as char);
            }
            j += 1;
        }
        if (7..=15).contains(&digits.len()) {
            return Some(digits);
        }
        i = j.max(i + 1);
    }
    None
}

// ---------------------------------------------------------------- custom

pub fn custom(entity: &CustomEntity, text: &str) -> Option<String> {
    let said = words(text);
    let mut best: Option<(usize, &str)> = None;
    for value in &entity.values {
        for phrase in std::iter::once(&value.value).chain(&value.synonyms) {
            let phrase = words(phrase);
            if phrase.is_empty() || !said.windows(phrase.len()).any(|w| w == phrase) {
                continue;
            }
            let length = phrase.iter().map(|w| w.chars().count()).sum::<usize>() + phrase.len();
            if best.map_or(0, |(longest, _)| longest) < length {
                best = Some((length, &value.value));
            }
        }
    }
    best.map(|(_, value)| value.to_owned())
}

#[cfg(test)]
mod tests;
