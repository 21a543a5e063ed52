//! A message's text in SMPP's codings (CHANNELS §7): GSM 7-bit (the
//! default alphabet of GSM 03.38 and its extension table, one septet an
//! octet, `data_coding` 0x00) where every character fits it, else UCS-2
//! (UTF-16 big-endian, `data_coding` 0x08); long texts cut into parts of
//! 153 septets or 67 UTF-16 units, never inside a character.

/// The default alphabet, by septet.
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The extension table: each character after the escape septet 0x1B.
const GSM_EXTENSION: [(char, u8); 10] = [
    ('\u{c}', 0x0A),
    ('^', 0x14),
    ('{', 0x28),
    ('}', 0x29),
    ('\\', 0x2F),
    ('[', 0x3C),
    ('~', 0x3D),
    (']', 0x3E),
    ('|', 0x40),
    ('€', 0x65),
];

const ESCAPE: u8 = 0x1B;

/// How a message's octets are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gsm7,
    Ucs2,
}

impl Coding {
    pub fn data_coding(self) -> u8 {
        match self {
            Coding::Gsm7 => 0x00,
            Coding::Ucs2 => 0x08,
        }
    }

    /// What one message holds whole, and one part of a long one, in
    /// septets or UTF-16 units.
    fn limits(self) -> (usize, usize) {
        match self {
            Coding::Gsm7 => (160, 153),
            Coding::Ucs2 => (70, 67),
        }
    }
}

fn gsm(c: char) -> Option<Vec<u8>> {
    if c == '\u{1b}' {
        return None;
    }
    if let Some(i) = GSM_BASIC.chars().position(|b| b == c) {
        return Some(vec![i as u8]);
    }
    GSM_EXTENSION
        .iter()
        .find(|(e, _)| *e == c)
        .map(|(_, code)| vec![ESCAPE, *code])
}

/// Each character's octets in the coding that fits the whole text.
fn units(text: &str) -> (Coding, Vec<Vec<u8>>) {
    if let Some(units) = text.chars().map(gsm).collect::<Option<Vec<_>>>() {
        return (Coding::Gsm7, units);
    }
    let units = text
        .chars()
        .map(|c| {
            let mut buffer = [0u16; 2];
            c.encode_utf16(&mut buffer)
                .iter()
                .flat_map(|u| u.to_be_bytes())
                .collect()
        })
        .collect();
    (Coding::Ucs2, units)
}

/// The size of a character's octets in its coding's units.
fn weight(coding: Coding, unit: &[u8]) -> usize {
    match coding {
        Coding::Gsm7 => unit.len(),
        Coding::Ucs2 => unit.len() / 2,
    }
}

/// The text whole, in the coding that fits it.
pub fn encode(text: &str) -> (Coding, Vec<u8>) {
    let (coding, units) = units(text);
    (coding, units.concat())
}

/// The text in the parts it is sent in: one if it fits a message, else
/// parts of 153 septets or 67 UTF-16 units (their UDH is the caller's).
pub fn split(text: &str) -> (Coding, Vec<Vec<u8>>) {
    let (coding, units) = units(text);
    let (whole, part) = coding.limits();
    let total: usize = units.iter().map(|u| weight(coding, u)).sum();
    if total <= whole {
        return (coding, vec![units.concat()]);
    }
    let mut parts = vec![];
    let (mut current, mut size) = (Vec::new(), 0);
    for unit in units {
        let w = weight(coding, &unit);
        if size + w > part {
            parts.push(std::mem::take(&mut current));
            size = 0;
        }
        current.extend_from_slice(&unit);
        size += w;
    }
    if !current.is_empty() {
        parts.push(current);
    }
    (coding, parts)
}

/// The user data header of part `seq` (from 1) of `total`, of the long
/// message `reference`: concatenation with an 8-bit reference.
pub fn udh(reference: u8, total: u8, seq: u8) -> [u8; 6] {
    [0x05, 0x00, 0x03, reference, total, seq]
}

