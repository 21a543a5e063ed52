//! A campaign's recipients uploaded as CSV (CONTRACT §12.2), read as the
//! request body arrives.
//!
//! The body's first line is a header naming the columns: `to` is required,
//! `id` and `timezone` are optional, and every other column is a parameter
//! named by its header. Fields follow RFC 4180 (quoted commas, doubled
//! quotes, line breaks inside quotes, CRLF or LF line ends); a UTF-8 byte
//! order mark at the start is skipped, blank lines are skipped and the
//! header's names are trimmed of surrounding whitespace. Column names are
//! matched exactly: `To` is a parameter, not the destination.
//!
//! [`CsvReader`] is pushed the body chunk by chunk ([`CsvReader::push`],
//! then [`CsvReader::finish`]) and hands each row to a callback as soon as
//! its last byte has arrived. It holds the header and at most one row,
//! whatever the size of the body, and every limit ([`Limits`]) is checked as
//! the bytes come, so a body that would exceed one is refused without being
//! read to its end.
//!
//! Two kinds of failure:
//!
//! - [`CsvError`] refuses the whole upload (a body that is not a CSV file of
//!   recipients, or one over a limit); its message is fit for a 400 answer.
//! - [`Row::Rejected`] refuses one row (a wrong number of fields, an empty
//!   `to`); the upload goes on.
//!
//! Nothing here checks what the caller can check better: phone numbers,
//! time zones, duplicates and parameter names arrive as the text the file
//! holds, each row with the line where it starts.

use std::collections::HashSet;

use csv_core::{ReadRecordResult, Reader};

/// How many columns a header may have, unless [`Limits`] says otherwise.
pub const DEFAULT_MAX_COLUMNS: usize = 256;

/// How many bytes one row (or the header) may have, line end excluded,
/// unless [`Limits`] says otherwise. It bounds the memory a body with no
/// line end at all can take.
pub const DEFAULT_MAX_ROW_BYTES: usize = 64 * 1024;

/// How many rows, header excluded, one upload may have (CONTRACT §12.2),
/// unless [`Limits`] says otherwise.
pub const DEFAULT_MAX_ROWS: u64 = 100_000;

/// The UTF-8 byte order mark that spreadsheets write at the start of a file.
const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// The rows' buffer starts this small (or at the row limit, if smaller) and
/// doubles as long rows need it, so short rows never cost the whole limit.
const INITIAL_ROW_BUFFER: usize = 4 * 1024;

/// The bounds of one upload. Exceeding any of them refuses the upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Columns in the header.
    pub max_columns: usize,
    /// Bytes in one row, its line end excluded (quotes and commas included).
    pub max_row_bytes: usize,
    /// Rows after the header, rejected ones included.
    pub max_rows: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_columns: DEFAULT_MAX_COLUMNS,
            max_row_bytes: DEFAULT_MAX_ROW_BYTES,
            max_rows: DEFAULT_MAX_ROWS,
        }
    }
}

/// One row after the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    Recipient(Recipient),
    /// A row that cannot be a recipient; the others are still read.
    Rejected {
        /// The line where the row starts.
        line: u64,
        /// Why, in words fit for the answer's list of rejected rows.
        reason: String,
    },
}

/// A row read as a recipient, its values as the file wrote them (not
/// trimmed, not checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The 1-based line where the row starts (the header is line 1, unless
    /// blank lines precede it); a row whose quoted field spans lines is known
    /// by its first. Lines end at LF, CRLF or a lone CR (but a lone CR inside
    /// quotes is only part of its field).
    pub line: u64,
    /// Never empty.
    pub to: String,
    /// `None` without an `id` column or when its field is empty.
    pub id: Option<String>,
    /// `None` without a `timezone` column or when its field is empty.
    pub timezone: Option<String>,
    /// The parameter columns' names and values, in the header's order; an
    /// empty field means the parameter is not set and is left out.
    pub parameters: Vec<(String, String)>,
}

/// What a whole upload held, once [`CsvReader::finish`] has read it all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Rows after the header, rejected ones included.
    pub rows: u64,
    /// Of which [`Row::Rejected`].
    pub rejected: u64,
}

/// Why a whole upload is refused. Each message says what is wrong and, for a
/// row, on which line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("the CSV body is empty: its first line must be a header naming the columns, one of them 'to'")]
    Empty,
    #[error("the CSV header has no 'to' column{}", to_hint(.near))]
    NoToColumn {
        /// A header name that is `to` but for its case, to point at.
        near: Option<String>,
    },
    #[error("the CSV header names the column '{name}' more than once")]
    DuplicateColumn { name: String },
    #[error("column {column} of the CSV header has no name")]
    EmptyColumnName {
        /// 1-based.
        column: usize,
    },
    #[error("the CSV header has more than {max} columns")]
    TooManyColumns { max: usize },
    #[error("line {line} of the CSV body is not UTF-8 text")]
    NotUtf8 { line: u64 },
    #[error("the CSV row starting at line {line} has a quoted field that is never closed")]
    UnclosedQuote { line: u64 },
    #[error(
        "the CSV row starting at line {line} is longer than {max} bytes (is a quote left open?)"
    )]
    RowTooLong { line: u64, max: usize },
    #[error("the CSV body has more than {max} rows (line {line} starts one more); send the rest in another request")]
    TooManyRows { max: u64, line: u64 },
}

fn to_hint(near: &Option<String>) -> String {
    match near {
        Some(name) => format!(" ('{name}' is not 'to': column names are case-sensitive)"),
        None => String::new(),
    }
}

