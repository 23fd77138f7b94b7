//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their
//! corpus: one function per hand-written parser, taking the fuzzer's bytes. Each panics
//! when the parser breaks a property it must keep (a panic is what the fuzzer reports),
//! and returns quietly for any input the parser refuses.
//!
//! Not part of the worker's API: the targets only need these signatures to stay put
//! while the parsers behind them change.
//!
//! Several targets feed their input in pieces, as it would arrive from a socket. The
//! first byte says how many cuts (0..=7), the next that many bytes where (each a fraction
//! of the rest), and the rest is the data: `split(data)`.
use bytes::Bytes;

use crate::{account::UsageScanner, extract, strip::Stripper, upstream};

/// The data and the reads it arrives in (see the module docs).
fn split(data: &[u8]) -> (&[u8], Vec<std::ops::Range<usize>>) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], vec![]);
    };
    let n = usize::from(n % 8).min(rest.len());
    let (cuts, body) = rest.split_at(n);
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) * (body.len() + 1) / 256)
        .collect();
    at.push(0);
    at.push(body.len());
    at.sort_unstable();
    (body, at.windows(2).map(|w| w[0]..w[1]).collect())
}

/// How a chunked body ended.
#[derive(Debug, PartialEq)]
enum ChunkedEnd {
    /// Complete, with this many bytes after it.
    Done(usize),
    /// More bytes needed.
    Incomplete,
    Error,
}

fn chunked_decode(reads: impl Iterator<Item = Bytes>) -> (Vec<u8>, ChunkedEnd) {
    let mut c = upstream::Chunked::default();
    let mut out = Vec::new();
    let mut reads = reads.peekable();
    while let Some(mut input) = reads.next() {
        while !input.is_empty() {
            match c.decode(&mut input) {
                Ok(Some(d)) => {
                    assert!(!d.is_empty() || c.done(), "an empty data slice");
                    out.extend_from_slice(&d);
                }
                Ok(None) => {}
                Err(_) => return (out, ChunkedEnd::Error),
            }
            if c.done() {
                let after = input.len() + reads.map(|r| r.len()).sum::<usize>();
                return (out, ChunkedEnd::Done(after));
            }
        }
    }
    (out, ChunkedEnd::Incomplete)
}

/// The chunked decoder: decoding the data in any reads gives what decoding it in one
/// read gives (the same bytes, ending the same way at the same place).
pub fn chunked(data: &[u8]) {
    let (body, reads) = split(data);
    let whole = chunked_decode(std::iter::once(Bytes::copy_from_slice(body)));
    let pieces = chunked_decode(reads.into_iter().map(|r| Bytes::copy_from_slice(&body[r])));
    assert_eq!(whole, pieces, "decoding depends on how the input was read");
    if let (out, ChunkedEnd::Done(after)) = &whole {
        // The body cannot be longer than the bytes that carried it.
        assert!(out.len() + after <= body.len());
    }
}

/// A final head, the parts that matter to what is relayed.
#[derive(Debug, PartialEq)]
struct HeadSeen {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    framing: String,
    rest: usize,
}

fn head_take(reads: impl Iterator<Item = Bytes>) -> Option<Result<HeadSeen, String>> {
    let mut buf = Bytes::new();
    let mut reads = reads.peekable();
    while let Some(r) = reads.next() {
        buf = if buf.is_empty() {
            r
        } else {
            Bytes::from([&buf[..], &r[..]].concat())
        };
        match upstream::take_final_head(&mut buf) {
            Err(e) => return Some(Err(e.to_string())),
            Ok(None) => {}
            Ok(Some(h)) => {
                let framing = format!("{:?}", h.framing(false));
                return Some(Ok(HeadSeen {
                    status: h.status.as_u16(),
                    headers: h
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                        .collect(),
                    framing,
                    rest: buf.len() + reads.map(|r| r.len()).sum::<usize>(),
                }));
            }
        }
    }
    None
}

/// The upstream response head parser (interim responses skipped): a head it accepts
/// has a final status, relays no hop-by-hop header nor one its `connection` header
/// names, never both a chunked framing and a length, and it reads the same in any
/// reads.
pub fn upstream_head(data: &[u8]) {
    let (body, reads) = split(data);
    let whole = head_take(std::iter::once(Bytes::copy_from_slice(body)));
    let pieces = head_take(reads.into_iter().map(|r| Bytes::copy_from_slice(&body[r])));
    // A head bigger than the limit may be refused whole yet complete when read in
    // pieces that each stay under it, or the other way round: only compare below it.
    if body.len() <= 32 * 1024 {
        assert_eq!(whole, pieces, "the head reads differently in pieces");
    }
    let mut b = Bytes::copy_from_slice(body);
    let Ok(Some(h)) = upstream::take_final_head(&mut b) else {
        return;
    };
    assert!(!h.status.is_informational(), "an interim status as final");
    let nominated = final_connection_tokens(body);
    for (name, _) in &h.headers {
        assert!(!upstream::is_hop_by_hop(name), "hop-by-hop `{name}` relayed");
        assert!(
            !nominated
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_str().as_bytes())),
            "nominated `{name}` relayed"
        );
    }
    let framing = format!("{:?}", h.framing(false));
    if framing.starts_with("Chunked") {
        assert!(
            !h.headers.contains_key(http::header::CONTENT_LENGTH),
            "a length relayed with a chunked body"
        );
    }
}

