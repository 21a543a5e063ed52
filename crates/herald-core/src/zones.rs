//! The IANA time zones a phone number implies, from its country calling code
//! and prefix (CONTRACT §12.4).
//!
//! A campaign may only contact a recipient inside its window in the
//! recipient's local time; a recipient that brings no `timezone` of its own
//! is placed by its number. The data is libphonenumber's time-zone map
//! (`data/phone_timezones.txt`, see `data/README.md`), embedded in the binary
//! so that no deployment can run without it or with a different copy, and
//! indexed on first use.
//!
//! Lookup is by longest listed prefix, as libphonenumber does. Where the map
//! knows only the country, the answer is every zone of that country (all of
//! North America for a `1` number with no listed area code), and it is the
//! caller's rule (§12.4: the window must be open in all of them) that makes
//! such a number hard to reach, not this module.

use std::collections::HashMap;
use std::sync::OnceLock;

/// libphonenumber's time-zone map, `prefix|Zone1&Zone2` lines.
const MAP: &str = include_str!("../data/phone_timezones.txt");

/// The name libphonenumber gives to "no idea"; never a real zone.
const UNKNOWN_ZONE: &str = "Etc/Unknown";

/// The IANA zones of a phone number, by the longest prefix of it that the map
/// lists.
///
/// `digits` is a number as [`PhoneNumber::as_str`](crate::PhoneNumber::as_str)
/// gives it: country calling code first, no `+`. `None` when no prefix is
/// listed, or when the longest listed one says only that the zone is unknown
/// (a more specific "unknown" is not overruled by what the country as a whole
/// would say). The zones are in the map's order, which is alphabetical.
pub fn zones_of(digits: &str) -> Option<&'static [&'static str]> {
    table().lookup(digits)
}

/// The map, indexed: each prefix points at one of a few hundred distinct zone
/// lists (thousands of prefixes share "America/New_York").
struct Table {
    by_prefix: HashMap<&'static str, usize>,
    lists: Vec<Vec<&'static str>>,
    longest_prefix: usize,
}

impl Table {
    fn lookup(&self, digits: &str) -> Option<&[&'static str]> {
        // Only ASCII digits can match, and slicing by byte below needs them.
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        (1..=digits.len().min(self.longest_prefix))
            .rev()
            .find_map(|len| self.by_prefix.get(&digits[..len]))
            .map(|&list| self.lists[list].as_slice())
            .filter(|zones| !zones.is_empty())
    }
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| parse(MAP))
}

/// Reads the map. The file ships inside the crate and a test reads every
/// line of it, so a malformed line is a build mistake: it panics rather than
/// being skipped, which would quietly place some numbers in no zone.
fn parse(map: &'static str) -> Table {
    let mut by_prefix = HashMap::new();
    let mut list_index: HashMap<&'static str, usize> = HashMap::new();
    let mut lists = Vec::new();
    let mut longest_prefix = 0;
    for (number, line) in map.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((prefix, zones)) = line.split_once('|') else {
            panic!("phone_timezones.txt line {}: no '|'", number + 1);
        };
        assert!(
            !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()),
            "phone_timezones.txt line {}: prefix {prefix:?} is not digits",
            number + 1
        );
        let list = *list_index.entry(zones).or_insert_with(|| {
            lists.push(
                zones
                    .split('&')
                    .filter(|zone| !zone.is_empty() && *zone != UNKNOWN_ZONE)
                    .collect(),
            );
            lists.len() - 1
        });
        let previous = by_prefix.insert(prefix, list);
        assert!(
            previous.is_none(),
            "phone_timezones.txt line {}: prefix {prefix} listed twice",
            number + 1
        );
        longest_prefix = longest_prefix.max(prefix.len());
    }
    Table {
        by_prefix,
        lists,
        longest_prefix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(digits: &str) -> Vec<&'static str> {
        zones_of(digits).map(<[_]>::to_vec).unwrap_or_default()
    }

    #[test]
    fn a_uk_mobile_is_in_london() {
        // 07700 900xxx: Ofcom's range for drama, a real mobile prefix.
        let zones = zones("447700900123");
        assert!(zones.contains(&"Europe/London"), "{zones:?}");
        // The Crown Dependencies share +44 and London's clock.
        assert!(zones.iter().all(|z| z.starts_with("Europe/")), "{zones:?}");
    }

    #[test]
    fn us_numbers_are_placed_by_area_code() {
        assert_eq!(zones("12125550123"), ["America/New_York"]);
        assert_eq!(zones("14155550123"), ["America/Los_Angeles"]);
        assert_eq!(zones("13125550123"), ["America/Chicago"]);
        assert_eq!(zones("18085550123"), ["Pacific/Honolulu"]);
    }

    #[test]
    fn the_longest_listed_prefix_decides() {
        // 1208 (Idaho) is split between two zones; 120823 is Mountain only,
        // 1208215 Pacific only.
        assert_eq!(
            zones("12082000000"),
            ["America/Boise", "America/Los_Angeles"]
        );
        assert_eq!(zones("12082312345"), ["America/Denver"]);
        assert_eq!(zones("12082151234"), ["America/Los_Angeles"]);
    }

    #[test]
    fn a_country_level_prefix_gives_all_its_zones() {
        // +7 numbers with no listed prefix: all of Russia and Kazakhstan.
        let russia = zones("70000000000");
        assert!(russia.len() > 10, "{russia:?}");
        for zone in ["Europe/Moscow", "Asia/Vladivostok", "Asia/Kamchatka"] {
            assert!(russia.contains(&zone), "{zone} not in {russia:?}");
        }
        // Moscow's own prefix is more specific.
        assert_eq!(zones("79161234567"), ["Europe/Moscow"]);

        // Australia's 08 area (Western and South Australia) is not split
        // further: any of its eight zones.
        let australia = zones("61812345678");
        assert_eq!(australia.len(), 8, "{australia:?}");
        assert!(australia.contains(&"Australia/Perth"), "{australia:?}");
        assert!(australia.contains(&"Australia/Sydney"), "{australia:?}");
    }

    #[test]
    fn unlisted_prefixes_have_no_zones() {
        // +999 is a reserved calling code; +0 is none at all.
        assert_eq!(zones_of("9991234567"), None);
        assert_eq!(zones_of("0123456789"), None);
        assert_eq!(zones_of(""), None);
        // Not digits: nothing to look up (and no panic slicing it).
        assert_eq!(zones_of("+447700900123"), None);
        assert_eq!(zones_of("44é"), None);
    }

    #[test]
    fn unknown_is_no_zone_and_overrules_the_country() {
        let table = parse("# a comment\n\n44|Europe/London\n449|Etc/Unknown\n");
        assert_eq!(table.lookup("4412"), Some(&["Europe/London"][..]));
        assert_eq!(table.lookup("4491"), None);
        assert_eq!(table.lookup("4"), None);
    }

    #[test]
    fn every_zone_in_the_map_is_a_zone_chrono_tz_knows() {
        let table = table();
        assert!(table.by_prefix.len() > 3000, "{}", table.by_prefix.len());
        for zone in table.lists.iter().flatten() {
            assert!(
                zone.parse::<chrono_tz::Tz>().is_ok(),
                "{zone} is not an IANA zone chrono-tz knows"
            );
        }
    }
}
