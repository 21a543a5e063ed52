//! A campaign's calling window: the days and hours at which a recipient may
//! be contacted, in the recipient's local time (CONTRACT §12.1, §12.4).
//!
//! A window is `{"days": ["mon", …], "start": "09:00", "end": "20:00",
//! "timezone"?: IANA name}`. Which zones "local" means for a recipient is
//! decided once, by [`RecipientZones::resolve`]: its own `timezone`, else the
//! zones its number implies ([`crate::zones`]), else the window's `timezone`,
//! else UTC. Where there are several zones, the window is open only while it
//! is open in all of them.
//!
//! Everything here is a pure function of the window, the zones and an
//! instant, so the scheduler can ask "may I call now?" ([`Window::is_open`]),
//! "when next?" ([`Window::next_open`]) and "until when?"
//! ([`Window::closes_at`]) without a clock of its own.
//!
//! # Clock changes
//!
//! Each allowed day's window is one stretch of time, from the first instant
//! at which the zone's clocks read that day's `start` (or later) to the first
//! instant at which they read its `end` (or later). So:
//!
//! - a `start` or `end` that falls in a spring-forward gap (02:30 on a day
//!   the clocks jump from 02:00 to 03:00) is the instant of the jump: a
//!   window starting at 02:30 opens at 03:00 the new time;
//! - a `start` or `end` that happens twice in a fall-back (01:30 on a day
//!   the clocks go back from 02:00 to 01:00) is its first occurrence, and the
//!   stretch between them is never interrupted: a window ending at 01:30
//!   closes when the clocks first read 01:30 and does not open again when
//!   they read 01:00 a second time.
//!
//! A day whose clocks skip past both `start` and `end` has no window.

use std::fmt;

use chrono::{
    DateTime, Datelike, Days, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc, Weekday,
};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::zones::zones_of;
use crate::PhoneNumber;

pub use chrono_tz::Tz;

/// How far ahead [`Window::next_open`] and [`Window::closes_at`] look. A
/// weekly window opens within a week in any one zone; the margin covers
/// clock changes and zones on either side of the date line. Zones whose
/// windows only overlap in some seasons (their clocks change on different
/// dates) are found by [`Window::next_open_before`] with a later bound.
pub const SEARCH_DAYS: u64 = 14;

const MINUTES_PER_DAY: u16 = 24 * 60;

/// Why a window was refused. Each message names the field at fault by its
/// path in a campaign request (`window.days[2] 'funday' is not a day…`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// A field missing, of the wrong JSON type, or not a field of a window.
    #[error("{field} {problem}")]
    Malformed {
        field: String,
        problem: &'static str,
    },
    #[error("window.days must name at least one day")]
    NoDays,
    #[error(
        "window.days[{index}] '{value}' is not a day: use mon, tue, wed, thu, fri, sat or sun"
    )]
    UnknownDay { index: usize, value: String },
    #[error("window.{field} '{value}' is not a time of day written HH:MM")]
    BadTime { field: &'static str, value: String },
    #[error("window.end {end} must be after window.start {start}")]
    EndNotAfterStart { start: String, end: String },
    #[error("window.timezone '{value}' is not an IANA time zone name (such as Europe/London)")]
    UnknownTimeZone { value: String },
}

/// A checked calling window. Only [`Window::parse`] (and deserialization,
/// which runs it) makes one, so there is always at least one day and `start`
/// is always before `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    days: DaySet,
    /// Minutes after midnight, 0 to 1439.
    start: u16,
    /// Minutes after midnight, 1 to 1440 (`24:00`, the end of the day), after `start`.
    end: u16,
    timezone: Option<Tz>,
}

impl Window {
    /// Reads a window from its JSON form. `start` is `00:00` to `23:59`;
    /// `end` is `00:01` to `24:00` (which reads as the end of the day) and
    /// later than `start`, so a window never crosses midnight. Day names are
    /// the three-letter English ones, in upper or lower case; repeating one is
    /// harmless.
    pub fn parse(value: &Value) -> Result<Self, WindowError> {
        let Value::Object(fields) = value else {
            return Err(malformed("window", "must be an object"));
        };
        if let Some(unknown) = fields
            .keys()
            .find(|k| !["days", "start", "end", "timezone"].contains(&k.as_str()))
        {
            return Err(malformed(
                format!("window.{unknown}"),
                "is not a field of a window (days, start, end, timezone)",
            ));
        }
        let days = parse_days(required(fields, "days")?)?;
        let start = parse_time(required(fields, "start")?, "start", false)?;
        let end = parse_time(required(fields, "end")?, "end", true)?;
        if end <= start {
            return Err(WindowError::EndNotAfterStart {
                start: format_time(start),
                end: format_time(end),
            });
        }
        let timezone = parse_timezone(fields.get("timezone"))?;
        Ok(Self {
            days,
            start,
            end,
            timezone,
        })
    }

    /// The campaign's own zone, used for recipients that nothing else places.
    pub fn timezone(&self) -> Option<Tz> {
        self.timezone
    }

    /// The zones this window is read in for one recipient (CONTRACT §12.4):
    /// [`RecipientZones::resolve`] with this window's `timezone`.
    pub fn recipient_zones(
        &self,
        timezone: Option<Tz>,
        number: Option<&PhoneNumber>,
    ) -> RecipientZones {
        RecipientZones::resolve(timezone, number, self.timezone)
    }