/// The `connection` tokens of the first non-1xx head in `data`, read with httparse alone.
fn final_connection_tokens(mut data: &[u8]) -> Vec<Vec<u8>> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut r = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(n)) = r.parse(data) else {
            return vec![];
        };
        if r.code.is_some_and(|c| (100..200).contains(&c)) {
            data = &data[n..];
            continue;
        }
        return r
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(|t| t.trim_ascii().to_vec())
            .collect();
    }
}

/// Request extraction: when `extract::scan` accepts a body that serde_json accepts, the
/// edits the proxy makes (a new `model`, `include_usage` for a stream) keep it JSON, and
/// `model` reads as it was.
pub fn request_scan(data: &[u8]) {
    let Ok(head) = extract::scan(data) else {
        return;
    };
    assert_eq!(data.get(head.object_end), Some(&b'}'), "object_end is not a `}}`");
    if serde_json::from_slice::<serde_json::Value>(data).is_err() {
        // serde_json refuses some bodies that are valid JSON (nesting deeper than 128).
        return;
    }
    let body = Bytes::copy_from_slice(data);
    let mut edits = Vec::new();
    if let Some(r) = &head.model_range {
        let model: String = match serde_json::from_slice(&data[r.clone()]) {
            Ok(m) => m,
            Err(e) => panic!("model range is not a JSON string: {e}"),
        };
        assert_eq!(Some(&model), head.model.as_ref(), "model decoded differently");
        edits.push((r.clone(), Bytes::from_static(b"\"routed\\u002Dmodel\"")));
    }
    if head.stream {
        edits.push(extract::include_usage_edit(data, &head));
    }
    let out = extract::splice_many(&body, &mut edits).to_bytes();
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&out) {
        panic!("edited body is not JSON ({e}): {}", String::from_utf8_lossy(&out));
    }
}

/// The usage scanner over a response in any reads: it must not panic, and an SSE
/// stream's usage is the same however it was read. The first byte after the cuts picks
/// the mode (even: SSE).
pub fn usage_scan(data: &[u8]) {
    let (body, reads) = split(data);
    let Some((&mode, _)) = body.split_first() else {
        return;
    };
    let sse = mode % 2 == 0;
    let run = |reads: &mut dyn Iterator<Item = std::ops::Range<usize>>| {
        let mut s = UsageScanner::new(sse, true);
        for r in reads {
            // Offset by the mode byte.
            let r = r.start.max(1)..r.end.max(1);
            s.observe(&Bytes::copy_from_slice(&body[r]));
        }
        s.finish(true)
    };
    let pieces = run(&mut reads.into_iter());
    let whole = run(&mut std::iter::once(0..body.len()));
    // Only a stream of JSON events has one right reading: a line that is not JSON may be
    // read from its end in one read and refused in pieces (a fuzz finding), and neither is
    // wrong about bytes no conformant parser accepts.
    if sse && data_lines_are_json(&body[1..]) {
        assert_eq!(
            format!("{whole:?}"),
            format!("{pieces:?}"),
            "SSE usage depends on how the stream was read"
        );
    }
    // A JSON body has one right reading too (a long one, and a Responses API event's
    // `response.usage`, are read as they pass).
    if !sse && serde_json::from_slice::<serde_json::Value>(&body[1..]).is_ok() {
        crate::account::check_trailing_fast(&body[1..]);
        assert_eq!(
            format!("{whole:?}"),
            format!("{pieces:?}"),
            "JSON usage depends on how the body was read"
        );
    }
}

/// Whether every `data:` line of an SSE stream (but `[DONE]`) is one JSON document.
fn data_lines_are_json(stream: &[u8]) -> bool {
    stream.split(|&c| c == b'\n').all(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.strip_prefix(b"data:") {
            None => true,
            Some(v) => {
                let v = v.strip_prefix(b" ").unwrap_or(v);
                v == b"[DONE]" || serde_json::from_slice::<serde_json::Value>(v).is_ok()
            }
        }
    })
}

/// The SSE usage stripper over a stream in any reads (as the relay feeds it): it must not
/// panic, it only removes bytes, and what the client gets does not depend on how the
/// upstream's bytes were read (below the held-event bound).
pub fn usage_strip(data: &[u8]) {
    let (body, reads) = split(data);
    let run = |reads: &mut dyn Iterator<Item = std::ops::Range<usize>>| {
        let mut s = Stripper::new();
        let mut out = Vec::new();
        for r in reads {
            out.extend_from_slice(&s.feed(Bytes::copy_from_slice(&body[r])));
        }
        if let Some(rest) = s.finish() {
            out.extend_from_slice(&rest);
        }
        out
    };
    let pieces = run(&mut reads.into_iter());
    let whole = run(&mut std::iter::once(0..body.len()));
    assert!(whole.len() <= body.len(), "stripping made the stream longer");
    assert_eq!(
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&pieces),
        "stripping depends on how the stream was read"
    );
}

