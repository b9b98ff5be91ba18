//! Text from the cluster and its nodes is hostile: logs, files, command output, object
//! names and status messages are written by whoever controls a pod or a node. This
//! module owns how such text is made safe for where it goes — kept lossily when it is
//! not UTF-8, bounded with a visible marker, and escaped for XML and for a terminal — so
//! that it can neither break a report nor forge one, nor drive the reader's terminal.

use std::borrow::Cow;

/// The most of one piece of evidence a report carries (a log tail, a file, a command's
/// output). Beyond it the text is cut, with a marker saying how much was left out.
pub const MAX_EVIDENCE_BYTES: usize = 16 * 1024;

/// Bytes as text: invalid UTF-8 becomes U+FFFD, never an error that loses the rest.
pub fn lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(invalid) => String::from_utf8_lossy(invalid.as_bytes()).into_owned(),
    }
}

/// The most of each stream (stdout, stderr) of one command that postflight keeps while it
/// reads it: a few times what the largest real output takes (a node's merged tmpfiles.d
/// configuration, its routing table in a big cluster), so that a node printing forever
/// (`yes` in place of `stat`) costs this much memory and no more.
pub const MAX_STREAM_BYTES: usize = 1024 * 1024;

/// One output stream as it is read: the first `limit` bytes are kept, the rest only
/// counted, so memory is bounded however much the other end writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CappedOutput {
    kept: Vec<u8>,
    limit: usize,
    /// Bytes read past the limit and thrown away.
    dropped: u64,
}

impl CappedOutput {
    pub fn new(limit: usize) -> Self {
        CappedOutput {
            kept: Vec::new(),
            limit,
            dropped: 0,
        }
    }

    /// Takes in what was just read.
    pub fn push(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.kept.len());
        let (keep, drop) = bytes.split_at(room.min(bytes.len()));
        self.kept.extend_from_slice(keep);
        self.dropped += drop.len() as u64;
    }

    /// Whether anything was thrown away.
    pub fn was_cut(&self) -> bool {
        self.dropped > 0
    }

    /// The stream as text ([`lossy`]); when it was cut, ended at a character boundary and
    /// followed by a marker saying so and how much was left out.
    pub fn into_text(self) -> String {
        if !self.was_cut() {
            return lossy(self.kept);
        }
        let mut kept = self.kept;
        // A character split by the cut is not shown as U+FFFD: it belongs to what was cut.
        let mut dropped = self.dropped;
        if let Err(invalid) = std::str::from_utf8(&kept) {
            if invalid.error_len().is_none() {
                dropped += (kept.len() - invalid.valid_up_to()) as u64;
                kept.truncate(invalid.valid_up_to());
            }
        }
        format!(
            "{}… [output cut at {} bytes: {dropped} more bytes not shown]",
            lossy(kept),
            self.limit
        )
    }
}

/// At most `limit` bytes of `text`, cut at a character boundary, with a marker naming
/// how many bytes were left out.
pub fn truncate(text: &str, limit: usize) -> Cow<'_, str> {
    if text.len() <= limit {
        return Cow::Borrowed(text);
    }
    let mut cut = limit;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!(
        "{}… [{} more bytes not shown]",
        &text[..cut],
        text.len() - cut
    ))
}

/// The last `limit` bytes of `text` (a log's newest end), cut at a character boundary,
/// with a marker naming how many earlier bytes were left out.
pub fn tail(text: &str, limit: usize) -> Cow<'_, str> {
    if text.len() <= limit {
        return Cow::Borrowed(text);
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    Cow::Owned(format!(
        "[{start} earlier bytes not shown] …{}",
        &text[start..]
    ))
}

/// Characters a terminal acts on instead of showing: C0 and C1 controls (escape
/// sequences start with one), DEL, and the bidirectional overrides that make text read
/// differently from what it is. Newline and tab stay: they are layout.
fn acts_on_terminal(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Text as a terminal may show it: every control character is written out as `\x1b` or
/// `\u{202e}`, so an escape sequence in a log shows as text and does nothing.
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c {
                c if acts_on_terminal(c) && (c as u32) < 0x100 => format!("\\x{:02x}", c as u32),
                c if acts_on_terminal(c) => format!("\\u{{{:x}}}", c as u32),
                c => c.to_string(),
            })
            .collect(),
    )
}

/// Characters XML 1.0 cannot carry at all, escaped or not: the C0 controls other than
/// tab, newline and carriage return, and U+FFFE/U+FFFF.
fn illegal_in_xml(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
}