    /// Whether the window is open at `at` in every one of `zones` (in UTC if
    /// `zones` is empty).
    pub fn is_open(&self, zones: &[Tz], at: DateTime<Utc>) -> bool {
        let until = at + TimeDelta::seconds(1);
        cursors(self, zones, at, until)
            .iter_mut()
            .all(|cursor| cursor.next_open(at).is_some_and(|(opens, _)| opens == at))
    }

    /// The earliest instant at or after `at` at which the window is open in
    /// all of `zones` at once, looking [`SEARCH_DAYS`] ahead; `None` if it
    /// does not open by then, e.g. zones so far apart that their windows
    /// never overlap.
    pub fn next_open(&self, zones: &[Tz], at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_open_before(zones, at, at + search_span())
    }

    /// [`Window::next_open`], but looking for an instant before `limit`
    /// instead (a campaign's `end_at`, say).
    ///
    /// Each zone's windows are walked as stretches of time, not minute by
    /// minute: a candidate instant is moved to the latest of the zones' next
    /// openings until all the zones are open at it, so the work grows with
    /// the number of windows crossed, not with the time searched.
    pub fn next_open_before(
        &self,
        zones: &[Tz],
        at: DateTime<Utc>,
        limit: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let mut cursors = cursors(self, zones, at, limit);
        let mut candidate = at;
        loop {
            if candidate >= limit {
                return None;
            }
            let mut latest = candidate;
            for cursor in &mut cursors {
                let (opens, _) = cursor.next_open(candidate)?;
                latest = latest.max(opens);
            }
            // No zone had to wait: all are open at the candidate. Otherwise
            // nothing before `latest` can be open in all of them.
            if latest == candidate {
                return Some(candidate);
            }
            candidate = latest;
        }
    }

    /// When the stretch during which the window is open in all of `zones`,
    /// and which `at` is in, ends; `None` if the window is closed at `at`.
    /// Days whose windows meet (`00:00` to `24:00` on consecutive days) make
    /// one stretch; one still open [`SEARCH_DAYS`] after `at` is reported as
    /// ending then.
    pub fn closes_at(&self, zones: &[Tz], at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let limit = at + search_span();
        let mut cursors = cursors(self, zones, at, limit);
        let mut closes = limit;
        for cursor in &mut cursors {
            let (opens, mut ends) = cursor.next_open(at)?;
            if opens != at {
                return None;
            }
            while ends < limit {
                match cursor.next_open(ends) {
                    Some((opens, next_end)) if opens == ends => ends = next_end,
                    _ => break,
                }
            }
            closes = closes.min(ends);
        }
        Some(closes)
    }

    /// The stretch of `date`'s window in `tz`, if `date` is one of the
    /// window's days and the clocks don't skip all of it.
    fn stretch(&self, tz: Tz, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        if !self.days.contains(date.weekday()) {
            return None;
        }
        let opens = first_instant_reading(tz, at_minute(date, self.start));
        let closes = first_instant_reading(tz, at_minute(date, self.end));
        (opens < closes).then_some((opens, closes))
    }
}

impl TryFrom<Value> for Window {
    type Error = WindowError;

    fn try_from(value: Value) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl<'de> Deserialize<'de> for Window {
    /// Deserializing a stored window runs the request checks again, so the
    /// store can't be a way around them.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::parse(&value).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Window {
    /// The request's form: days in week order, `HH:MM` times, the zone's name.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Fields {
            days: Vec<&'static str>,
            start: String,
            end: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            timezone: Option<&'static str>,
        }
        Fields {
            days: WEEK
                .iter()
                .filter(|(_, day)| self.days.contains(*day))
                .map(|(name, _)| *name)
                .collect(),
            start: format_time(self.start),
            end: format_time(self.end),
            timezone: self.timezone.map(Tz::name),
        }
        .serialize(serializer)
    }
}

/// What decided a recipient's zones (CONTRACT §12.4); the recipient row
/// records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneSource {
    /// The recipient's own `timezone`.
    Recipient,
    /// The country and prefix of its number.
    Number,
    /// The campaign window's `timezone`.
    Campaign,
    /// Nothing: UTC.
    Default,
}

impl ZoneSource {
    /// The wire name: `recipient`, `number`, `campaign` or `default`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recipient => "recipient",
            Self::Number => "number",
            Self::Campaign => "campaign",
            Self::Default => "default",
        }
    }
}

impl fmt::Display for ZoneSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The zones a recipient's window is read in, never empty, and what decided
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientZones {
    zones: Vec<Tz>,
    source: ZoneSource,
}

impl RecipientZones {
    /// CONTRACT §12.4, first answer wins: the recipient's own `timezone`;
    /// else every zone its number's country and prefix imply (the window
    /// must then be open in all of them); else the campaign's
    /// `campaign_timezone`; else UTC.
    pub fn resolve(
        timezone: Option<Tz>,
        number: Option<&PhoneNumber>,
        campaign_timezone: Option<Tz>,
    ) -> Self {
        if let Some(tz) = timezone {
            return Self::one(tz, ZoneSource::Recipient);
        }
        // Every name in the map is checked against chrono-tz by a test, so
        // none is dropped here in practice.
        let by_number: Vec<Tz> = number
            .and_then(|number| zones_of(number.as_str()))
            .unwrap_or_default()
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        if !by_number.is_empty() {
            return Self {
                zones: by_number,
                source: ZoneSource::Number,
            };
        }
        match campaign_timezone {
            Some(tz) => Self::one(tz, ZoneSource::Campaign),
            None => Self::one(Tz::UTC, ZoneSource::Default),
        }
    }