/// The stream translators (`translate`): the first byte picks one (0: Anthropic → chat
/// chunks, 1: Anthropic → Responses, 2: chat chunks → Anthropic; bit 2 adds a JSON-mode
/// tool named `json_response`), `split` cuts the rest into reads. None may panic, and
/// what the client gets (and whether the stream failed) does not depend on how the
/// upstream's bytes were read.
pub fn translate_stream(data: &[u8]) {
    use crate::translate::{Pair, ResponseContext};
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let pair = match pick % 3 {
        0 => Pair::ChatOnAnthropic,
        1 => Pair::ResponsesOnAnthropic,
        _ => Pair::MessagesOnOpenAi,
    };
    let ctx = ResponseContext {
        stream: true,
        include_usage: true,
        json_tool: (pick & 4 != 0).then(|| "json_response".to_owned()),
        created: 0,
    };
    let (body, reads) = split(data);
    let run = |reads: &mut dyn Iterator<Item = std::ops::Range<usize>>| {
        let mut t = pair.stream(ctx.clone());
        let mut out = Vec::new();
        for r in reads {
            if t.push(&body[r], &mut out).is_err() {
                return (out, true);
            }
        }
        let failed = t.finish(&mut out).is_err();
        (out, failed)
    };
    let pieces = run(&mut reads.into_iter());
    let whole = run(&mut std::iter::once(0..body.len()));
    assert_eq!(
        (String::from_utf8_lossy(&whole.0), whole.1),
        (String::from_utf8_lossy(&pieces.0), pieces.1),
        "translation depends on how the stream was read"
    );
}

/// The usage journal's segment reader (`journal::parse`), which reads bytes from disk
/// after a crash. The first byte picks the mode: even, the rest is a segment file as
/// found on disk (any bytes: no panic, and every record returned lies inside it and
/// verifies again when read where it was found); odd, the rest is a list of records
/// (separated by 0xFF) and a few damaged bytes (each a position and a mask, after the
/// last 0xFE): a segment holding those records, damaged, must yield only records that
/// were written, and undamaged exactly them in order.
pub fn journal(data: &[u8]) {
    use crate::journal::{parse, segment_image};
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Some(p) = parse(data) {
            for r in p.records {
                assert!(!r.is_empty() && r.len() <= crate::journal::MAX_RECORD);
                let at = r.as_ptr() as usize - data.as_ptr() as usize;
                assert!(at + r.len() <= data.len());
            }
        }
        return;
    }
    let (recs, damage) = match data.iter().rposition(|&b| b == 0xFE) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let recs: Vec<Vec<u8>> = recs
        .split(|&b| b == 0xFF)
        .filter(|r| !r.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let mut bytes = segment_image(0x5eed_f00d, 5, &recs, 512);
    let intact: Vec<Vec<u8>> = parse(&bytes)
        .map(|p| p.records.into_iter().map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    // The records that fit in the image, in order.
    assert!(
        recs.starts_with(&intact),
        "an intact segment reads back differently"
    );
    for d in damage.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([d[0], d[1]])) % bytes.len();
        bytes[at] ^= d[2] | 1;
    }
    if let Some(p) = parse(&bytes) {
        for r in p.records {
            assert!(
                recs.iter().any(|w| w.as_slice() == r),
                "a record that was never written"
            );
        }
    }
}

/// The client's W3C `traceparent` (`switchyard_otel::parse_traceparent`), hostile input
/// on every traced request: no panic, and it accepts exactly what the specification's
/// grammar, written again here by its fields, accepts (version: two lower-case hex
/// digits, not `ff`; 32 and 16 lower-case hex digits, not all zeros; two for the flags;
/// after them nothing for version `00`, else nothing or a `-` and anything), with the
/// same ids and sampled flag.
pub fn traceparent(data: &[u8]) {
    let got = switchyard_otel::parse_traceparent(data).map(|p| (p.trace_id, p.span_id, p.sampled));
    let hex = |s: &[u8], n: usize| s.len() == n && s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let num = |s: &[u8]| {
        s.iter().fold(0u128, |n, &c| {
            n * 16 + u128::from((c as char).to_digit(16).unwrap_or(0))
        })
    };
    let fields: Vec<&[u8]> = data.splitn(5, |&b| b == b'-').collect();
    let want = match fields[..] {
        [v, t, s, f, ref rest @ ..]
            if hex(v, 2)
                && v != b"ff"
                && hex(t, 32)
                && hex(s, 16)
                && hex(f, 2)
                && num(t) != 0
                && num(s) != 0
                && (rest.is_empty() || v != b"00") =>
        {
            Some((num(t), num(s) as u64, num(f) & 1 == 1))
        }
        _ => None,
    };
    assert_eq!(got, want, "{:?}", String::from_utf8_lossy(data));
}
