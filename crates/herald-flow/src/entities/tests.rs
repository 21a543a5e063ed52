//! Examples and properties of every entity.

use super::*;
use chrono::Duration;
use herald_core::flow::EntityValue;
use proptest::prelude::any;
use proptest::prelude::*;

fn text_number(text: &str) -> Option<String> {
    number(text, InputMode::Text)
}

/// Wednesday 20 November 2024.
fn wednesday() -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 11, 20).unwrap()
}

fn on(text: &str) -> Option<String> {
    date(text, wednesday())
}

#[test]
fn any_is_the_trimmed_text() {
    assert_eq!(
        super::any("  hello there \n").as_deref(),
        Some("hello there")
    );
    assert_eq!(super::any(" \t "), None);
}

#[test]
fn numbers() {
    let cases: &[(&str, Option<&str>)] = &[
        ("7", Some("7")),
        ("I am 42 years old", Some("42")),
        ("-2.50", Some("-2.5")),
        ("+7", Some("7")),
        ("007", Some("7")),
        ("7.0", Some("7")),
        ("-0", Some("0")),
        (".5 litres", Some("0.5")),
        ("1,234,567.50 euros", Some("1234567.5")),
        ("10,5", Some("10")),
        ("covid-19", Some("19")),
        ("5-6 people", Some("5")),
        ("version 2.5.1", Some("2.5")),
        ("three", Some("3")),
        ("I want Twenty-One", Some("21")),
        ("forty two", Some("42")),
        ("ninety", Some("90")),
        ("twenty, one", Some("20")),
        ("zero", Some("0")),
        ("one or 2", Some("1")),
        ("2 or one", Some("2")),
        ("someone", None),
        ("none", None),
        ("", None),
        ("-", None),
    ];
    for &(text, expected) in cases {
        assert_eq!(text_number(text).as_deref(), expected, "{text:?}");
    }
}

#[test]
fn keypad_digits_are_kept_as_they_are() {
    assert_eq!(number("0042", InputMode::Dtmf).as_deref(), Some("0042"));
    assert_eq!(number("0042#", InputMode::Dtmf).as_deref(), Some("0042"));
    assert_eq!(number("0042", InputMode::Speech).as_deref(), Some("42"));
    assert_eq!(number("*", InputMode::Dtmf), None);
    assert_eq!(number("#", InputMode::Dtmf), None);
}

#[test]
fn yes_and_no() {
    for text in [
        "yes",
        "Yeah!",
        "ok",
        "OK sure",
        "that's right",
        "1",
        "Y",
        "confirm",
    ] {
        assert_eq!(yes_no(text).as_deref(), Some("yes"), "{text:?}");
    }
    for text in ["no", "Nope.", "nah", "cancel it", "2", "wrong", "N"] {
        assert_eq!(yes_no(text).as_deref(), Some("no"), "{text:?}");
    }
    for text in ["", "maybe", "not sure", "yes no", "that is not right", "12"] {
        assert_eq!(yes_no(text), None, "{text:?}");
    }
}

#[test]
fn dates() {
    let cases: &[(&str, Option<&str>)] = &[
        ("2024-12-25", Some("2024-12-25")),
        ("on 2025/01/02 please", Some("2025-01-02")),
        ("25/12/2024", Some("2024-12-25")),
        ("5.1.2025", Some("2025-01-05")),
        ("21-11-2024", Some("2024-11-21")),
        ("25/12", Some("2024-12-25")),
        ("20/11", Some("2024-11-20")),
        ("19/11", Some("2025-11-19")),
        ("29/02", Some("2028-02-29")),
        ("31/02", None),
        ("31/02/2024", None),
        ("30/02 or 2024-03-01", Some("2024-03-01")),
        ("2024-13-01", None),
        ("today", Some("2024-11-20")),
        ("Tomorrow morning", Some("2024-11-21")),
        ("friday", Some("2024-11-22")),
        ("next Wednesday", Some("2024-11-27")),
        ("monday", Some("2024-11-25")),
        ("21 November", Some("2024-11-21")),
        ("november 21", Some("2024-11-21")),
        ("the 21st of November", Some("2024-11-21")),
        ("19th of Nov", Some("2025-11-19")),
        ("November 21, 2030", Some("2030-11-21")),
        ("21 November 2030", Some("2030-11-21")),
        ("December the 3rd", Some("2024-12-03")),
        ("3 sept", Some("2025-09-03")),
        ("30 February", None),
        ("may I come", None),
        ("November", None),
        ("21", None),
        ("", None),
    ];
    for &(text, expected) in cases {
        assert_eq!(on(text).as_deref(), expected, "{text:?}");
    }
}