    fn one(tz: Tz, source: ZoneSource) -> Self {
        Self {
            zones: vec![tz],
            source,
        }
    }

    /// The zones, at least one.
    pub fn zones(&self) -> &[Tz] {
        &self.zones
    }

    /// What decided them.
    pub fn source(&self) -> ZoneSource {
        self.source
    }
}

/// A set of weekdays, one bit each from Monday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DaySet(u8);

impl DaySet {
    fn contains(self, day: Weekday) -> bool {
        self.0 & (1 << day.num_days_from_monday()) != 0
    }
}

const WEEK: [(&str, Weekday); 7] = [
    ("mon", Weekday::Mon),
    ("tue", Weekday::Tue),
    ("wed", Weekday::Wed),
    ("thu", Weekday::Thu),
    ("fri", Weekday::Fri),
    ("sat", Weekday::Sat),
    ("sun", Weekday::Sun),
];

fn malformed(field: impl Into<String>, problem: &'static str) -> WindowError {
    WindowError::Malformed {
        field: field.into(),
        problem,
    }
}

fn required<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a Value, WindowError> {
    fields
        .get(name)
        .ok_or_else(|| malformed(format!("window.{name}"), "is required"))
}

fn parse_days(value: &Value) -> Result<DaySet, WindowError> {
    let Value::Array(items) = value else {
        return Err(malformed("window.days", "must be a list of days"));
    };
    let mut days = DaySet(0);
    for (index, item) in items.iter().enumerate() {
        let Value::String(name) = item else {
            return Err(malformed(
                format!("window.days[{index}]"),
                "must be a string",
            ));
        };
        let (_, day) = WEEK
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .ok_or_else(|| WindowError::UnknownDay {
                index,
                value: name.clone(),
            })?;
        days.0 |= 1 << day.num_days_from_monday();
    }
    if days.0 == 0 {
        return Err(WindowError::NoDays);
    }
    Ok(days)
}

/// An IANA name as chrono-tz spells it (exactly: `Europe/London`, not
/// `europe/london`); absent and `null` are no zone.
fn parse_timezone(value: Option<&Value>) -> Result<Option<Tz>, WindowError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => {
            name.parse()
                .map(Some)
                .map_err(|_| WindowError::UnknownTimeZone {
                    value: name.clone(),
                })
        }
        Some(_) => Err(malformed("window.timezone", "must be a string")),
    }
}

/// `HH:MM` as minutes after midnight; `24:00` only where `end_of_day` is
/// allowed.
fn parse_time(value: &Value, field: &'static str, end_of_day: bool) -> Result<u16, WindowError> {
    let Value::String(text) = value else {
        return Err(malformed(
            format!("window.{field}"),
            "must be a string HH:MM",
        ));
    };
    let bad = || WindowError::BadTime {
        field,
        value: text.clone(),
    };
    let (hours, minutes) = text.split_once(':').ok_or_else(bad)?;
    let two_digits = |s: &str| {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u16>().ok())
            .flatten()
    };
    let (hours, minutes) = (
        two_digits(hours).ok_or_else(bad)?,
        two_digits(minutes).ok_or_else(bad)?,
    );
    let minute = hours * 60 + minutes;
    let in_range = minutes < 60 && (hours < 24 || (end_of_day && minute == MINUTES_PER_DAY));
    in_range.then_some(minute).ok_or_else(bad)
}

fn format_time(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// The local date and time `minute` minutes after `date`'s midnight;
/// `24:00` is the next day's midnight.
fn at_minute(date: NaiveDate, minute: u16) -> NaiveDateTime {
    date.and_time(chrono::NaiveTime::MIN) + TimeDelta::minutes(minute.into())
}

/// The first instant at which `tz`'s clocks read `local` or later: `local`
/// itself when it happens once, its first occurrence when the clocks go
/// back over it, and the instant they jump when they skip it.
fn first_instant_reading(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local).earliest() {
        Some(t) => t.with_timezone(&Utc),
        None => instant_of_jump(tz, local),
    }
}

/// For a local time the clocks skip, the instant they jump past it: by
/// bisection, between instants 18 hours either side of it, at which the
/// clocks certainly read earlier and later (no offset is that far from
/// UTC). Zones change their clocks at most once in such a span, so the
/// reading rises across it and the bisection finds the one jump.
fn instant_of_jump(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let reads = |t: i64| -> NaiveDateTime {
        let instant = DateTime::from_timestamp(t, 0).unwrap_or_default();
        instant.with_timezone(&tz).naive_local()
    };
    let as_if_utc = local.and_utc().timestamp();
    let span = 18 * 3600;
    // reads(before) < local <= reads(after)
    let (mut before, mut after) = (as_if_utc - span, as_if_utc + span);
    while after - before > 1 {
        let middle = before + (after - before) / 2;
        if reads(middle) >= local {
            after = middle;
        } else {
            before = middle;
        }
    }
    DateTime::from_timestamp(after, 0).unwrap_or_default()
}

fn search_span() -> TimeDelta {
    TimeDelta::days(SEARCH_DAYS as i64)
}