/// Text an XML writer can escape into a well-formed document: characters XML cannot
/// carry are written out as `\x01`. (The writer still escapes `<`, `&` and quotes.)
pub fn for_xml(text: &str) -> Cow<'_, str> {
    if !text.chars().any(illegal_in_xml) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if illegal_in_xml(c) {
                    format!("\\x{:02x}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Text for an HTML page, in element content or a quoted attribute: markup characters
/// become entities and control characters are written out, so a log line can neither
/// add an element nor run a script.
pub fn for_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in for_terminal(text).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Text for the inside of a CDATA section: as `for_xml`, and a `]]>` in it, which would
/// end the section early and let the rest be read as markup, is split across two
/// sections, so a parser reads back exactly the original characters.
pub fn for_cdata(text: &str) -> Cow<'_, str> {
    let legal = for_xml(text);
    if !legal.contains("]]>") {
        return legal;
    }
    Cow::Owned(legal.replace("]]>", "]]]]><![CDATA[>"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn invalid_utf8_is_kept_lossily_not_dropped() {
        let log = b"before\n\xff\xfe FATAL permission denied on /var/run/calico\n".to_vec();
        let text = lossy(log);
        assert!(text.contains("FATAL permission denied"), "{text}");
        assert!(text.contains('\u{fffd}'));
    }

    #[rstest]
    #[case::short("abc", 10, "abc")]
    #[case::cut("abcdef", 3, "abc… [3 more bytes not shown]")]
    #[case::multibyte("ééé", 3, "é… [4 more bytes not shown]")]
    fn truncation_keeps_a_char_boundary_and_says_how_much_is_missing(
        #[case] text: &str,
        #[case] limit: usize,
        #[case] expected: &str,
    ) {
        assert_eq!(truncate(text, limit), expected);
    }

    #[test]
    fn a_capped_stream_keeps_its_start_and_counts_the_rest() {
        let mut stream = CappedOutput::new(8);
        for _ in 0..1000 {
            stream.push(b"y\n");
        }
        assert!(stream.was_cut());
        assert!(stream.kept.capacity() <= 64, "memory stays bounded");
        assert_eq!(
            stream.into_text(),
            "y\ny\ny\ny\n… [output cut at 8 bytes: 1992 more bytes not shown]"
        );
        let mut short = CappedOutput::new(8);
        short.push(b"ok\n");
        assert!(!short.was_cut());
        assert_eq!(short.into_text(), "ok\n");
    }

    #[test]
    fn a_cut_inside_a_character_drops_the_whole_character() {
        let mut stream = CappedOutput::new(3);
        stream.push("aéé".as_bytes());
        assert_eq!(
            stream.into_text(),
            "aé… [output cut at 3 bytes: 2 more bytes not shown]"
        );
        let mut stream = CappedOutput::new(2);
        stream.push("aé".as_bytes());
        stream.push(b"z");
        assert_eq!(
            stream.into_text(),
            "a… [output cut at 2 bytes: 3 more bytes not shown]"
        );
    }

    #[test]
    fn a_log_tail_keeps_its_newest_end() {
        assert_eq!(tail("0123456789", 4), "[6 earlier bytes not shown] …6789");
        assert_eq!(tail("short", 10), "short");
    }

    #[rstest]
    #[case::title("\u{1b}]0;owned\u{7}", "\\x1b]0;owned\\x07")]
    #[case::clear("\u{1b}[2J\u{1b}[H", "\\x1b[2J\\x1b[H")]
    #[case::c1("\u{9b}31m", "\\x9b31m")]
    #[case::bidi("ok \u{202e}gnp.exe", "ok \\u{202e}gnp.exe")]
    #[case::layout("a\tb\nc", "a\tb\nc")]
    fn the_terminal_sees_control_characters_as_text(#[case] text: &str, #[case] shown: &str) {
        assert_eq!(for_terminal(text), shown);
    }

    #[test]
    fn html_text_can_add_no_element_nor_attribute() {
        let hostile = "<script>alert(1)</script>\" onmouseover='x' & \u{1b}[2J";
        let page = format!("<p title=\"{0}\">{0}</p>", for_html(hostile));
        let parsed = roxmltree::Document::parse(&page).expect("well-formed");
        let p = parsed.root_element();
        assert_eq!(p.children().filter(|n| n.is_element()).count(), 0, "{page}");
        assert_eq!(p.attributes().count(), 1, "{page}");
        assert_eq!(
            p.text(),
            Some("<script>alert(1)</script>\" onmouseover='x' & \\x1b[2J")
        );
    }

    #[test]
    fn xml_text_stays_well_formed_and_reads_back_as_written() {
        let hostile = "line ]]> <testcase name=\"forged\"/> \u{1}\u{8} end";
        let document = format!("<a><![CDATA[{}]]></a>", for_cdata(hostile));
        let parsed = roxmltree::Document::parse(&document).expect("well-formed");
        let text: String = parsed
            .root_element()
            .children()
            .filter_map(|n| n.text())
            .collect();
        assert_eq!(text, "line ]]> <testcase name=\"forged\"/> \\x01\\x08 end");
        assert_eq!(
            parsed
                .descendants()
                .filter(|n| n.has_tag_name("testcase"))
                .count(),
            0,
            "nothing was forged"
        );
    }
}