/// Reads a CSV upload pushed to it in chunks of any size.
///
/// ```
/// use herald_core::recipients::{CsvReader, Limits, Row};
///
/// let mut reader = CsvReader::new(Limits::default());
/// let mut rows = Vec::new();
/// reader.push(b"to,name\n447700900123,Ada\n4477009", &mut |row| rows.push(row))?;
/// reader.push(b"00124,\"Lovelace, Ada\"", &mut |row| rows.push(row))?;
/// let summary = reader.finish(&mut |row| rows.push(row))?;
/// assert_eq!(summary.rows, 2);
/// let Row::Recipient(second) = &rows[1] else { panic!() };
/// assert_eq!(second.line, 3);
/// assert_eq!(second.parameters, [("name".to_owned(), "Lovelace, Ada".to_owned())]);
/// # Ok::<(), herald_core::recipients::CsvError>(())
/// ```
#[derive(Debug)]
pub struct CsvReader {
    limits: Limits,
    parser: Reader,
    /// How many bytes of a byte order mark have been seen at the very start
    /// and held back; `None` once it is known whether there is one.
    bom: Option<usize>,
    /// The header's columns, once its line is complete.
    header: Option<Header>,
    /// Whether a row has begun and not yet ended.
    in_row: bool,
    /// Whether the last byte between rows was a CR, so that an LF after it
    /// ends no further line.
    after_cr: bool,
    /// Where the current row starts.
    row_line: u64,
    /// The current row's bytes so far, as they came (quotes included).
    row_bytes: usize,
    /// The current row's fields, unquoted and end to end; grows up to
    /// `max_row_bytes + 1`.
    fields: Vec<u8>,
    fields_len: usize,
    /// Where each of the current row's fields ends in `fields`. As long as
    /// the header (`max_columns` for the header itself): a row with more
    /// fields than that is only counted.
    ends: Vec<usize>,
    ends_len: usize,
    /// Fields of the current row counted past a full `ends`, and where the
    /// last of them ended.
    overflow: Option<(usize, usize)>,
    rows: u64,
    rejected: u64,
    /// The error that refused the upload: every later call answers it again.
    failed: Option<CsvError>,
}

#[derive(Debug)]
struct Header {
    /// Each column's part in a recipient, in the file's order.
    columns: Vec<Column>,
}

#[derive(Debug)]
enum Column {
    To,
    Id,
    Timezone,
    Parameter(String),
}

impl CsvReader {
    pub fn new(limits: Limits) -> Self {
        let mut parser = Reader::new();
        // csv-core skips a byte order mark only when the first chunk it is
        // given holds all three of its bytes; this reader skips it itself,
        // in whatever chunks it comes, so csv-core must not skip a second
        // one. Offering it a byte with no room to write reads nothing but
        // counts as its first read.
        parser.read_record(b"x", &mut [], &mut []);
        CsvReader {
            limits,
            parser,
            bom: Some(0),
            header: None,
            in_row: false,
            after_cr: false,
            row_line: 1,
            row_bytes: 0,
            fields: vec![0; INITIAL_ROW_BUFFER.min(limits.max_row_bytes.saturating_add(1))],
            fields_len: 0,
            ends: vec![0; limits.max_columns],
            ends_len: 0,
            overflow: None,
            rows: 0,
            rejected: 0,
            failed: None,
        }
    }