/// One cursor per zone (UTC when there are none).
fn cursors<'w>(
    window: &'w Window,
    zones: &[Tz],
    from: DateTime<Utc>,
    limit: DateTime<Utc>,
) -> Vec<ZoneCursor<'w>> {
    let zones: &[Tz] = if zones.is_empty() { &[Tz::UTC] } else { zones };
    zones
        .iter()
        .map(|&tz| ZoneCursor::new(window, tz, from, limit))
        .collect()
}

/// Walks one zone's stretches forward in time, one local date at a time, for
/// queries at non-decreasing instants.
struct ZoneCursor<'w> {
    window: &'w Window,
    tz: Tz,
    /// The next local date whose stretch has not been looked at.
    date: NaiveDate,
    /// Past this local date, stretches start at or after the search limit.
    last_date: NaiveDate,
    stretch: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl<'w> ZoneCursor<'w> {
    fn new(window: &'w Window, tz: Tz, from: DateTime<Utc>, limit: DateTime<Utc>) -> Self {
        let local_date = |t: DateTime<Utc>| t.with_timezone(&tz).date_naive();
        // Earlier dates' stretches end by the instant the clocks first read
        // this date, which is no later than `from`.
        let date = local_date(from);
        let last_date = local_date(limit) + Days::new(1);
        Self {
            window,
            tz,
            date,
            last_date,
            stretch: None,
        }
    }

    /// The earliest instant at or after `t` at which this zone's window is
    /// open, with the end of that day's stretch; `None` when that is past
    /// the search limit. Stretches come in date order and never overlap, so
    /// the first one that ends after `t` is the answer.
    fn next_open(&mut self, t: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        loop {
            if let Some((opens, closes)) = self.stretch {
                if closes > t {
                    return Some((opens.max(t), closes));
                }
            }
            if self.date > self.last_date {
                return None;
            }
            self.stretch = self.window.stretch(self.tz, self.date);
            self.date = self.date.succ_opt()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Offset, Timelike};
    use proptest::prelude::*;
    use serde_json::json;

    const LONDON: Tz = Tz::Europe__London;
    const NEW_YORK: Tz = Tz::America__New_York;
    const SYDNEY: Tz = Tz::Australia__Sydney;
    const AUCKLAND: Tz = Tz::Pacific__Auckland;

    fn window(value: Value) -> Window {
        Window::parse(&value).unwrap()
    }

    /// Every day of the week, from `start` to `end`.
    fn every_day(start: &str, end: &str) -> Window {
        window(json!({
            "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "start": start,
            "end": end,
        }))
    }

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_window_reads_and_writes_its_json_form() {
        let w = window(json!({
            "days": ["FRI", "mon", "Tue", "mon"],
            "start": "09:00",
            "end": "24:00",
            "timezone": "Europe/Paris",
        }));
        assert_eq!(w.timezone(), Some(Tz::Europe__Paris));
        let written = serde_json::to_value(w).unwrap();
        assert_eq!(
            written,
            json!({"days": ["mon", "tue", "fri"], "start": "09:00", "end": "24:00", "timezone": "Europe/Paris"})
        );
        let read: Window = serde_json::from_value(written).unwrap();
        assert_eq!(read, w);

        let w =
            window(json!({"days": ["sun"], "start": "00:00", "end": "00:01", "timezone": null}));
        assert_eq!(w.timezone(), None);
        assert_eq!(
            serde_json::to_value(w).unwrap(),
            json!({"days": ["sun"], "start": "00:00", "end": "00:01"})
        );
    }

    #[test]
    fn each_refusal_names_its_field() {
        let days = json!(["mon"]);
        let cases = [
            (json!("09:00-20:00"), "window must be an object"),
            (
                json!({"start": "09:00", "end": "20:00"}),
                "window.days is required",
            ),
            (
                json!({"days": days, "end": "20:00"}),
                "window.start is required",
            ),
            (
                json!({"days": days, "start": "09:00"}),
                "window.end is required",
            ),
            (
                json!({"days": days, "start": "09:00", "end": "20:00", "zone": "UTC"}),
                "window.zone is not a field of a window (days, start, end, timezone)",
            ),
            (
                json!({"days": "mon", "start": "09:00", "end": "20:00"}),
                "window.days must be a list of days",
            ),
            (
                json!({"days": [], "start": "09:00", "end": "20:00"}),
                "window.days must name at least one day",
            ),
            (
                json!({"days": ["mon", 2], "start": "09:00", "end": "20:00"}),
                "window.days[1] must be a string",
            ),
            (
                json!({"days": ["mon", "tue", "funday"], "start": "09:00", "end": "20:00"}),
                "window.days[2] 'funday' is not a day: use mon, tue, wed, thu, fri, sat or sun",
            ),
            (
                json!({"days": ["monday"], "start": "09:00", "end": "20:00"}),
                "window.days[0] 'monday' is not a day: use mon, tue, wed, thu, fri, sat or sun",
            ),
            (
                json!({"days": days, "start": 9, "end": "20:00"}),
                "window.start must be a string HH:MM",
            ),
            (
                json!({"days": days, "start": "9:00", "end": "20:00"}),
                "window.start '9:00' is not a time of day written HH:MM",
            ),
            (
                json!({"days": days, "start": "09:60", "end": "20:00"}),
                "window.start '09:60' is not a time of day written HH:MM",
            ),
            (
                json!({"days": days, "start": "24:00", "end": "24:00"}),
                "window.start '24:00' is not a time of day written HH:MM",
            ),
            (
                json!({"days": days, "start": "09:00", "end": "24:01"}),
                "window.end '24:01' is not a time of day written HH:MM",
            ),
            (
                json!({"days": days, "start": "09:00", "end": "+8:00"}),
                "window.end '+8:00' is not a time of day written HH:MM",
            ),
            (
                json!({"days": days, "start": "09:00", "end": "20:00:00"}),
                "window.end '20:00:00' is not a time of day written HH:MM",
            ),
            (
                json!({"days": days, "start": "20:00", "end": "09:00"}),
                "window.end 09:00 must be after window.start 20:00",
            ),
            (
                json!({"days": days, "start": "09:00", "end": "09:00"}),
                "window.end 09:00 must be after window.start 09:00",
            ),
            (
                json!({"days": days, "start": "09:00", "end": "20:00", "timezone": "Mars/Olympus_Mons"}),
                "window.timezone 'Mars/Olympus_Mons' is not an IANA time zone name (such as Europe/London)",
            ),
            (
                json!({"days": days, "start": "09:00", "end": "20:00", "timezone": "europe/london"}),
                "window.timezone 'europe/london' is not an IANA time zone name (such as Europe/London)",
            ),
            (
                json!({"days": days, "start": "09:00", "end": "20:00", "timezone": 1}),
                "window.timezone must be a string",
            ),
        ];
        for (value, message) in cases {
            let error = Window::parse(&value).expect_err(message);
            assert_eq!(error.to_string(), message, "{value}");
            // Deserializing says the same.
            let error = serde_json::from_value::<Window>(value).unwrap_err();
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn the_recipients_zone_beats_its_number_which_beats_the_campaigns() {
        let campaign = window(json!({
            "days": ["mon"], "start": "09:00", "end": "20:00", "timezone": "Asia/Tokyo",
        }));
        let uk = PhoneNumber::parse("447700900123").unwrap();
        let nowhere = PhoneNumber::parse("8823123456").unwrap();

        let zones = campaign.recipient_zones(Some(NEW_YORK), Some(&uk));
        assert_eq!(
            (zones.zones(), zones.source()),
            (&[NEW_YORK][..], ZoneSource::Recipient)
        );

        let zones = campaign.recipient_zones(None, Some(&uk));
        assert_eq!(zones.source(), ZoneSource::Number);
        assert!(zones.zones().contains(&LONDON), "{:?}", zones.zones());

        // A number in no zone (+882, international networks) falls through.
        assert_eq!(zones_of(nowhere.as_str()), None);
        let zones = campaign.recipient_zones(None, Some(&nowhere));
        assert_eq!(
            (zones.zones(), zones.source()),
            (&[Tz::Asia__Tokyo][..], ZoneSource::Campaign)
        );
        let zones = campaign.recipient_zones(None, None);
        assert_eq!(zones.source(), ZoneSource::Campaign);

        let zones = RecipientZones::resolve(None, Some(&nowhere), None);
        assert_eq!(
            (zones.zones(), zones.source()),
            (&[Tz::UTC][..], ZoneSource::Default)
        );

        // A number with several zones keeps them all.
        let idaho = PhoneNumber::parse("12082000000").unwrap();
        let zones = RecipientZones::resolve(None, Some(&idaho), None);
        assert_eq!(
            zones.zones(),
            [Tz::America__Boise, Tz::America__Los_Angeles]
        );

        let names: Vec<String> = [
            ZoneSource::Recipient,
            ZoneSource::Number,
            ZoneSource::Campaign,
            ZoneSource::Default,
        ]
        .iter()
        .map(|s| {
            serde_json::to_value(s)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
        assert_eq!(names, ["recipient", "number", "campaign", "default"]);
        assert_eq!(ZoneSource::Number.to_string(), "number");
    }

    #[test]
    fn night_in_the_recipients_zone_waits_for_the_morning() {
        let weekdays = window(json!({
            "days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "20:00",
        }));
        let zones = [NEW_YORK];
        // Monday 23:00 in New York (EDT, UTC-4) is Tuesday 03:00 UTC.
        let night = utc("2025-06-10T03:00:00Z");
        assert!(!weekdays.is_open(&zones, night));
        assert_eq!(weekdays.closes_at(&zones, night), None);
        let morning = utc("2025-06-10T13:00:00Z");
        assert_eq!(weekdays.next_open(&zones, night), Some(morning));
        assert!(weekdays.is_open(&zones, morning));
        assert!(!weekdays.is_open(&zones, morning - TimeDelta::seconds(1)));
        assert_eq!(
            weekdays.closes_at(&zones, morning),
            Some(utc("2025-06-11T00:00:00Z"))
        );
        // Open now: next_open is now.
        let noon = utc("2025-06-10T16:00:00.250Z");
        assert_eq!(weekdays.next_open(&zones, noon), Some(noon));
        // The window's end is not in it.
        assert!(!weekdays.is_open(&zones, utc("2025-06-11T00:00:00Z")));

        // Friday evening waits for Monday morning.
        let friday_night = utc("2025-06-14T01:00:00Z");
        assert_eq!(
            weekdays.next_open(&zones, friday_night),
            Some(utc("2025-06-16T13:00:00Z"))
        );
        // In UTC itself, the same instant is a Saturday.
        assert_eq!(
            weekdays.next_open(&[], friday_night),
            Some(utc("2025-06-16T09:00:00Z"))
        );
    }

    #[test]
    fn the_days_are_the_recipients_days_not_utcs() {
        let mondays = window(json!({"days": ["mon"], "start": "09:00", "end": "17:00"}));
        let zones = [AUCKLAND];
        // Monday 2 June 2025, 09:00 in Auckland (NZST, UTC+12) is Sunday
        // 21:00 UTC.
        let opens = utc("2025-06-01T21:00:00Z");
        assert_eq!(
            mondays.next_open(&zones, utc("2025-05-31T00:00:00Z")),
            Some(opens)
        );
        assert!(mondays.is_open(&zones, opens));
        assert_eq!(
            mondays.closes_at(&zones, opens),
            Some(utc("2025-06-02T05:00:00Z"))
        );
        // Monday 21:00 UTC is Tuesday 09:00 in Auckland: closed.
        assert!(!mondays.is_open(&zones, utc("2025-06-02T21:00:00Z")));
        // A UTC window opens on the UTC Monday instead.
        assert_eq!(
            mondays.next_open(&[Tz::UTC], utc("2025-05-31T00:00:00Z")),
            Some(utc("2025-06-02T09:00:00Z"))
        );
    }

    #[test]
    fn several_zones_are_open_only_where_their_windows_overlap() {
        let w = every_day("09:00", "20:00");
        let zones = [LONDON, NEW_YORK];
        // June: London 08:00-19:00 UTC, New York 13:00-24:00 UTC.
        let at = utc("2025-06-10T06:00:00Z");
        assert_eq!(w.next_open(&zones, at), Some(utc("2025-06-10T13:00:00Z")));
        assert_eq!(
            w.closes_at(&zones, utc("2025-06-10T13:00:00Z")),
            Some(utc("2025-06-10T19:00:00Z"))
        );
        assert!(w.is_open(&[LONDON], utc("2025-06-10T10:00:00Z")));
        assert!(!w.is_open(&zones, utc("2025-06-10T10:00:00Z")));
        assert!(!w.is_open(&zones, utc("2025-06-10T19:00:00Z")));
        // After today's overlap, tomorrow's.
        assert_eq!(
            w.next_open(&zones, utc("2025-06-10T19:00:00Z")),
            Some(utc("2025-06-11T13:00:00Z"))
        );
        // The order of the zones is irrelevant.
        assert_eq!(
            w.next_open(&[NEW_YORK, LONDON], at),
            w.next_open(&zones, at)
        );
    }

    #[test]
    fn zones_whose_windows_never_overlap_never_open() {
        let mornings = every_day("09:00", "12:00");
        // London 08:00-11:00 UTC, Sydney 23:00-02:00 UTC.
        let zones = [LONDON, SYDNEY];
        let at = utc("2025-06-10T00:00:00Z");
        assert_eq!(mornings.next_open(&zones, at), None);
        assert!(!mornings.is_open(&zones, utc("2025-06-10T08:30:00Z")));
        assert_eq!(
            mornings.closes_at(&zones, utc("2025-06-10T08:30:00Z")),
            None
        );
        assert!(mornings.next_open(&[LONDON], at).is_some());
        assert!(mornings.next_open(&[SYDNEY], at).is_some());
    }

    #[test]
    fn a_number_placed_only_by_its_country_may_never_be_reachable() {
        // +1 800 toll-free numbers have no area, so they are in all 42 zones of
        // +1, from Guam to Pago Pago: no 09:00 to 20:00 is common to them.
        let w = every_day("09:00", "20:00");
        let toll_free = PhoneNumber::parse("18005550123").unwrap();
        let zones = w.recipient_zones(None, Some(&toll_free));
        assert_eq!(zones.source(), ZoneSource::Number);
        assert!(zones.zones().len() > 40);
        let started = std::time::Instant::now();
        assert_eq!(
            w.next_open(zones.zones(), utc("2025-06-10T00:00:00Z")),
            None
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn london_changes_its_clocks() {
        let w = every_day("09:00", "20:00");
        let zones = [LONDON];
        let opens = |day: &str| w.next_open(&zones, utc(&format!("{day}T00:00:00Z")));
        let closes = |at| w.closes_at(&zones, at);
        // Saturday 29 March 2025, GMT; Sunday 30 March, BST from 01:00 UTC.
        assert_eq!(opens("2025-03-29"), Some(utc("2025-03-29T09:00:00Z")));
        assert_eq!(opens("2025-03-30"), Some(utc("2025-03-30T08:00:00Z")));
        assert_eq!(
            closes(utc("2025-03-30T08:00:00Z")),
            Some(utc("2025-03-30T19:00:00Z"))
        );
        // Saturday 25 October, BST; Sunday 26 October, GMT from 01:00 UTC.
        assert_eq!(opens("2025-10-25"), Some(utc("2025-10-25T08:00:00Z")));
        assert_eq!(opens("2025-10-26"), Some(utc("2025-10-26T09:00:00Z")));
        assert_eq!(
            closes(utc("2025-10-26T09:00:00Z")),
            Some(utc("2025-10-26T20:00:00Z"))
        );
    }

    #[test]
    fn new_york_changes_its_clocks() {
        let w = every_day("09:00", "20:00");
        let zones = [NEW_YORK];
        // 06:00 UTC is in the night there, whatever the season.
        let opens = |day: &str| w.next_open(&zones, utc(&format!("{day}T06:00:00Z")));
        // Saturday 8 March 2025, EST (UTC-5); Sunday 9 March, EDT (UTC-4).
        assert_eq!(opens("2025-03-08"), Some(utc("2025-03-08T14:00:00Z")));
        assert_eq!(opens("2025-03-09"), Some(utc("2025-03-09T13:00:00Z")));
        // Saturday 1 November, EDT; Sunday 2 November, EST.
        assert_eq!(opens("2025-11-01"), Some(utc("2025-11-01T13:00:00Z")));
        assert_eq!(opens("2025-11-02"), Some(utc("2025-11-02T14:00:00Z")));
        assert_eq!(
            w.closes_at(&zones, utc("2025-11-02T14:00:00Z")),
            Some(utc("2025-11-03T01:00:00Z"))
        );
    }

    #[test]
    fn a_time_the_clocks_skip_is_the_instant_they_jump() {
        // London, 30 March 2025: 01:00 GMT becomes 02:00 BST at 01:00 UTC.
        let w = every_day("01:30", "03:00");
        let zones = [LONDON];
        assert_eq!(
            w.next_open(&zones, utc("2025-03-30T00:00:00Z")),
            Some(utc("2025-03-30T01:00:00Z"))
        );
        assert!(!w.is_open(&zones, utc("2025-03-30T00:59:59Z")));
        assert_eq!(
            w.closes_at(&zones, utc("2025-03-30T01:00:00Z")),
            Some(utc("2025-03-30T02:00:00Z"))
        );
        // An end in the gap closes the window when the clocks jump.
        let w = every_day("00:30", "01:30");
        assert_eq!(
            w.closes_at(&zones, utc("2025-03-30T00:30:00Z")),
            Some(utc("2025-03-30T01:00:00Z"))
        );
        // Both in the gap: no window that day.
        let w = every_day("01:10", "01:50");
        assert_eq!(
            w.next_open(&zones, utc("2025-03-30T00:00:00Z")),
            Some(utc("2025-03-31T00:10:00Z"))
        );

        // New York, 9 March 2025: 02:00 EST becomes 03:00 EDT at 07:00 UTC.
        let w = every_day("02:30", "04:00");
        let zones = [NEW_YORK];
        assert_eq!(
            w.next_open(&zones, utc("2025-03-09T00:00:00Z")),
            Some(utc("2025-03-09T07:00:00Z"))
        );
        assert_eq!(
            w.closes_at(&zones, utc("2025-03-09T07:00:00Z")),
            Some(utc("2025-03-09T08:00:00Z"))
        );
    }

    #[test]
    fn a_time_the_clocks_repeat_counts_once() {
        // London, 26 October 2025: 02:00 BST becomes 01:00 GMT at 01:00 UTC,
        // so 01:00 to 02:00 happens from 00:00 and again from 01:00 UTC.
        let zones = [LONDON];
        let w = every_day("01:30", "03:00");
        let opens = utc("2025-10-26T00:30:00Z");
        assert_eq!(
            w.next_open(&zones, utc("2025-10-26T00:00:00Z")),
            Some(opens)
        );
        // 01:10 GMT, the clocks' second pass before the start: still open.
        assert!(w.is_open(&zones, utc("2025-10-26T01:10:00Z")));
        assert_eq!(
            w.closes_at(&zones, opens),
            Some(utc("2025-10-26T03:00:00Z"))
        );

        let w = every_day("00:00", "01:30");
        assert_eq!(
            w.closes_at(&zones, utc("2025-10-26T00:00:00Z")),
            Some(utc("2025-10-26T00:30:00Z"))
        );
        // 01:10 GMT reads inside the window again, but the day's window is over.
        assert!(!w.is_open(&zones, utc("2025-10-26T01:10:00Z")));

        // New York, 2 November 2025: 01:30 is at 05:30 (EDT) and 06:30 UTC (EST).
        let w = every_day("01:30", "04:00");
        assert_eq!(
            w.next_open(&[NEW_YORK], utc("2025-11-02T00:00:00Z")),
            Some(utc("2025-11-02T05:30:00Z"))
        );
    }

    #[test]
    fn a_day_the_clocks_skip_has_no_window() {
        // Samoa skipped Friday 30 December 2011, moving west of the date line.
        let fridays = window(json!({"days": ["fri"], "start": "09:00", "end": "17:00"}));
        let zones = [Tz::Pacific__Apia];
        let opens = fridays
            .next_open(&zones, utc("2011-12-29T00:00:00Z"))
            .unwrap();
        // The next Friday, 6 January 2012, 09:00 at UTC+14 (daylight time).
        assert_eq!(opens, utc("2012-01-05T19:00:00Z"));
    }

    #[test]
    fn windows_that_meet_make_one_stretch() {
        let zones = [LONDON];
        let w = window(json!({"days": ["mon", "tue"], "start": "00:00", "end": "24:00"}));
        // Monday 9 June 2025, 10:00 BST: open until Wednesday's midnight.
        assert_eq!(
            w.closes_at(&zones, utc("2025-06-09T09:00:00Z")),
            Some(utc("2025-06-10T23:00:00Z"))
        );
        // Always open: reported as closing at the end of the search.
        let always = every_day("00:00", "24:00");
        let at = utc("2025-06-09T09:00:00Z");
        assert!(always.is_open(&zones, at));
        assert_eq!(
            always.closes_at(&zones, at),
            Some(at + TimeDelta::days(SEARCH_DAYS as i64))
        );
    }

    #[test]
    fn an_overlap_that_comes_only_with_a_season_needs_a_later_limit() {
        // 09:00 to 14:00 in London and New York: 09-14 and 14-19 UTC in
        // winter, no overlap; between New York's clock change (9 March 2025)
        // and London's (30 March) they are four hours apart, and overlap.
        let w = every_day("09:00", "14:00");
        let zones = [LONDON, NEW_YORK];
        let january = utc("2025-01-06T00:00:00Z");
        assert_eq!(w.next_open(&zones, january), None);
        let opens = w.next_open_before(&zones, january, utc("2026-01-01T00:00:00Z"));
        assert_eq!(opens, Some(utc("2025-03-09T13:00:00Z")));
        assert_eq!(
            w.closes_at(&zones, opens.unwrap()),
            Some(utc("2025-03-09T14:00:00Z"))
        );
        // The limit itself is excluded.
        assert_eq!(w.next_open_before(&zones, january, opens.unwrap()), None);
    }

    /// Zones with whole-hour, half-hour and three-quarter offsets, half-hour
    /// clock changes (Lord Howe), both hemispheres and none.
    const SOME_ZONES: [Tz; 10] = [
        Tz::UTC,
        Tz::Europe__London,
        Tz::America__New_York,
        Tz::America__Sao_Paulo,
        Tz::Pacific__Auckland,
        Tz::Pacific__Chatham,
        Tz::Australia__Lord_Howe,
        Tz::Australia__Adelaide,
        Tz::Asia__Kolkata,
        Tz::Asia__Kathmandu,
    ];

    const QUARTER_HOUR: i64 = 15 * 60;

    /// A window whose times are quarter hours. Every zone above is a whole
    /// number of quarter hours from UTC and changes its clocks on one, so
    /// windows open and close only on UTC quarter hours, and probing each
    /// one misses nothing.
    fn quarter_hour_window() -> impl Strategy<Value = Window> {
        (1u8..128, 0u16..96)
            .prop_flat_map(|(days, start)| (Just(days), Just(start), start + 1..=96))
            .prop_map(|(days, start, end)| Window {
                days: DaySet(days),
                start: start * 15,
                end: end * 15,
                timezone: None,
            })
    }

    fn zone_set() -> impl Strategy<Value = Vec<Tz>> {
        proptest::collection::vec(proptest::sample::select(&SOME_ZONES[..]), 1..=3)
    }

    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        // 2024 to 2026.
        (1_704_067_200i64..1_798_761_600).prop_map(|t| DateTime::from_timestamp(t, 0).unwrap())
    }

    /// The quarter hours after `from` and before `to`.
    fn quarter_hours(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> impl Iterator<Item = DateTime<Utc>> {
        let first = from.timestamp().div_euclid(QUARTER_HOUR) + 1;
        (first..)
            .map(|q| DateTime::from_timestamp(q * QUARTER_HOUR, 0).unwrap())
            .take_while(move |t| *t < to)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn next_open_is_the_first_open_instant(w in quarter_hour_window(), zones in zone_set(), at in instant()) {
            let limit = at + search_span();
            match w.next_open(&zones, at) {
                Some(opens) => {
                    prop_assert!(at <= opens && opens < limit);
                    prop_assert!(w.is_open(&zones, opens));
                    prop_assert!(opens == at || !w.is_open(&zones, at));
                    for t in quarter_hours(at, opens) {
                        prop_assert!(!w.is_open(&zones, t), "open at {t}, before {opens}");
                    }
                }
                None => {
                    prop_assert!(!w.is_open(&zones, at));
                    for t in quarter_hours(at, limit) {
                        prop_assert!(!w.is_open(&zones, t), "open at {t}");
                    }
                }
            }
        }

        #[test]
        fn closes_at_ends_the_open_stretch(w in quarter_hour_window(), zones in zone_set(), at in instant()) {
            let Some(opens) = w.next_open(&zones, at) else { return Ok(()) };
            let closes = w.closes_at(&zones, opens).unwrap();
            prop_assert!(closes > opens);
            for t in quarter_hours(opens, closes) {
                prop_assert!(w.is_open(&zones, t), "closed at {t}, before {closes}");
            }
            prop_assert!(closes == opens + search_span() || !w.is_open(&zones, closes));
        }

        #[test]
        fn away_from_clock_changes_the_window_is_what_the_clocks_read(
            w in quarter_hour_window(), zones in zone_set(), at in instant(),
        ) {
            let offset = |tz: Tz, t: DateTime<Utc>| t.with_timezone(&tz).offset().fix();
            let around = TimeDelta::hours(26);
            if zones.iter().any(|&tz| offset(tz, at - around) != offset(tz, at + around)) {
                return Ok(());
            }
            let reads_open = zones.iter().all(|&tz| {
                let local = at.with_timezone(&tz);
                let minute = (local.hour() * 60 + local.minute()) as u16;
                w.days.contains(local.weekday()) && w.start <= minute && minute < w.end
            });
            prop_assert_eq!(w.is_open(&zones, at), reads_open);
        }
    }
}
