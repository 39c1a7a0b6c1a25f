//! The config file, parsed so that `[[accounts]]` never becomes one big value tree.
//!
//! Through figment, 10 000 accounts cost ~8 MB of value tree and as much again for the copy
//! `Figment::extract` merges from, on top of `toml_edit`'s document of the whole file
//! (~18 MB: it keeps every key's position and formatting) — issue 24, the start-up peak.
//! Here each run of `[[accounts]]` tables is parsed on its own, at most [`CHUNK`] tables at
//! a time, straight into the typed `Vec`; the rest of the file is parsed with `toml` into
//! figment's values, as `Toml::file_exact` would, and [`Rest`] hands those to figment under
//! the same name and source, so the layering with the environment and every message naming
//! the file stay as they were. Anything this reading does not accept (a file that does not
//! parse, a bad account, an `accounts` key written another way) is left to figment whole.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::Account;

/// `[[accounts]]` tables parsed at once: `toml_edit`'s document costs ~1.8 KB per table,
/// so a chunk's document stays under 1 MB.
const CHUNK: usize = 64;

/// The top-level key deserialised outside figment.
pub(super) const ACCOUNTS: &str = "accounts";

/// The file's `[[accounts]]` (typed) and the rest of its keys (figment's values).
pub(super) struct Split {
    /// `[[accounts]]`, when the file has the key.
    pub accounts: Option<Vec<Account>>,
    /// Every other top-level key.
    pub rest: Dict,
}

impl Split {
    /// Reads and splits the file; `None` when it cannot be read, does not parse, or
    /// `[[accounts]]` does not deserialise. The caller then loads the whole file through
    /// figment as before, so a bad file is reported exactly as it always was.
    pub fn read(path: &Path) -> Option<Split> {
        let text = std::fs::read_to_string(path).ok()?;
        Split::parse(&text)
    }

    /// [`Split::read`] of a file's text.
    fn parse(text: &str) -> Option<Split> {
        // Not understood by the scan (e.g. an unterminated string): the whole document at
        // once, the same result at the old peak (or no result, and figment reports it).
        let Some(blocks) = account_blocks(text) else {
            return toml::from_str(text).ok();
        };
        if blocks.is_empty() {
            return toml::from_str(text).ok();
        }
        let mut rest =
            String::with_capacity(text.len() - blocks.iter().map(|b| b.len()).sum::<usize>());
        let mut at = 0;
        for b in &blocks {
            rest.push_str(&text[at..b.start]);
            at = b.end;
        }
        rest.push_str(&text[at..]);
        let mut split: Split = toml::from_str(&rest).ok()?;
        drop(rest);
        if split.accounts.is_some() {
            // `accounts` also written as a key (`accounts = [...]`, or a header the scan
            // missed): TOML refuses that; let figment say so.
            return None;
        }
        let mut accounts = Vec::with_capacity(blocks.len());
        for chunk in chunks(&blocks, CHUNK) {
            let parsed: Chunk = toml::from_str(&text[chunk]).ok()?;
            accounts.extend(parsed.accounts);
        }
        split.accounts = Some(accounts);
        Some(split)
    }
}

/// A run of `[[accounts]]` tables, parsed alone.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Chunk {
    accounts: Vec<Account>,
}

/// Groups adjacent blocks into ranges of at most `max` blocks each.
fn chunks(blocks: &[Range<usize>], max: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut n = 0;
    for b in blocks {
        match out.last_mut() {
            Some(last) if last.end == b.start && n < max => {
                last.end = b.end;
                n += 1;
            }
            _ => {
                out.push(b.clone());
                n = 1;
            }
        }
    }
    out
}

/// The byte ranges of the document's `[[accounts]]` tables: each from its header line to
/// the next table header (or the end). `None` when the document has a table header that
/// names `accounts` in any other way (`[accounts.x]`, `[["accounts"]]`, …) or when the
/// scan meets what it does not follow (an unterminated string or bracket): the caller then
/// parses the whole document at once.
///
/// A table header is a line whose first non-blank character is `[`, outside strings,
/// comments and bracketed values: a value never starts a line in TOML (it follows its
/// `key =` on the same line), so at bracket depth 0 such a `[` opens a header.
fn account_blocks(text: &str) -> Option<Vec<Range<usize>>> {
    let b = text.as_bytes();
    let mut blocks = Vec::new();
    let mut open: Option<usize> = None; // start of the `[[accounts]]` block being read
    let mut depth = 0usize; // `[` and `{` open inside a value
    let mut line_start = 0usize;
    let mut blank_so_far = true; // only blanks since `line_start`
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                i += 1;
                line_start = i;
                blank_so_far = true;
                continue;
            }
            b' ' | b'\t' | b'\r' if blank_so_far => {
                i += 1;
                continue;
            }
            b'[' if blank_so_far && depth == 0 => {
                let (end, accounts) = header(b, i)?;
                if let Some(start) = open.take() {
                    blocks.push(start..line_start);
                }
                if accounts {
                    open = Some(line_start);
                }
                i = end;
            }
            b'#' => i = line_end(b, i),
            b'"' | b'\'' => i = string(b, i)?,
            b'[' | b'{' => {
                depth += 1;
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                i += 1;
            }
            _ => i += 1,
        }
        blank_so_far = false;
    }
    if depth != 0 {
        return None;
    }
    if let Some(start) = open {
        blocks.push(start..b.len());
    }
    Some(blocks)
}