    /// Feeds the body's next bytes; calls `out` for each row they complete.
    ///
    /// Once this has returned an error, the upload is refused: later calls
    /// return the same error and read nothing.
    pub fn push(&mut self, bytes: &[u8], out: &mut impl FnMut(Row)) -> Result<(), CsvError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.push_after_bom(bytes, out);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    /// The body has ended: calls `out` for its last row if no line end
    /// followed it, and says what the body held.
    pub fn finish(mut self, out: &mut impl FnMut(Row)) -> Result<Summary, CsvError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if let Some(held) = self.bom.take() {
            self.feed(&BOM[..held], out)?;
        }
        if self.in_row {
            // A line end completes the last row, unless a quoted field is
            // still open: then it is read as part of that field.
            let line = self.row_line;
            self.feed(b"\n", out)?;
            if self.in_row {
                return Err(CsvError::UnclosedQuote { line });
            }
        }
        if self.header.is_none() {
            return Err(CsvError::Empty);
        }
        Ok(Summary {
            rows: self.rows,
            rejected: self.rejected,
        })
    }

    /// The parameter columns' names, in the header's order; none until the
    /// header's line is complete. A caller can check them once rather than
    /// on every row.
    pub fn parameter_names(&self) -> impl Iterator<Item = &str> {
        self.header
            .iter()
            .flat_map(|header| header.columns.iter())
            .filter_map(|column| match column {
                Column::Parameter(name) => Some(name.as_str()),
                _ => None,
            })
    }

    fn push_after_bom(
        &mut self,
        mut bytes: &[u8],
        out: &mut impl FnMut(Row),
    ) -> Result<(), CsvError> {
        if let Some(mut seen) = self.bom {
            while seen < BOM.len() && bytes.first() == Some(&BOM[seen]) {
                seen += 1;
                bytes = &bytes[1..];
            }
            if seen < BOM.len() && bytes.is_empty() {
                // Still undecided: the next chunk may go on with the mark.
                self.bom = Some(seen);
                return Ok(());
            }
            self.bom = None;
            if seen < BOM.len() {
                // Not a mark after all: its first bytes are the body's.
                self.feed(&BOM[..seen], out)?;
            }
        }
        self.feed(bytes, out)
    }

    fn feed(&mut self, mut input: &[u8], out: &mut impl FnMut(Row)) -> Result<(), CsvError> {
        while !input.is_empty() {
            if !self.in_row {
                input = &input[self.skip_line_ends(input)..];
                if input.is_empty() {
                    break;
                }
                self.start_row()?;
            }
            let read = self.read(input, out)?;
            input = &input[read..];
        }
        Ok(())
    }

    /// Skips the line ends between rows (a row's own and blank lines),
    /// counting lines: LF, CRLF and a lone CR each end one. Returns how many
    /// bytes it skipped.
    fn skip_line_ends(&mut self, input: &[u8]) -> usize {
        let mut skipped = 0;
        for &byte in input {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' => self.next_line(),
                b'\r' => {
                    self.next_line();
                    self.after_cr = true;
                }
                _ => break,
            }
            skipped += 1;
        }
        skipped
    }

    /// csv-core counts the LFs it reads; the lines that end with a CR are
    /// added to its count here.
    fn next_line(&mut self) {
        self.parser.set_line(self.parser.line() + 1);
    }

    fn start_row(&mut self) -> Result<(), CsvError> {
        let line = self.parser.line();
        if self.header.is_some() && self.rows >= self.limits.max_rows {
            return Err(CsvError::TooManyRows {
                max: self.limits.max_rows,
                line,
            });
        }
        self.in_row = true;
        self.after_cr = false;
        self.row_line = line;
        self.row_bytes = 0;
        self.fields_len = 0;
        self.ends_len = 0;
        self.overflow = None;
        Ok(())
    }

    /// Reads from `input` into the current row; returns how many bytes it
    /// read.
    fn read(&mut self, input: &[u8], out: &mut impl FnMut(Row)) -> Result<usize, CsvError> {
        // No more than one byte past the limit, so that a row of exactly
        // `max_row_bytes` can be followed by its line end and a longer one
        // is refused as soon as it is known to be longer.
        let room = self.limits.max_row_bytes.saturating_add(1) - self.row_bytes;
        let input = &input[..input.len().min(room)];
        let (result, read, written, ended) = self.parser.read_record(
            input,
            &mut self.fields[self.fields_len..],
            &mut self.ends[self.ends_len..],
        );
        self.row_bytes += read;
        self.fields_len += written;
        self.ends_len += ended;
        match result {
            ReadRecordResult::Record => {
                self.in_row = false;
                if read > 0 && input[read - 1] == b'\r' {
                    self.next_line();
                    self.after_cr = true;
                }
                self.end_row(out)?;
            }
            ReadRecordResult::InputEmpty | ReadRecordResult::OutputFull
                if self.row_bytes > self.limits.max_row_bytes =>
            {
                return Err(CsvError::RowTooLong {
                    line: self.row_line,
                    max: self.limits.max_row_bytes,
                });
            }
            ReadRecordResult::OutputFull => {
                // Fields are never longer than the row's bytes, so the buffer
                // never needs more than one byte past the limit.
                let longer =
                    (self.fields.len() * 2).min(self.limits.max_row_bytes.saturating_add(1));
                if longer <= self.fields.len() {
                    return Err(CsvError::RowTooLong {
                        line: self.row_line,
                        max: self.limits.max_row_bytes,
                    });
                }
                self.fields.resize(longer, 0);
            }
            ReadRecordResult::OutputEndsFull => {
                if self.header.is_none() {
                    return Err(CsvError::TooManyColumns {
                        max: self.limits.max_columns,
                    });
                }
                // More fields than the header: the row will be rejected, so
                // its fields are only checked and counted, and `ends` reused.
                let (counted, start) = self.overflow.unwrap_or((0, 0));
                let ends = &self.ends[..self.ends_len];
                let start = check_utf8(&self.fields, start, ends, self.row_line)?;
                self.overflow = Some((counted + self.ends_len, start));
                self.ends_len = 0;
            }
            ReadRecordResult::InputEmpty | ReadRecordResult::End => {}
        }
        Ok(read)
    }

    fn end_row(&mut self, out: &mut impl FnMut(Row)) -> Result<(), CsvError> {
        let fields = &self.fields[..self.fields_len];
        let ends = &self.ends[..self.ends_len];
        let line = self.row_line;
        let Some(header) = &self.header else {
            let header = Header::parse(fields, ends, line)?;
            self.ends.truncate(header.columns.len());
            self.header = Some(header);
            return Ok(());
        };
        self.rows += 1;
        let row = match self.overflow {
            None if ends.len() == header.columns.len() => header.recipient(fields, ends, line)?,
            overflow => {
                let (counted, start) = overflow.unwrap_or((0, 0));
                check_utf8(fields, start, ends, line)?;
                Row::Rejected {
                    line,
                    reason: format!(
                        "{} fields, but the header has {} columns",
                        counted + ends.len(),
                        header.columns.len()
                    ),
                }
            }
        };
        if let Row::Rejected { .. } = row {
            self.rejected += 1;
        }
        out(row);
        Ok(())
    }
}