/// Where a part of a long message sits, from its user data header: the
/// message's reference, its parts and this part's number (from 1); `None`
/// for a message whole.
pub fn concatenation(esm_class: u8, octets: &[u8]) -> Option<(u16, u8, u8)> {
    if esm_class & 0x40 == 0 {
        return None;
    }
    let header = octets.get(1..=*octets.first()? as usize)?;
    let mut at = 0;
    while at + 2 <= header.len() {
        let (id, length) = (header[at], header[at + 1] as usize);
        let element = header.get(at + 2..at + 2 + length)?;
        match (id, element) {
            (0x00, &[reference, total, seq]) if total > 1 && seq >= 1 && seq <= total => {
                return Some((reference as u16, total, seq))
            }
            (0x08, &[high, low, total, seq]) if total > 1 && seq >= 1 && seq <= total => {
                return Some((u16::from_be_bytes([high, low]), total, seq))
            }
            _ => {}
        }
        at += 2 + length;
    }
    None
}

/// A person's message as text: by its `data_coding` (GSM 7-bit, ASCII,
/// Latin-1 or UCS-2; anything else read as Latin-1), without its user data
/// header when `esm_class` says it has one.
pub fn decode(data_coding: u8, esm_class: u8, octets: &[u8]) -> String {
    let octets = if esm_class & 0x40 != 0 && !octets.is_empty() {
        octets.get(octets[0] as usize + 1..).unwrap_or_default()
    } else {
        octets
    };
    match data_coding {
        0x00 => {
            let basic: Vec<char> = GSM_BASIC.chars().collect();
            let mut text = String::new();
            let mut bytes = octets.iter();
            while let Some(&b) = bytes.next() {
                if b == ESCAPE {
                    if let Some(&next) = bytes.next() {
                        match GSM_EXTENSION.iter().find(|(_, code)| *code == next) {
                            Some((c, _)) => text.push(*c),
                            None => text.push(' '),
                        }
                    }
                } else {
                    text.push(basic.get(b as usize).copied().unwrap_or(' '));
                }
            }
            text
        }
        0x08 => {
            let units: Vec<u16> = octets
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        0x01 => String::from_utf8_lossy(octets).into_owned(),
        _ => octets.iter().map(|&b| b as char).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alphabet_has_128_septets() {
        assert_eq!(GSM_BASIC.chars().count(), 128);
    }

    #[test]
    fn gsm_where_it_fits_else_ucs_2() {
        assert_eq!(
            encode("Hi @ 5€"),
            (Coding::Gsm7, b"Hi \x00 5\x1b\x65".to_vec())
        );
        assert_eq!(encode("{x}").1, [0x1b, 0x28, b'x', 0x1b, 0x29]);
        assert_eq!(encode("Привет").0, Coding::Ucs2);
        assert_eq!(encode("a😀").1, [0, b'a', 0xd8, 0x3d, 0xde, 0x00]);
        for text in ["Hi @ 5€ [ok] ~|^\\", "Grüße, Ægir", "Привет 😀"] {
            let (coding, octets) = encode(text);
            assert_eq!(decode(coding.data_coding(), 0, &octets), text);
        }
    }

    #[test]
    fn long_texts_are_cut_between_characters() {
        assert_eq!(split(&"a".repeat(160)).1.len(), 1);
        let (coding, parts) = split(&"a".repeat(161));
        assert_eq!(coding, Coding::Gsm7);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [153, 8]);
        // An escaped character is never cut from its escape.
        let text = format!("{}€", "a".repeat(152));
        let (_, parts) = split(&format!("{text}{}", "b".repeat(10)));
        assert_eq!(parts[0].len(), 152);
        assert_eq!(parts[1][..2], [0x1b, 0x65]);
        let (coding, parts) = split(&"ж".repeat(71));
        assert_eq!(coding, Coding::Ucs2);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [134, 8]);
        // Nor a character outside the BMP from its other half.
        let (_, parts) = split(&format!("{}😀bbb", "ж".repeat(66)));
        assert_eq!(parts[0].len(), 132);
        assert_eq!(udh(7, 3, 1), [5, 0, 3, 7, 3, 1]);
        let with_udh = [&udh(7, 2, 1)[..], b"Hi"].concat();
        assert_eq!(decode(0, 0x40, &with_udh), "Hi");
        assert_eq!(concatenation(0x40, &with_udh), Some((7, 2, 1)));
        assert_eq!(concatenation(0, &with_udh), None);
        let sixteen = [6, 0x08, 4, 1, 2, 3, 3, b'x'];
        assert_eq!(concatenation(0x40, &sixteen), Some((0x0102, 3, 3)));
        for broken in [&[5, 0, 3, 7, 2][..], &[5, 0, 3, 7, 2, 3], &[], &[9, 0, 3]] {
            assert_eq!(concatenation(0x40, broken), None, "{broken:?}");
        }
    }
}