/// The header opening at `at` (a `[`): where the scan goes on (its closing bracket), and
/// whether it is exactly `[[accounts]]` (blanks allowed inside the brackets). `None` for
/// any other header that mentions `accounts`, or one that does not close on its line.
fn header(b: &[u8], at: usize) -> Option<(usize, bool)> {
    let array = b.get(at + 1) == Some(&b'[');
    let mut i = at + if array { 2 } else { 1 };
    let keys = i;
    loop {
        match *b.get(i)? {
            b'"' | b'\'' => i = string(b, i)?,
            b'\n' => return None,
            b']' => break,
            _ => i += 1,
        }
    }
    let name = &b[keys..i];
    i += 1;
    if array {
        if b.get(i) != Some(&b']') {
            return None;
        }
        i += 1;
    }
    let mentions = name
        .windows(ACCOUNTS.len())
        .any(|w| w == ACCOUNTS.as_bytes());
    if !mentions {
        return Some((i, false));
    }
    (array && name.trim_ascii() == ACCOUNTS.as_bytes()).then_some((i, true))
}

/// The end of the line `at` is on (its `\n`, or the end).
fn line_end(b: &[u8], at: usize) -> usize {
    b[at..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |n| at + n)
}

/// The string opening at `at` (`"`, `'`, `"""` or `'''`): the index past its end. `None`
/// when it does not end (or a one-line string meets the end of its line).
fn string(b: &[u8], at: usize) -> Option<usize> {
    let q = b[at];
    let basic = q == b'"';
    let multi = b.get(at + 1) == Some(&q) && b.get(at + 2) == Some(&q);
    if !multi && b.get(at + 1) == Some(&q) {
        return Some(at + 2); // the empty string
    }
    let mut i = at + if multi { 3 } else { 1 };
    loop {
        let c = *b.get(i)?;
        if basic && c == b'\\' {
            i += 2;
            continue;
        }
        if c == b'\n' && !multi {
            return None;
        }
        if c == q {
            if !multi {
                return Some(i + 1);
            }
            if b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q) {
                // Up to two more quotes right before the closing three are content.
                let mut end = i + 3;
                for _ in 0..2 {
                    if b.get(end) == Some(&q) {
                        end += 1;
                    }
                }
                return Some(end);
            }
        }
        i += 1;
    }
}

impl<'de> Deserialize<'de> for Split {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Split, D::Error> {
        d.deserialize_map(SplitVisitor)
    }
}

struct SplitVisitor;

impl<'de> Visitor<'de> for SplitVisitor {
    type Value = Split;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Split, A::Error> {
        let mut split = Split {
            accounts: None,
            rest: Dict::new(),
        };
        // As figment's `Dict` (a `BTreeMap`) reads a TOML table: key, then value.
        while let Some(key) = map.next_key::<String>()? {
            if key == ACCOUNTS {
                split.accounts = Some(map.next_value()?);
            } else {
                let value: Value = map.next_value()?;
                split.rest.insert(key, value);
            }
        }
        Ok(split)
    }
}

/// The file's keys but `[[accounts]]`, as a figment provider named as `Toml::file_exact`
/// names the file, so errors read "`key` in /path/to/file.toml" as before.
pub(super) struct Rest {
    path: PathBuf,
    dict: Dict,
}

impl Rest {
    /// The provider of `dict`, read from `path`.
    pub fn new(path: &Path, dict: Dict) -> Rest {
        Rest {
            path: path.to_path_buf(),
            dict,
        }
    }
}