impl Header {
    fn parse(fields: &[u8], ends: &[usize], line: u64) -> Result<Header, CsvError> {
        let mut names = HashSet::with_capacity(ends.len());
        let mut columns = Vec::with_capacity(ends.len());
        let mut start = 0;
        for (index, &end) in ends.iter().enumerate() {
            let name = text(fields, start, end, line)?.trim();
            start = end;
            if name.is_empty() {
                return Err(CsvError::EmptyColumnName { column: index + 1 });
            }
            if !names.insert(name) {
                return Err(CsvError::DuplicateColumn {
                    name: name.to_owned(),
                });
            }
            columns.push(match name {
                "to" => Column::To,
                "id" => Column::Id,
                "timezone" => Column::Timezone,
                _ => Column::Parameter(name.to_owned()),
            });
        }
        if !columns.iter().any(|column| matches!(column, Column::To)) {
            let near = columns.iter().find_map(|column| match column {
                Column::Parameter(name) if name.eq_ignore_ascii_case("to") => Some(name.clone()),
                _ => None,
            });
            return Err(CsvError::NoToColumn { near });
        }
        Ok(Header { columns })
    }

    /// A row with as many fields as the header.
    fn recipient(&self, fields: &[u8], ends: &[usize], line: u64) -> Result<Row, CsvError> {
        let mut recipient = Recipient {
            line,
            to: String::new(),
            id: None,
            timezone: None,
            parameters: Vec::new(),
        };
        let mut start = 0;
        for (column, &end) in self.columns.iter().zip(ends) {
            let value = text(fields, start, end, line)?;
            start = end;
            let set = (!value.is_empty()).then(|| value.to_owned());
            match column {
                Column::To => recipient.to = value.to_owned(),
                Column::Id => recipient.id = set,
                Column::Timezone => recipient.timezone = set,
                Column::Parameter(name) => {
                    if let Some(value) = set {
                        recipient.parameters.push((name.clone(), value));
                    }
                }
            }
        }
        if recipient.to.is_empty() {
            return Ok(Row::Rejected {
                line,
                reason: "the to field is empty".to_owned(),
            });
        }
        Ok(Row::Recipient(recipient))
    }
}

/// The field `fields[start..end]` of the row starting at `line`, as text.
///
/// Each field is checked on its own: two halves of a character split by a
/// comma are not a character.
fn text(fields: &[u8], start: usize, end: usize, line: u64) -> Result<&str, CsvError> {
    std::str::from_utf8(&fields[start..end]).map_err(|error| {
        // Fields keep the line breaks inside their quotes, so the line of the
        // bad byte is the row's plus the LFs before it.
        let before = &fields[..start + error.valid_up_to()];
        CsvError::NotUtf8 {
            line: line + before.iter().filter(|&&byte| byte == b'\n').count() as u64,
        }
    })
}