#[test]
fn today_is_the_utc_date_of_now() {
    // 2024-11-20T23:59:59Z.
    let now = UNIX_EPOCH + std::time::Duration::from_secs(1_732_147_199);
    assert_eq!(today(now), wednesday());
    let flow = FlowDefinition::default_for(herald_core::Channel::Sms);
    assert_eq!(
        extract("date", "today", InputMode::Text, &flow, now).as_deref(),
        Some("2024-11-20")
    );
}

#[test]
fn times() {
    let cases: &[(&str, Option<&str>)] = &[
        ("14:30", Some("14:30")),
        ("at 9:05 please", Some("09:05")),
        ("2pm", Some("14:00")),
        ("2:30 pm", Some("14:30")),
        ("2 p.m.", Some("14:00")),
        ("11 A.M.", Some("11:00")),
        ("12am", Some("00:00")),
        ("12 pm", Some("12:00")),
        ("12:15:30", Some("12:15")),
        ("noon", Some("12:00")),
        ("Midnight", Some("00:00")),
        ("0:00", Some("00:00")),
        ("23:59", Some("23:59")),
        ("24:00", None),
        ("25:00", None),
        ("9:60", None),
        ("13pm", None),
        ("0am", None),
        ("14:30 pm", None),
        ("2", None),
        ("2 amigos", None),
        ("2.5pm", None),
        ("1430", None),
        ("room 101 at 3pm", Some("15:00")),
        ("", None),
    ];
    for &(text, expected) in cases {
        assert_eq!(time(text).as_deref(), expected, "{text:?}");
    }
}

#[test]
fn emails() {
    let cases: &[(&str, Option<&str>)] = &[
        ("ada@example.com", Some("ada@example.com")),
        (
            "Mail Ada.Lovelace+x@Example.CO.uk.",
            Some("Ada.Lovelace+x@example.co.uk"),
        ),
        ("<ada@example.com>", Some("ada@example.com")),
        ("it's 'ada@example.com'", Some("ada@example.com")),
        ("ada@localhost", None),
        ("ada@example.c", None),
        ("ada@-example.com", None),
        ("a..b@example.com", None),
        ("@example.com", None),
        ("no address", None),
        ("x@y @ ada@example.org", Some("ada@example.org")),
    ];
    for &(text, expected) in cases {
        assert_eq!(email(text).as_deref(), expected, "{text:?}");
    }
}

#[test]
fn phone_numbers() {
    let cases: &[(&str, Option<&str>)] = &[
        ("+44 20 7946 0958", Some("442079460958")),
        ("call me on (555) 123-4567.", Some("5551234567")),
        ("06.12.34.56.78", Some("0612345678")),
        ("I'm 25, my number is 0612345678", Some("0612345678")),
        ("123456", None),
        ("1234567890123456", None),
        ("1234567", Some("1234567")),
        ("0612345678#", Some("0612345678")),
        ("none", None),
    ];
    for &(text, expected) in cases {
        assert_eq!(phone_number(text).as_deref(), expected, "{text:?}");
    }
}

fn sizes() -> CustomEntity {
    let value = |value: &str, synonyms: &[&str]| EntityValue {
        value: value.into(),
        synonyms: synonyms.iter().map(|s| s.to_string()).collect(),
    };
    CustomEntity {
        name: "size".into(),
        values: vec![
            value("small", &["S", "little"]),
            value("large", &["L", "big"]),
            value("extra_large", &["extra large", "XL", "really big"]),
        ],
    }
}

#[test]
fn custom_entities() {
    let e = sizes();
    let cases: &[(&str, Option<&str>)] = &[
        ("small", Some("small")),
        ("A LITTLE one please", Some("small")),
        ("big", Some("large")),
        ("a really big one", Some("extra_large")),
        ("extra   large!", Some("extra_large")),
        ("xl", Some("extra_large")),
        ("smallest", None),
        ("bigger", None),
        ("medium", None),
        ("", None),
    ];
    for &(text, expected) in cases {
        assert_eq!(custom(&e, text).as_deref(), expected, "{text:?}");
    }
    let mut flow = FlowDefinition::default_for(herald_core::Channel::Sms);
    flow.entities.push(e);
    let extract =
        |entity: &str, text: &str| extract(entity, text, InputMode::Text, &flow, UNIX_EPOCH);
    assert_eq!(extract("size", "big").as_deref(), Some("large"));
    assert_eq!(extract("colour", "big"), None);
    assert_eq!(extract("any", " big ").as_deref(), Some("big"));
    assert_eq!(extract("number", "two").as_deref(), Some("2"));
    assert_eq!(extract("yes_no", "yep").as_deref(), Some("yes"));
    assert_eq!(extract("time", "2pm").as_deref(), Some("14:00"));
    assert_eq!(extract("email", "a@b.io").as_deref(), Some("a@b.io"));
    assert_eq!(
        extract("phone_number", "+1 555 0100 200").as_deref(),
        Some("15550100200")
    );
}