impl Provider for Rest {
    fn metadata(&self) -> Metadata {
        Metadata::from("TOML file", self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(i: usize) -> String {
        format!(
            "[[accounts]]\nwaba_id = \"{i}\"\nphone_number_ids = [\"{}\"]\n",
            1000 + i
        )
    }

    /// What a split gives, as comparable values.
    type Seen = Option<(Option<Vec<(String, Vec<String>)>>, Dict)>;

    fn seen(s: Option<Split>) -> Seen {
        s.map(|s| {
            let accounts = s.accounts.map(|v| {
                v.into_iter()
                    .map(|a| (a.waba_id, a.phone_number_ids))
                    .collect()
            });
            (accounts, s.rest)
        })
    }

    /// The oracle: the chunked parse gives what one parse of the whole document gives, and
    /// fails where it fails.
    #[test]
    fn chunks_give_what_the_whole_document_gives() {
        let many: String = (0..(2 * CHUNK + 5)).map(account).collect();
        let docs = [
            String::new(),
            "log_level = \"warn\"\n".into(),
            format!("log_level = \"warn\"\n{}{}", account(1), account(2)),
            format!(
                "workers = 2\n{many}[webhook]\npath = \"/wh\"\n{}",
                account(9999)
            ),
            format!(
                "{}[[notify]]\nkind = \"slack\"\nurl = \"https://x\"\n{}",
                account(1),
                account(2)
            ),
            format!(
                "{}[shaping.phone_throughput]\n\"1001\" = 20\n{}",
                account(1),
                account(2)
            ),
            // Strings, comments and values that look like headers.
            format!(
                "graph_version = \"\"\"\n[[accounts]]\nwaba_id = \"9\"\n\"\"\"\n{}",
                account(1)
            ),
            format!("graph_version = '''\n[[accounts]]\n'''\n{}", account(1)),
            format!("graph_version = \"a\\\"[[accounts]]\"\n{}", account(1)),
            format!("graph_version = \"\"\"a\"\"\"\"\n{}", account(1)),
            format!("graph_version = ''\nredis_prefix = \"\"\n{}", account(1)),
            format!(
                "trip_codes = [\n368,\n[1],\n# [[accounts]]\n]\n{}",
                account(1)
            ),
            format!("{}[webhook]\nx = {{ a = \"[[accounts]]\" }}\n", account(1)),
            format!(
                "[[accounts]] # ] [\nwaba_id = \"1\" # ]\nphone_number_ids = [\"2\"]\n{}",
                account(3)
            ),
            format!(
                "  [[ accounts ]]\n  waba_id = \"1\"\n  phone_number_ids = [\n\"2\",\n]\n{}",
                account(3)
            ),
            format!(
                "[[\"accounts\"]]\nwaba_id = \"1\"\nphone_number_ids = [\"2\"]\n{}",
                account(3)
            ),
            format!(
                "log_level = \"warn\"\r\n{}",
                account(1).replace('\n', "\r\n")
            ),
            account(1).trim_end().to_string(),
            // Written another way, or wrong: left whole (and to figment).
            "accounts = [{waba_id = \"1\", phone_number_ids = [\"2\"]}]\n".into(),
            format!("accounts = []\n{}", account(1)),
            format!("accounts.x = 1\n{}", account(1)),
            format!("{}[accounts.extra]\nx = 1\n", account(1)),
            format!("{}[[accounts.more]]\nx = 1\n", account(1)),
            "[accounts]\nwaba_id = \"1\"\n".into(),
            format!(
                "{}[[accounts]]\nwaba_id = 3\nphone_number_ids = [\"4\"]\n",
                account(1)
            ),
            format!(
                "{}[[accounts]]\nwaba_id = \"3\"\nphones = [\"4\"]\n",
                account(1)
            ),
            format!(
                "{}[[accounts]]\nwaba_id = \"3\"\nwaba_id = \"4\"\n",
                account(1)
            ),
            format!("{}[[accounts]]\nwaba_id = \"3\n", account(1)),
            format!("{}x = \"\"\"\n", account(1)),
            format!("{}[webhook]\npath = \n", account(1)),
            format!("{}trip_codes = [\n[[accounts]]\n", account(1)),
        ];
        for doc in &docs {
            let whole: Option<Split> = toml::from_str(doc).ok();
            assert_eq!(seen(Split::parse(doc)), seen(whole), "{doc}");
        }
        let big = format!("workers = 2\n{many}");
        let n = Split::parse(&big).and_then(|s| s.accounts).map(|a| a.len());
        assert_eq!(n, Some(2 * CHUNK + 5));
    }

    #[test]
    fn the_scan_finds_each_accounts_table_and_nothing_else() {
        let doc = format!(
            "a = 1\n{}[b]\nc = \"[[accounts]]\"\n{}",
            account(1),
            account(2)
        );
        let blocks = account_blocks(&doc).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(&doc[blocks[0].clone()], account(1));
        assert_eq!(&doc[blocks[1].clone()], account(2));
        // Not followed: the whole document is parsed at once.
        for doc in [
            "x = \"\"\"\n",
            "x = [\n",
            "[accounts.x]\n",
            "x = ]\n",
            "x = \"a\n\"\n",
        ] {
            assert!(account_blocks(doc).is_none(), "{doc}");
        }
    }

    #[test]
    fn adjacent_tables_are_parsed_a_chunk_at_a_time() {
        let blocks: Vec<Range<usize>> = (0..5).map(|i| i * 10..i * 10 + 10).collect();
        assert_eq!(chunks(&blocks, 2), [0..20, 20..40, 40..50]);
        let apart = [0..10, 15..20, 20..30];
        assert_eq!(chunks(&apart, 64), [0..10, 15..30]);
    }
}