/// Checks that the fields ending at `ends`, the first starting at `start`,
/// are text; returns where the last ends.
fn check_utf8(
    fields: &[u8],
    mut start: usize,
    ends: &[usize],
    line: u64,
) -> Result<usize, CsvError> {
    for &end in ends {
        text(fields, start, end, line)?;
        start = end;
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What reading a body gave: the rows handed out, then how it ended.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        rows: Vec<Row>,
        end: Result<Summary, CsvError>,
    }

    /// Pushes `body` in chunks of the sizes `sizes` yields.
    fn read_in(body: &[u8], mut sizes: impl Iterator<Item = usize>, limits: Limits) -> Outcome {
        let mut reader = CsvReader::new(limits);
        let mut rows = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let size = sizes.next().unwrap().clamp(1, rest.len());
            let (chunk, after) = rest.split_at(size);
            rest = after;
            if let Err(error) = reader.push(chunk, &mut |row| rows.push(row)) {
                return Outcome {
                    rows,
                    end: Err(error),
                };
            }
        }
        let end = reader.finish(&mut |row| rows.push(row));
        Outcome { rows, end }
    }

    /// Chunk sizes from 1 to `max`, from a small fixed-seed generator.
    fn random_sizes(seed: u64, max: u64) -> impl Iterator<Item = usize> {
        let mut state = seed;
        std::iter::repeat_with(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % max + 1) as usize
        })
    }

    /// Reads `body` whole, a byte at a time and in chunks of several random
    /// sizes; checks that every way gives the same outcome and returns it.
    fn read_with(body: &[u8], limits: Limits) -> Outcome {
        let whole = read_in(body, std::iter::repeat(body.len()), limits);
        assert_eq!(
            read_in(body, std::iter::repeat(1), limits),
            whole,
            "a byte at a time"
        );
        for (seed, max) in [(1, 2), (7, 3), (42, 7), (1234, 64), (99, 5000)] {
            assert_eq!(
                read_in(body, random_sizes(seed, max), limits),
                whole,
                "chunks of up to {max} bytes (seed {seed})"
            );
        }
        whole
    }

    fn read(body: &str) -> Outcome {
        read_with(body.as_bytes(), Limits::default())
    }

    fn recipient(line: u64, to: &str, parameters: &[(&str, &str)]) -> Row {
        Row::Recipient(Recipient {
            line,
            to: to.to_owned(),
            id: None,
            timezone: None,
            parameters: parameters
                .iter()
                .map(|&(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        })
    }

    fn rejected(line: u64, reason: &str) -> Row {
        Row::Rejected {
            line,
            reason: reason.to_owned(),
        }
    }

    fn summary(rows: u64, rejected: u64) -> Result<Summary, CsvError> {
        Ok(Summary { rows, rejected })
    }

    /// Pushes `body` in chunks of `chunk` bytes until it is refused; returns
    /// how many bytes had been pushed by then, and why.
    fn pushed_until_refused(body: &[u8], chunk: usize, limits: Limits) -> (usize, CsvError) {
        let mut reader = CsvReader::new(limits);
        let mut pushed = 0;
        for bytes in body.chunks(chunk) {
            pushed += bytes.len();
            if let Err(error) = reader.push(bytes, &mut |_| {}) {
                return (pushed, error);
            }
        }
        panic!("not refused after all {pushed} bytes");
    }

    #[test]
    fn reads_a_plain_file() {
        let outcome = read(
            "to,id,timezone,first_name,plan\n\
             447700900123,c-1,Europe/London,Ada,gold\n\
             447700900124,,,Bob,\n\
             +447700900125,c-3,,,silver\n",
        );
        assert_eq!(
            outcome.rows,
            [
                Row::Recipient(Recipient {
                    line: 2,
                    to: "447700900123".to_owned(),
                    id: Some("c-1".to_owned()),
                    timezone: Some("Europe/London".to_owned()),
                    parameters: vec![
                        ("first_name".to_owned(), "Ada".to_owned()),
                        ("plan".to_owned(), "gold".to_owned()),
                    ],
                }),
                recipient(3, "447700900124", &[("first_name", "Bob")]),
                Row::Recipient(Recipient {
                    line: 4,
                    to: "+447700900125".to_owned(),
                    id: Some("c-3".to_owned()),
                    timezone: None,
                    parameters: vec![("plan".to_owned(), "silver".to_owned())],
                }),
            ]
        );
        assert_eq!(outcome.end, summary(3, 0));
    }

    #[test]
    fn values_are_kept_as_written() {
        let outcome = read("name,to\n  Ada  , 447700900123 \n");
        assert_eq!(
            outcome.rows,
            [recipient(2, " 447700900123 ", &[("name", "  Ada  ")])]
        );
    }

    #[test]
    fn names_the_parameter_columns_once_the_header_is_read() {
        let mut reader = CsvReader::new(Limits::default());
        reader
            .push(b"first_name,to,id,timezone,pl", &mut |_| {})
            .unwrap();
        assert_eq!(reader.parameter_names().count(), 0);
        reader.push(b"an\n", &mut |_| {}).unwrap();
        assert_eq!(
            reader.parameter_names().collect::<Vec<_>>(),
            ["first_name", "plan"]
        );
        assert_eq!(reader.finish(&mut |_| {}), summary(0, 0));
    }

    #[test]
    fn skips_a_byte_order_mark() {
        let outcome = read("\u{feff}to,name\n447700900123,Ada\n");
        assert_eq!(
            outcome.rows,
            [recipient(2, "447700900123", &[("name", "Ada")])]
        );
        // Before a quoted name too.
        let outcome = read("\u{feff}\"to\",name\n447700900123,Ada\n");
        assert_eq!(
            outcome.rows,
            [recipient(2, "447700900123", &[("name", "Ada")])]
        );
        // Only one: a second is part of the first name.
        let outcome = read("\u{feff}\u{feff}to,name\n447700900123,Ada\n");
        assert_eq!(outcome.end, Err(CsvError::NoToColumn { near: None }));
        // The start of a mark that goes on otherwise is the body's.
        let outcome = read_with(b"\xEF\xBBto\n1\n", Limits::default());
        assert_eq!(outcome.end, Err(CsvError::NotUtf8 { line: 1 }));
    }

    #[test]
    fn reads_crlf_line_ends() {
        let outcome = read("to,name\r\n447700900123,Ada\r\n447700900124,Bob\r\n");
        assert_eq!(
            outcome.rows,
            [
                recipient(2, "447700900123", &[("name", "Ada")]),
                recipient(3, "447700900124", &[("name", "Bob")]),
            ]
        );
        assert_eq!(outcome.end, summary(2, 0));
        // A lone CR ends a line too, and mixed ends are counted one each.
        let outcome = read("to\r1\n2\r\n3\r\r4\n");
        assert_eq!(
            outcome.rows,
            [
                recipient(2, "1", &[]),
                recipient(3, "2", &[]),
                recipient(4, "3", &[]),
                recipient(6, "4", &[]),
            ]
        );
    }

    #[test]
    fn reads_quoted_fields() {
        let outcome = read(
            "to,\"greeting, formal\",note\n\
             1,\"Dear Ada, hello\",\"she said \"\"hi\"\"\"\n\
             2,\"two\nlines\",\"and\r\nthree\nlines\"\n\
             3,plain,\"\"\n\
             \"4\",\"\"\"\",x\n",
        );
        assert_eq!(
            outcome.rows,
            [
                recipient(
                    2,
                    "1",
                    &[
                        ("greeting, formal", "Dear Ada, hello"),
                        ("note", "she said \"hi\""),
                    ]
                ),
                recipient(
                    3,
                    "2",
                    &[
                        ("greeting, formal", "two\nlines"),
                        ("note", "and\r\nthree\nlines"),
                    ]
                ),
                // After a row of four lines.
                recipient(7, "3", &[("greeting, formal", "plain")]),
                recipient(8, "4", &[("greeting, formal", "\""), ("note", "x")]),
            ]
        );
    }

    #[test]
    fn skips_blank_lines() {
        let outcome = read("\n\r\nto,name\n\n447700900123,Ada\n\r\n\r\n447700900124,Bob\n\n\n");
        assert_eq!(
            outcome.rows,
            [
                recipient(5, "447700900123", &[("name", "Ada")]),
                recipient(8, "447700900124", &[("name", "Bob")]),
            ]
        );
        assert_eq!(outcome.end, summary(2, 0));
    }

    #[test]
    fn reads_a_last_row_without_a_line_end() {
        let outcome = read("to,name\n1,Ada\n2,\"Bob\"");
        assert_eq!(
            outcome.rows,
            [
                recipient(2, "1", &[("name", "Ada")]),
                recipient(3, "2", &[("name", "Bob")]),
            ]
        );
        assert_eq!(outcome.end, summary(2, 0));
        assert_eq!(read("to").end, summary(0, 0));
    }

    #[test]
    fn refuses_an_empty_body() {
        for body in ["", "\n", "\r\n\n\r", "\u{feff}", "\u{feff}\n"] {
            let outcome = read(body);
            assert_eq!(outcome.end, Err(CsvError::Empty), "{body:?}");
        }
        assert!(CsvError::Empty.to_string().contains("header"));
    }

    #[test]
    fn refuses_a_header_without_to() {
        let outcome = read("phone,name\n447700900123,Ada\n");
        assert_eq!(outcome.rows, []);
        assert_eq!(outcome.end, Err(CsvError::NoToColumn { near: None }));
        assert_eq!(
            outcome.end.unwrap_err().to_string(),
            "the CSV header has no 'to' column"
        );
        let outcome = read("name, To\nAda,447700900123\n");
        let error = outcome.end.unwrap_err();
        assert_eq!(
            error,
            CsvError::NoToColumn {
                near: Some("To".to_owned())
            }
        );
        assert_eq!(
            error.to_string(),
            "the CSV header has no 'to' column ('To' is not 'to': column names are case-sensitive)"
        );
    }

    #[test]
    fn refuses_a_name_repeated_or_missing() {
        let outcome = read("to, name,name \n1,a,b\n");
        assert_eq!(
            outcome.end,
            Err(CsvError::DuplicateColumn {
                name: "name".to_owned()
            })
        );
        assert_eq!(
            outcome.end.unwrap_err().to_string(),
            "the CSV header names the column 'name' more than once"
        );
        assert_eq!(
            read("to,to\n1,2\n").end,
            Err(CsvError::DuplicateColumn {
                name: "to".to_owned()
            })
        );
        assert_eq!(
            read("to,,name\n").end,
            Err(CsvError::EmptyColumnName { column: 2 })
        );
        assert_eq!(
            read("to,name,\n").end,
            Err(CsvError::EmptyColumnName { column: 3 })
        );
        assert_eq!(
            read("to,\"  \"\n").end,
            Err(CsvError::EmptyColumnName { column: 2 })
        );
    }

    #[test]
    fn trims_the_header_names() {
        let outcome = read(" to ,\" first name \"\t, id\n1,Ada,c-1\n");
        assert_eq!(
            outcome.rows,
            [Row::Recipient(Recipient {
                line: 2,
                to: "1".to_owned(),
                id: Some("c-1".to_owned()),
                timezone: None,
                parameters: vec![("first name".to_owned(), "Ada".to_owned())],
            })]
        );
    }

    #[test]
    fn rejects_ragged_rows_and_keeps_the_rest() {
        let wide = format!("6{}\n", ",x".repeat(299));
        let body = format!(
            "to,name,plan\n1,Ada,gold\n2,Bob\n3,Cy,silver,extra\n\"4\nstill 4\"\n{wide}7,,\n"
        );
        let outcome = read(&body);
        assert_eq!(
            outcome.rows,
            [
                recipient(2, "1", &[("name", "Ada"), ("plan", "gold")]),
                rejected(3, "2 fields, but the header has 3 columns"),
                rejected(4, "4 fields, but the header has 3 columns"),
                rejected(5, "1 fields, but the header has 3 columns"),
                rejected(7, "300 fields, but the header has 3 columns"),
                recipient(8, "7", &[]),
            ]
        );
        assert_eq!(outcome.end, summary(6, 4));
    }

    #[test]
    fn rejects_an_empty_to() {
        let outcome = read("name,to\nAda,\nBob,\"\"\nCy,3\n");
        assert_eq!(
            outcome.rows,
            [
                rejected(2, "the to field is empty"),
                rejected(3, "the to field is empty"),
                recipient(4, "3", &[("name", "Cy")]),
            ]
        );
        assert_eq!(outcome.end, summary(3, 2));
        // A line of one empty quoted field is a row, not a blank line.
        let outcome = read("to\n\"\"\n");
        assert_eq!(outcome.rows, [rejected(2, "the to field is empty")]);
    }

    #[test]
    fn refuses_bytes_that_are_not_utf8() {
        let limits = Limits::default();
        // In the header.
        let outcome = read_with(b"to,na\xFFme\n1,Ada\n", limits);
        assert_eq!(outcome.end, Err(CsvError::NotUtf8 { line: 1 }));
        // In a row: the rows before it are read, none after.
        let outcome = read_with(b"to,name\n1,Ada\n2,Bo\xE9\n3,Cy\n", limits);
        assert_eq!(outcome.rows, [recipient(2, "1", &[("name", "Ada")])]);
        assert_eq!(outcome.end, Err(CsvError::NotUtf8 { line: 3 }));
        assert_eq!(
            outcome.end.unwrap_err().to_string(),
            "line 3 of the CSV body is not UTF-8 text"
        );
        // The line of the byte, in a field of several lines.
        let outcome = read_with(b"to,note\n1,\"one\ntwo\r\nthr\xC3\"\n", limits);
        assert_eq!(outcome.end, Err(CsvError::NotUtf8 { line: 4 }));
        // A character's halves either side of a comma are not a character.
        let outcome = read_with(b"to,a,b\n1,\xC3,\xA9\n", limits);
        assert_eq!(outcome.end, Err(CsvError::NotUtf8 { line: 2 }));
        // In a row that would be rejected anyway, even past the header's
        // width.
        let outcome = read_with(b"to,a\n1,x,y,\xFF\n", limits);
        assert_eq!(outcome.end, Err(CsvError::NotUtf8 { line: 2 }));
        let outcome = read_with(b"to,a\n\xFF\n", limits);
        assert_eq!(outcome.end, Err(CsvError::NotUtf8 { line: 2 }));
        // Text in other scripts is text.
        let outcome = read("to,name\n1,Zoë 😀\n");
        assert_eq!(outcome.rows, [recipient(2, "1", &[("name", "Zoë 😀")])]);
    }

    #[test]
    fn refuses_a_header_of_10000_columns() {
        let header: Vec<String> = std::iter::once("to".to_owned())
            .chain((1..10_000).map(|column| format!("c{column}")))
            .collect();
        let body = format!("{}\n1\n", header.join(","));
        let outcome = read(&body);
        assert_eq!(outcome.end, Err(CsvError::TooManyColumns { max: 256 }));
        assert_eq!(
            outcome.end.unwrap_err().to_string(),
            "the CSV header has more than 256 columns"
        );
        // As soon as the 257th column begins.
        let (pushed, _) = pushed_until_refused(body.as_bytes(), 64, Limits::default());
        let through_257 = header[..256].join(",").len() + 1;
        assert!(pushed <= through_257 + 64, "{pushed} of {}", body.len());
        // 256 columns are allowed.
        let body = format!("{}\n1\n", header[..256].join(","));
        assert_eq!(read(&body).end, summary(1, 1));
    }

    #[test]
    fn refuses_a_body_with_no_line_end_once_past_the_row_limit() {
        let limits = Limits::default();
        let mebibyte = vec![b'a'; 1 << 20];
        let outcome = read_with(&mebibyte, limits);
        let refusal = CsvError::RowTooLong {
            line: 1,
            max: 65_536,
        };
        assert_eq!(outcome.end, Err(refusal.clone()));
        assert_eq!(
            refusal.to_string(),
            "the CSV row starting at line 1 is longer than 65536 bytes (is a quote left open?)"
        );
        for chunk in [1000, 4096, 1 << 20] {
            let (pushed, error) = pushed_until_refused(&mebibyte, chunk, limits);
            assert_eq!(error, refusal);
            // The chunk that holds the byte past the limit is the last read.
            assert!(pushed < 65_537 + chunk, "refused after {pushed} bytes");
        }
        // Fields with no content at all still count their commas.
        let mut body = b"to\n".to_vec();
        body.extend(std::iter::repeat_n(b',', 1 << 20));
        let (pushed, error) = pushed_until_refused(&body, 1000, limits);
        assert_eq!(
            error,
            CsvError::RowTooLong {
                line: 2,
                max: 65_536
            }
        );
        assert!(pushed < 70_000, "refused after {pushed} bytes");
        // A row after the header, and a quoted field left open.
        let mut body = b"to,note\n1,\"".to_vec();
        body.extend_from_slice(&mebibyte);
        let (pushed, error) = pushed_until_refused(&body, 1000, limits);
        assert_eq!(
            error,
            CsvError::RowTooLong {
                line: 2,
                max: 65_536
            }
        );
        assert!(pushed < 70_000, "refused after {pushed} bytes");
    }

    #[test]
    fn counts_a_row_as_written() {
        let limits = Limits {
            max_row_bytes: 8,
            ..Limits::default()
        };
        // Eight bytes, quotes and commas included, with either line end.
        let outcome = read_with(b"to,n\n1,\"\"\"\"\"\"\r\n1234567,", limits);
        assert_eq!(
            outcome.rows,
            [
                recipient(2, "1", &[("n", "\"\"")]),
                recipient(3, "1234567", &[])
            ]
        );
        let outcome = read_with(b"to,n\n123456,7\n", limits);
        assert_eq!(outcome.end, summary(1, 0));
        // Nine.
        let outcome = read_with(b"to,n\n12,\"\"\"\"\"\"\n", limits);
        assert_eq!(outcome.end, Err(CsvError::RowTooLong { line: 2, max: 8 }));
        let outcome = read_with(b"to,n\n123456789", limits);
        assert_eq!(outcome.end, Err(CsvError::RowTooLong { line: 2, max: 8 }));
        let outcome = read_with(b"to,name,x\n", limits);
        assert_eq!(outcome.end, Err(CsvError::RowTooLong { line: 1, max: 8 }));
    }

    #[test]
    fn refuses_more_than_max_rows() {
        let limits = Limits {
            max_rows: 3,
            ..Limits::default()
        };
        let outcome = read_with(b"to\n1\n2\n\"\"\n\n\r\n", limits);
        assert_eq!(outcome.end, summary(3, 1));
        let outcome = read_with(b"to\n1\n2\n3\n\n4\n5\n", limits);
        assert_eq!(
            outcome.rows,
            [
                recipient(2, "1", &[]),
                recipient(3, "2", &[]),
                recipient(4, "3", &[])
            ]
        );
        assert_eq!(outcome.end, Err(CsvError::TooManyRows { max: 3, line: 6 }));
        assert_eq!(
            outcome.end.unwrap_err().to_string(),
            "the CSV body has more than 3 rows (line 6 starts one more); send the rest in another request"
        );
        // The last one without a line end.
        let outcome = read_with(b"to\n1\n2\n3\n4", limits);
        assert_eq!(outcome.end, Err(CsvError::TooManyRows { max: 3, line: 5 }));
        // The default is CONTRACT §12.2's.
        let body = format!("to\n{}", "1\n".repeat(100_000));
        assert_eq!(
            read_in(body.as_bytes(), random_sizes(5, 4096), Limits::default()).end,
            summary(100_000, 0)
        );
        let body = format!("{body}1\n");
        assert_eq!(
            read_in(body.as_bytes(), random_sizes(5, 4096), Limits::default()).end,
            Err(CsvError::TooManyRows {
                max: 100_000,
                line: 100_002
            })
        );
    }

    #[test]
    fn refuses_a_quoted_field_left_open() {
        let outcome = read("to,note\n1,fine\n2,\"open\n3,x\n");
        assert_eq!(outcome.rows, [recipient(2, "1", &[("note", "fine")])]);
        assert_eq!(outcome.end, Err(CsvError::UnclosedQuote { line: 3 }));
        assert_eq!(
            outcome.end.unwrap_err().to_string(),
            "the CSV row starting at line 3 has a quoted field that is never closed"
        );
        // Open after a doubled quote, and open in the header.
        assert_eq!(
            read("to\n\"1\"\"").end,
            Err(CsvError::UnclosedQuote { line: 2 })
        );
        assert_eq!(
            read("to,\"name\n").end,
            Err(CsvError::UnclosedQuote { line: 1 })
        );
        // Closed just before the end is not open.
        assert_eq!(read("to\n\"1\"").end, summary(1, 0));
    }

    #[test]
    fn a_refusal_is_final() {
        let mut reader = CsvReader::new(Limits::default());
        let error = reader.push(b"name\n", &mut |_| {}).unwrap_err();
        assert_eq!(error, CsvError::NoToColumn { near: None });
        let mut rows = 0;
        assert_eq!(
            reader.push(b"to\n1\n", &mut |_| rows += 1),
            Err(error.clone())
        );
        assert_eq!(reader.finish(&mut |_| rows += 1), Err(error));
        assert_eq!(rows, 0);
    }

    /// Writes one record the way a spreadsheet would: a field is quoted when
    /// it holds a comma, a quote or a line break.
    fn write_record(body: &mut String, fields: &[String], line_end: &str) {
        for (index, field) in fields.iter().enumerate() {
            if index > 0 {
                body.push(',');
            }
            if field.contains([',', '"', '\r', '\n']) {
                body.push('"');
                body.push_str(&field.replace('"', "\"\""));
                body.push('"');
            } else {
                body.push_str(field);
            }
        }
        body.push_str(line_end);
    }

    /// A header: `to`, maybe `id` and `timezone`, and parameters whose names
    /// hold commas, quotes and line breaks, in any order.
    fn header() -> impl Strategy<Value = Vec<String>> {
        (
            prop::collection::vec("[a-z ,\"\r\né]{0,4}", 0..4),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_flat_map(|(suffixes, id, timezone)| {
                let mut names = vec!["to".to_owned()];
                if id {
                    names.push("id".to_owned());
                }
                if timezone {
                    names.push("timezone".to_owned());
                }
                names.extend(
                    suffixes
                        .iter()
                        .enumerate()
                        .map(|(index, suffix)| format!("p{index}{suffix}.")),
                );
                Just(names).prop_shuffle()
            })
    }

    /// An upload: its header, its rows (each maybe after a blank line), its
    /// line end, whether it starts with a byte order mark and ends with a
    /// line end, and the chunk sizes it arrives in.
    #[allow(clippy::type_complexity)]
    fn upload() -> impl Strategy<
        Value = (
            Vec<String>,
            Vec<(bool, Vec<String>)>,
            &'static str,
            bool,
            bool,
            Vec<usize>,
        ),
    > {
        header().prop_flat_map(|header| {
            let width = header.len();
            (
                Just(header),
                prop::collection::vec(
                    (
                        any::<bool>(),
                        prop::collection::vec("[a-z0-9 ,\"\r\né😀]{0,6}", width),
                    ),
                    0..12,
                ),
                prop_oneof![Just("\n"), Just("\r\n")],
                any::<bool>(),
                any::<bool>(),
                prop::collection::vec(1usize..48, 1..6),
            )
        })
    }

    proptest! {
        #[test]
        fn reads_back_what_a_writer_wrote(
            (header, mut rows, line_end, bom, last_line_end, chunks) in upload()
        ) {
            let to = header.iter().position(|name| name == "to").unwrap();
            let mut body = String::new();
            if bom {
                body.push('\u{feff}');
            }
            write_record(&mut body, &header, line_end);
            let mut expected = Vec::new();
            let count = rows.len();
            for (index, (blank_before, fields)) in rows.iter_mut().enumerate() {
                if fields[to].is_empty() {
                    fields[to] = "0".to_owned();
                }
                if *blank_before {
                    body.push_str(line_end);
                }
                let mut recipient = Recipient {
                    line: 1 + body.matches('\n').count() as u64,
                    to: String::new(),
                    id: None,
                    timezone: None,
                    parameters: Vec::new(),
                };
                for (name, value) in header.iter().zip(fields.iter()) {
                    let set = (!value.is_empty()).then(|| value.clone());
                    match name.as_str() {
                        "to" => recipient.to = value.clone(),
                        "id" => recipient.id = set,
                        "timezone" => recipient.timezone = set,
                        _ => recipient.parameters.extend(set.map(|value| (name.clone(), value))),
                    }
                }
                expected.push(Row::Recipient(recipient));
                let last = index + 1 == count;
                write_record(&mut body, fields, if last && !last_line_end { "" } else { line_end });
            }
            let outcome = read_in(body.as_bytes(), chunks.iter().copied().cycle(), Limits::default());
            prop_assert_eq!(outcome.rows, expected);
            prop_assert_eq!(outcome.end, summary(count as u64, 0));
        }
    }
}