// ---- properties --------------------------------------------------------------

fn english(n: u32) -> String {
    let (tens, unit) = (n / 10, n % 10);
    if n < 20 {
        SMALL_NUMBERS[n as usize].to_string()
    } else if unit == 0 {
        TENS[tens as usize - 2].to_string()
    } else {
        format!(
            "{}-{}",
            TENS[tens as usize - 2],
            SMALL_NUMBERS[unit as usize]
        )
    }
}

fn ordinal(day: u32) -> &'static str {
    match (day % 10, day % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    }
}

fn valid_date() -> impl Strategy<Value = NaiveDate> {
    (1000i32..=9999, 1u32..=12, 1u32..=31)
        .prop_filter_map("a real date", |(y, m, d)| NaiveDate::from_ymd_opt(y, m, d))
}

fn month_name(date: NaiveDate) -> &'static str {
    MONTHS[date.month0() as usize]
}

/// The answer expected for a date written without its year.
fn expected_next(today: NaiveDate, date: NaiveDate) -> NaiveDate {
    (today.year()..)
        .find_map(|y| NaiveDate::from_ymd_opt(y, date.month(), date.day()).filter(|d| *d >= today))
        .unwrap()
}

proptest! {
    #[test]
    fn any_integer_reads_back(n in any::<i64>()) {
        let written = n.to_string();
        prop_assert_eq!(text_number(&written), Some(written.clone()));
        prop_assert_eq!(text_number(&format!("it is {written} thanks")), Some(written));
    }

    #[test]
    fn any_finite_decimal_reads_back(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
        let written = x.to_string();
        let expected = if x == 0.0 { "0".to_string() } else { written.clone() };
        prop_assert_eq!(text_number(&written), Some(expected));
    }

    #[test]
    fn padded_integers_read_back_canonically(n in any::<u32>(), zeros in 0usize..4, fraction_zeros in 0usize..4) {
        let fraction = if fraction_zeros == 0 { String::new() } else { format!(".{}", "0".repeat(fraction_zeros)) };
        let written = format!("{}{n}{fraction}", "0".repeat(zeros));
        prop_assert_eq!(text_number(&written), Some(n.to_string()));
    }

    #[test]
    fn numbers_in_words_read_back(n in 0u32..100) {
        prop_assert_eq!(text_number(&english(n)), Some(n.to_string()));
        prop_assert_eq!(text_number(&format!("about {} of them", english(n).replace('-', " "))), Some(n.to_string()));
    }

    #[test]
    fn keypad_digits_read_back(digits in "[0-9]{1,20}") {
        prop_assert_eq!(number(&digits, InputMode::Dtmf), Some(digits.clone()));
    }

    #[test]
    fn yes_words_read_as_yes(i in 0..YES.len(), upper in any::<bool>(), filler in "(please|thanks|well|)") {
        let word = if upper { YES[i].to_uppercase() } else { YES[i].to_string() };
        prop_assert_eq!(yes_no(&format!("{word}, {filler}!")), Some("yes".to_string()));
    }

    #[test]
    fn no_words_read_as_no(i in 0..NO.len(), upper in any::<bool>(), filler in "(please|thanks|well|)") {
        let word = if upper { NO[i].to_uppercase() } else { NO[i].to_string() };
        prop_assert_eq!(yes_no(&format!("{filler} {word}.")), Some("no".to_string()));
    }

    #[test]
    fn a_yes_and_a_no_cancel_out(y in 0..YES.len(), n in 0..NO.len()) {
        prop_assert_eq!(yes_no(&format!("{} {}", YES[y], NO[n])), None);
    }

    #[test]
    fn dates_with_a_year_read_back_in_every_form(date in valid_date(), short in any::<bool>()) {
        let expected = Some(date.format("%Y-%m-%d").to_string());
        let (y, m, d) = (date.year(), date.month(), date.day());
        let month = month_name(date);
        let (dd, mm) = if short { (d.to_string(), m.to_string()) } else { (format!("{d:02}"), format!("{m:02}")) };
        let forms = [
            format!("{y:04}-{m:02}-{d:02}"),
            format!("{y:04}/{mm}/{dd}"),
            format!("{dd}/{mm}/{y}"),
            format!("{dd}.{mm}.{y}"),
            format!("{d} {month} {y}"),
            format!("{} {d}, {y}", month.to_uppercase()),
            format!("the {d}{} of {month} {y}", ordinal(d)),
            format!("{} {d}{} {y}", &month[..3], ordinal(d)),
        ];
        for form in forms {
            prop_assert_eq!(on(&form), expected.clone(), "{}", form);
        }
    }

    #[test]
    fn dates_without_a_year_are_their_next_occurrence(
        day in valid_date(),
        offset in 0i64..3000,
    ) {
        let today = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap() + Duration::days(offset);
        let expected = Some(expected_next(today, day).format("%Y-%m-%d").to_string());
        let (m, d) = (day.month(), day.day());
        let month = month_name(day);
        for form in [
            format!("{d}/{m}"),
            format!("{d:02}/{m:02}"),
            format!("{d} {month}"),
            format!("{month} {d}"),
            format!("{d}{} of {month}", ordinal(d)),
        ] {
            prop_assert_eq!(date(&form, today), expected.clone(), "{}", form);
        }
    }

    #[test]
    fn relative_dates(offset in 0i64..3000) {
        let today = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap() + Duration::days(offset);
        prop_assert_eq!(date("today", today), Some(today.format("%Y-%m-%d").to_string()));
        let tomorrow = today + Duration::days(1);
        prop_assert_eq!(date("tomorrow", today), Some(tomorrow.format("%Y-%m-%d").to_string()));
        for (name, weekday) in WEEKDAYS {
            let read = NaiveDate::parse_from_str(&date(name, today).unwrap(), "%Y-%m-%d").unwrap();
            prop_assert_eq!(read.weekday(), weekday);
            prop_assert!(read > today && read <= today + Duration::days(7));
        }
    }

    #[test]
    fn times_read_back(h in 0u32..24, m in 0u32..60) {
        let expected = Some(format!("{h:02}:{m:02}"));
        prop_assert_eq!(time(&format!("{h}:{m:02}")), expected.clone());
        prop_assert_eq!(time(&format!("at {h:02}:{m:02} then")), expected.clone());
        let (h12, pm) = match h { 0 => (12, false), 1..=11 => (h, false), 12 => (12, true), _ => (h - 12, true) };
        let (am_pm, dotted) = if pm { ("pm", "p.m.") } else { ("am", "a.m.") };
        prop_assert_eq!(time(&format!("{h12}:{m:02} {am_pm}")), expected.clone());
        prop_assert_eq!(time(&format!("{h12}:{m:02}{}", am_pm.to_uppercase())), expected.clone());
        if m == 0 {
            prop_assert_eq!(time(&format!("{h12}{am_pm}")), expected.clone());
            prop_assert_eq!(time(&format!("{h12} {dotted}")), expected);
        }
    }

    #[test]
    fn out_of_range_times_are_not_found(h in 24u32..100, m in 60u32..100) {
        prop_assert_eq!(time(&format!("{h}:00")), None);
        prop_assert_eq!(time(&format!("10:{m}")), None);
        prop_assert_eq!(time(&format!("{}pm", h - 11)), None);
    }

    #[test]
    fn phone_numbers_read_back(digits in "[0-9]{7,15}", plus in any::<bool>(), seps in proptest::collection::vec("( |-|\\.|)", 15)) {
        let mut written = if plus { "+".to_string() } else { String::new() };
        for (i, c) in digits.chars().enumerate() {
            written.push(c);
            written.push_str(&seps[i]);
        }
        prop_assert_eq!(phone_number(&format!("my number: {written}")), Some(digits));
    }

    #[test]
    fn emails_read_back(local in "[a-zA-Z0-9_+-]{1,10}(\\.[a-zA-Z0-9_+-]{1,10})?", domain in "[a-zA-Z0-9]{1,10}(-[a-zA-Z0-9]{1,5})?\\.[a-zA-Z]{2,6}") {
        let expected = format!("{local}@{}", domain.to_lowercase());
        prop_assert_eq!(email(&format!("write to {local}@{domain}.")), Some(expected));
    }

    #[test]
    fn custom_values_are_found_in_any_case(i in 0usize..3, upper in any::<bool>()) {
        let e = sizes();
        let value = &e.values[i].value;
        let said = if upper { value.to_uppercase() } else { value.clone() };
        prop_assert_eq!(custom(&e, &format!("I'd like {said}, thanks")), Some(value.clone()));
    }
}
