//! Stream translators: event-by-event state machines that take the upstream's SSE bytes
//! in reads cut anywhere and write the client's SSE bytes. Each holds at most one
//! incomplete event ([`MAX_EVENT_BYTES`](super::MAX_EVENT_BYTES)) and a few counters,
//! never the answer (except [`AnthropicToResponsesStream`], see there).
use serde_json::{json, Value};

use super::{
    finish_reason, response::anthropic_error_type, response::call_item, response::item_id,
    response::message_item, response::openai_error_type, response::reasoning_item, response::response_object,
    response_id, sse, stop_reason, upstream, usage_from_anthropic, usage_from_openai, usage_to_openai,
    ResponseContext, Result, Usage,
};

/// What the proxy's body phase drives: `push` every upstream read, `finish` at the
/// upstream's end, then book `usage()`.
pub trait StreamTranslator: Send {
    /// Translates `input` (any cut of the upstream's bytes), appending to `out`. An error
    /// ends the stream: the caller writes its own error event in the client's dialect.
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<()>;
    /// The upstream's stream ended. An error means it ended before its last event
    /// (truncated); what was translated so far is already in `out`.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<()>;
    /// The usage seen so far (complete once the stream ended normally).
    fn usage(&self) -> Usage;
}

/// Parses an event's data as a JSON object.
fn data_json(ev: &sse::Event) -> Result<Value> {
    match serde_json::from_slice::<Value>(&ev.data) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(upstream("an SSE event whose data is not a JSON object")),
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Merges an Anthropic `usage` object into `u` (`message_delta` repeats or updates
/// some of `message_start`'s counts; those it carries win).
fn merge_anthropic_usage(u: &mut Usage, v: &Value) {
    let n = usage_from_anthropic(v);
    if v.get("input_tokens").is_some_and(Value::is_u64) {
        u.input = n.input;
    }
    if v.get("output_tokens").is_some_and(Value::is_u64) {
        u.output = n.output;
    }
    if v.get("cache_read_input_tokens").is_some_and(Value::is_u64) {
        u.cache_read = n.cache_read;
    }
    if v.get("cache_creation_input_tokens").is_some_and(Value::is_u64) {
        u.cache_write = n.cache_write;
    }
}

/// Drives `on_event` over every complete event of `input`. Events completed before a
/// reader error (an oversized event) are still translated, so that the output does not
/// depend on how the upstream's bytes were cut into reads.
fn each_event(
    reader: &mut sse::Reader,
    input: &[u8],
    end: bool,
    mut on_event: impl FnMut(sse::Event) -> Result<()>,
) -> Result<()> {
    let mut events = Vec::new();
    let mut read = reader.push(input, &mut events);
    if end && read.is_ok() {
        read = reader.finish(&mut events);
    }
    events.into_iter().try_for_each(&mut on_event)?;
    read
}

/// A stream translator's event-by-event half: its SSE reader, and what one event becomes.
trait Events {
    fn reader(&mut self) -> &mut sse::Reader;
    fn on_event(&mut self, ev: sse::Event, out: &mut Vec<u8>) -> Result<()>;
}

/// [`each_event`] over `t`'s own reader, taken out while its events go to `t`.
fn drive(t: &mut impl Events, input: &[u8], end: bool, out: &mut Vec<u8>) -> Result<()> {
    let mut reader = std::mem::take(t.reader());
    let r = each_event(&mut reader, input, end, |ev| t.on_event(ev, out));
    *t.reader() = reader;
    r
}

/// The kind of the Anthropic content block in hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Thinking,
    /// A tool call: its OpenAI `tool_calls` index.
    Tool(u32),
    /// The forced JSON-mode tool: its input is the message text.
    JsonText,
    /// A block with nothing to translate (`redacted_thinking`, unknown kinds).
    Skip,
}

/// Anthropic Messages SSE → OpenAI `chat.completion.chunk` SSE: a role chunk at
/// `message_start`, `content`/`reasoning_content` deltas, `tool_calls` deltas (index, id
/// and name first, then argument fragments from `input_json_delta`), the finish-reason
/// chunk, a usage chunk when the client asked for `include_usage`, then `data: [DONE]`.
/// An upstream `error` event becomes `data: {"error": ...}` and ends the stream.
#[derive(Debug)]
pub struct AnthropicToChatStream {
    ctx: ResponseContext,
    reader: sse::Reader,
    id: String,
    model: String,
    block: Option<(u64, Kind)>,
    tools: u32,
    /// The open tool call got an argument fragment.
    args_sent: bool,
    stop: Option<String>,
    usage: Usage,
    started: bool,
    done: bool,
}

impl AnthropicToChatStream {
    pub fn new(ctx: ResponseContext) -> Self {
        Self {
            ctx,
            reader: sse::Reader::default(),
            id: String::new(),
            model: String::new(),
            block: None,
            tools: 0,
            args_sent: false,
            stop: None,
            usage: Usage::default(),
            started: false,
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.ctx.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        })
    }

    /// The kind of the block a delta is for; deltas for another block are refused.
    fn kind(&self, ev: &Value) -> Result<Kind> {
        let index = ev.get("index").and_then(Value::as_u64);
        match self.block {
            Some((i, k)) if Some(i) == index => Ok(k),
            _ => Err(upstream("a delta for a content block that is not open")),
        }
    }

    fn event(&mut self, ev: sse::Event, out: &mut Vec<u8>) -> Result<()> {
        if self.done {
            return Ok(());
        }
        let v = data_json(&ev)?;
        let ty = str_of(&v, "type");
        if !self.started && !matches!(ty, "message_start" | "ping" | "error") {
            return Err(upstream(format!("`{ty}` before message_start")));
        }
        match ty {
            "message_start" => {
                let m = v.get("message").cloned().unwrap_or_default();
                self.id = str_of(&m, "id").to_owned();
                self.model = str_of(&m, "model").to_owned();
                if let Some(u) = m.get("usage") {
                    merge_anthropic_usage(&mut self.usage, u);
                }
                self.started = true;
                let c = self.chunk(json!({"role": "assistant", "content": ""}), None);
                sse::write_data(out, &c);
            }
            "content_block_start" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let b = v.get("content_block").cloned().unwrap_or_default();
                let kind = match str_of(&b, "type") {
                    "text" => {
                        let t = str_of(&b, "text");
                        if !t.is_empty() {
                            sse::write_data(out, &self.chunk(json!({"content": t}), None));
                        }
                        Kind::Text
                    }
                    "thinking" => Kind::Thinking,
                    "tool_use" if self.ctx.json_tool.as_deref() == Some(str_of(&b, "name")) => Kind::JsonText,
                    "tool_use" => {
                        let k = self.tools;
                        self.tools += 1;
                        let c = self.chunk(
                            json!({"tool_calls": [{
                                "index": k, "id": str_of(&b, "id"), "type": "function",
                                "function": {"name": str_of(&b, "name"), "arguments": ""},
                            }]}),
                            None,
                        );
                        sse::write_data(out, &c);
                        Kind::Tool(k)
                    }
                    _ => Kind::Skip,
                };
                self.block = Some((index, kind));
            }
            "content_block_delta" => {
                let kind = self.kind(&v)?;
                let d = v.get("delta").cloned().unwrap_or_default();
                let (key, text) = match (str_of(&d, "type"), kind) {
                    ("text_delta", Kind::Text) => ("content", str_of(&d, "text")),
                    ("thinking_delta", Kind::Thinking) => ("reasoning_content", str_of(&d, "thinking")),
                    ("input_json_delta", Kind::JsonText) => ("content", str_of(&d, "partial_json")),
                    ("input_json_delta", Kind::Tool(_)) => ("arguments", str_of(&d, "partial_json")),
                    // signature and citation deltas, and anything for skipped blocks
                    _ => return Ok(()),
                };
                if text.is_empty() {
                    return Ok(());
                }
                self.args_sent = true;
                let delta = match kind {
                    Kind::Tool(k) => json!({"tool_calls": [{"index": k, "function": {"arguments": text}}]}),
                    _ => json!({ key: text }),
                };
                sse::write_data(out, &self.chunk(delta, None));
            }
            "content_block_stop" => {
                // An argument-less call may stream no fragment: its arguments are `{}`,
                // as in the complete answer.
                let empty = match (self.kind(&v)?, self.args_sent) {
                    (Kind::Tool(k), false) => {
                        Some(json!({"tool_calls": [{"index": k, "function": {"arguments": "{}"}}]}))
                    }
                    (Kind::JsonText, false) => Some(json!({"content": "{}"})),
                    _ => None,
                };
                if let Some(d) = empty {
                    sse::write_data(out, &self.chunk(d, None));
                }
                self.args_sent = false;
                self.block = None;
            }
            "message_delta" => {
                if let Some(s) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop = Some(s.to_owned());
                }
                if let Some(u) = v.get("usage") {
                    merge_anthropic_usage(&mut self.usage, u);
                }
            }
            "message_stop" => {
                let finish = finish_reason(
                    self.stop.as_deref().unwrap_or("end_turn"),
                    self.ctx.json_tool.is_some(),
                );
                sse::write_data(out, &self.chunk(json!({}), Some(finish)));
                if self.ctx.include_usage {
                    let c = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.ctx.created,
                        "model": self.model, "choices": [], "usage": usage_to_openai(&self.usage),
                    });
                    sse::write_data(out, &c);
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
            }
            "ping" => {}
            "error" => {
                let e = v.get("error").cloned().unwrap_or_default();
                let aty = str_of(&e, "type");
                let err = json!({"error": {
                    "message": str_of(&e, "message"), "type": openai_error_type(aty),
                    "param": null, "code": aty,
                }});
                sse::write_data(out, &err);
                self.done = true;
            }
            other => return Err(upstream(format!("unknown event `{other}`"))),
        }
        Ok(())
    }
}

impl Events for AnthropicToChatStream {
    fn reader(&mut self) -> &mut sse::Reader {
        &mut self.reader
    }
    fn on_event(&mut self, ev: sse::Event, out: &mut Vec<u8>) -> Result<()> {
        self.event(ev, out)
    }
}

impl StreamTranslator for AnthropicToChatStream {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
        drive(self, input, false, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        drive(self, &[], true, out)?;
        if self.done {
            Ok(())
        } else {
            Err(upstream("the stream ended before message_stop"))
        }
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}

/// OpenAI `chat.completion.chunk` SSE → Anthropic Messages SSE: `message_start` at the
/// first chunk, one content block per run of text, reasoning (`reasoning_content` or
/// `reasoning`) or one tool call (`tool_calls` argument fragments → `input_json_delta`),
/// then, at `data: [DONE]` (or the end of a stream that gave a finish reason),
/// `message_delta` with the stop reason and the usage of the final usage chunk, and
/// `message_stop`. An OpenAI error chunk becomes an `error` event.
///
/// The request must have asked for `stream_options.include_usage` (as
/// [`messages_to_chat`](super::messages_to_chat) does) for the usage to be known: OpenAI
/// sends it last, so `message_start` carries zero input tokens and `message_delta` all.
#[derive(Debug)]
pub struct ChatToAnthropicStream {
    reader: sse::Reader,
    started: bool,
    /// The open block: its Anthropic index and kind.
    block: Option<(u64, Kind)>,
    next_block: u64,
    /// OpenAI tool-call indexes already opened (and maybe closed): refused if they come back.
    tools_seen: u32,
    finish: Option<String>,
    usage: Usage,
    done: bool,
}

impl ChatToAnthropicStream {
    /// `ctx` is taken for symmetry with the other translators; nothing in it changes an
    /// Anthropic stream.
    pub fn new(ctx: ResponseContext) -> Self {
        let _ = ctx;
        Self {
            reader: sse::Reader::default(),
            started: false,
            block: None,
            next_block: 0,
            tools_seen: 0,
            finish: None,
            usage: Usage::default(),
            done: false,
        }
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((i, _)) = self.block.take() {
            sse::write_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": i}),
            );
        }
    }

    /// Makes sure a block of `kind` is open (opening it with `start`), and returns its index.
    fn open(&mut self, kind: Kind, start: impl FnOnce() -> Value, out: &mut Vec<u8>) -> u64 {
        if let Some((i, k)) = self.block {
            if k == kind {
                return i;
            }
        }
        self.close_block(out);
        let i = self.next_block;
        self.next_block += 1;
        self.block = Some((i, kind));
        sse::write_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": i, "content_block": start()}),
        );
        i
    }

    fn delta(out: &mut Vec<u8>, index: u64, delta: Value) {
        sse::write_event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.close_block(out);
        let stop = match stop_reason(self.finish.as_deref().unwrap_or("stop")) {
            // Some OpenAI-compatible servers say `stop` after tool calls.
            "end_turn" if self.tools_seen > 0 => "tool_use",
            s => s,
        };
        let u = &self.usage;
        sse::write_event(
            out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": {
                    "input_tokens": u.input, "output_tokens": u.output,
                    "cache_read_input_tokens": u.cache_read, "cache_creation_input_tokens": u.cache_write,
                },
            }),
        );
        sse::write_event(out, "message_stop", &json!({"type": "message_stop"}));
        self.done = true;
    }

    fn event(&mut self, ev: sse::Event, out: &mut Vec<u8>) -> Result<()> {
        if self.done {
            return Ok(());
        }
        if ev.data.trim_ascii() == b"[DONE]" {
            if !self.started {
                return Err(upstream("[DONE] before any chunk"));
            }
            self.end(out);
            return Ok(());
        }
        let v = data_json(&ev)?;
        if let Some(e) = v.get("error") {
            let msg = str_of(e, "message");
            let status = e
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(500);
            sse::write_event(
                out,
                "error",
                &json!({"type": "error", "error": {"type": anthropic_error_type(status), "message": msg}}),
            );
            self.done = true;
            return Ok(());
        }
        if !self.started {
            self.started = true;
            sse::write_event(
                out,
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": str_of(&v, "id"), "type": "message", "role": "assistant",
                    "model": str_of(&v, "model"), "content": [], "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                }}),
            );
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = usage_from_openai(u);
        }
        let Some(choice) = v.get("choices").and_then(Value::as_array).and_then(|c| c.first()) else {
            return Ok(());
        };
        if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
            return Err(upstream("a chunk for a choice other than the first"));
        }
        let d = choice.get("delta").cloned().unwrap_or_default();
        for key in ["reasoning_content", "reasoning"] {
            if let Some(r) = d.get(key).and_then(Value::as_str).filter(|r| !r.is_empty()) {
                let i = self.open(
                    Kind::Thinking,
                    || json!({"type": "thinking", "thinking": "", "signature": ""}),
                    out,
                );
                Self::delta(out, i, json!({"type": "thinking_delta", "thinking": r}));
                break;
            }
        }
        for key in ["content", "refusal"] {
            if let Some(t) = d.get(key).and_then(Value::as_str).filter(|t| !t.is_empty()) {
                let i = self.open(Kind::Text, || json!({"type": "text", "text": ""}), out);
                Self::delta(out, i, json!({"type": "text_delta", "text": t}));
            }
        }
        if let Some(calls) = d.get("tool_calls").and_then(Value::as_array) {
            for c in calls {
                let k = c
                    .get("index")
                    .and_then(Value::as_u64)
                    .and_then(|k| u32::try_from(k).ok())
                    .ok_or_else(|| upstream("a tool call delta without an index"))?;
                let open = matches!(self.block, Some((_, Kind::Tool(o))) if o == k);
                if !open {
                    if k < self.tools_seen {
                        return Err(upstream("tool call deltas interleaved across calls"));
                    }
                    self.tools_seen = k.saturating_add(1);
                    let id = str_of(c, "id").to_owned();
                    let name = c
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    self.open(
                        Kind::Tool(k),
                        || json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                        out,
                    );
                }
                let args = c
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if let (false, Some((i, _))) = (args.is_empty(), self.block) {
                    Self::delta(out, i, json!({"type": "input_json_delta", "partial_json": args}));
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_owned());
            self.close_block(out);
        }
        Ok(())
    }
}

impl Events for ChatToAnthropicStream {
    fn reader(&mut self) -> &mut sse::Reader {
        &mut self.reader
    }
    fn on_event(&mut self, ev: sse::Event, out: &mut Vec<u8>) -> Result<()> {
        self.event(ev, out)
    }
}

impl StreamTranslator for ChatToAnthropicStream {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
        drive(self, input, false, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        drive(self, &[], true, out)?;
        if !self.done && self.finish.is_some() {
            // Some OpenAI-compatible servers end without `[DONE]`.
            self.end(out);
        }
        if self.done {
            Ok(())
        } else {
            Err(upstream("the stream ended before its finish reason"))
        }
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}

/// The largest total of text and arguments an [`AnthropicToResponsesStream`] keeps.
pub const MAX_RESPONSES_OUTPUT_BYTES: usize = 16 << 20;

/// The Responses output item in hand.
#[derive(Debug)]
struct Item {
    anthropic_index: u64,
    kind: Kind,
    id: String,
    call_id: String,
    name: String,
    text: String,
}

/// Anthropic Messages SSE → OpenAI Responses SSE: `response.created` and
/// `response.in_progress` at `message_start`; per block `response.output_item.added`,
/// then `response.content_part.added` + `response.output_text.delta`s (text),
/// `response.function_call_arguments.delta`s (tool use) or
/// `response.reasoning_summary_part.added` + `response.reasoning_summary_text.delta`s
/// (thinking), the matching `*.done` events and `response.output_item.done`; at
/// `message_stop` `response.completed` (or `response.incomplete` when the answer hit
/// `max_tokens`) with the output and usage. An upstream `error` becomes an `error` event.
///
/// The Responses protocol repeats each item whole in its `*.done` events and all of them
/// in `response.completed`, so this translator keeps the output it has seen, up to
/// [`MAX_RESPONSES_OUTPUT_BYTES`] (beyond, the stream fails).
#[derive(Debug)]
pub struct AnthropicToResponsesStream {
    ctx: ResponseContext,
    reader: sse::Reader,
    id: String,
    model: String,
    seq: u64,
    item: Option<Item>,
    output: Vec<Value>,
    kept: usize,
    stop: Option<String>,
    usage: Usage,
    started: bool,
    done: bool,
}

impl AnthropicToResponsesStream {
    pub fn new(ctx: ResponseContext) -> Self {
        Self {
            ctx,
            reader: sse::Reader::default(),
            id: String::new(),
            model: String::new(),
            seq: 0,
            item: None,
            output: Vec::new(),
            kept: 0,
            stop: None,
            usage: Usage::default(),
            started: false,
            done: false,
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, ty: &str, mut v: Value) {
        v["type"] = Value::String(ty.to_owned());
        v["sequence_number"] = self.seq.into();
        self.seq += 1;
        sse::write_event(out, ty, &v);
    }

    fn keep(&mut self, n: usize) -> Result<()> {
        self.kept = self.kept.saturating_add(n);
        if self.kept > MAX_RESPONSES_OUTPUT_BYTES {
            return Err(upstream(format!(
                "a Responses stream longer than {MAX_RESPONSES_OUTPUT_BYTES} bytes"
            )));
        }
        Ok(())
    }

    fn open_item(&mut self, index: u64, b: &Value, out: &mut Vec<u8>) {
        let oi = self.output.len();
        let kind = match str_of(b, "type") {
            "text" => Kind::Text,
            "thinking" => Kind::Thinking,
            "tool_use" if self.ctx.json_tool.as_deref() == Some(str_of(b, "name")) => Kind::JsonText,
            "tool_use" => Kind::Tool(0),
            _ => Kind::Skip,
        };
        let mut item = Item {
            anthropic_index: index,
            kind,
            id: String::new(),
            call_id: String::new(),
            name: String::new(),
            text: String::new(),
        };
        let (added, part) = match kind {
            Kind::Text | Kind::JsonText => {
                item.id = item_id("msg", &self.id, oi);
                (
                    json!({"id": item.id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}),
                    Some((
                        "response.content_part.added",
                        json!({"type": "output_text", "text": "", "annotations": []}),
                    )),
                )
            }
            Kind::Thinking => {
                item.id = item_id("rs", &self.id, oi);
                (
                    json!({"id": item.id, "type": "reasoning", "summary": []}),
                    Some((
                        "response.reasoning_summary_part.added",
                        json!({"type": "summary_text", "text": ""}),
                    )),
                )
            }
            Kind::Tool(_) => {
                item.call_id = str_of(b, "id").to_owned();
                item.name = str_of(b, "name").to_owned();
                item.id = format!("fc_{}", item.call_id);
                (
                    json!({"id": item.id, "type": "function_call", "status": "in_progress",
                           "call_id": item.call_id, "name": item.name, "arguments": ""}),
                    None,
                )
            }
            Kind::Skip => {
                self.item = Some(item);
                return;
            }
        };
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": oi, "item": added}),
        );
        if let Some((ty, part)) = part {
            let key = if kind == Kind::Thinking {
                "summary_index"
            } else {
                "content_index"
            };
            self.emit(
                out,
                ty,
                json!({"item_id": item.id, "output_index": oi, key: 0, "part": part}),
            );
        }
        if kind == Kind::Text {
            let t = str_of(b, "text");
            item.text.push_str(t);
        }
        self.item = Some(item);
    }

    fn delta(&mut self, index: u64, d: &Value, out: &mut Vec<u8>) -> Result<()> {
        let Some(item) = self.item.as_ref().filter(|i| i.anthropic_index == index) else {
            return Err(upstream("a delta for a content block that is not open"));
        };
        let oi = self.output.len();
        let id = item.id.clone();
        let (ty, text) = match (str_of(d, "type"), item.kind) {
            ("text_delta", Kind::Text) => ("response.output_text.delta", str_of(d, "text")),
            ("input_json_delta", Kind::JsonText) => ("response.output_text.delta", str_of(d, "partial_json")),
            ("input_json_delta", Kind::Tool(_)) => (
                "response.function_call_arguments.delta",
                str_of(d, "partial_json"),
            ),
            ("thinking_delta", Kind::Thinking) => {
                ("response.reasoning_summary_text.delta", str_of(d, "thinking"))
            }
            _ => return Ok(()),
        };
        if text.is_empty() {
            return Ok(());
        }
        self.keep(text.len())?;
        let v = match ty {
            "response.output_text.delta" => {
                json!({"item_id": id, "output_index": oi, "content_index": 0, "delta": text, "logprobs": []})
            }
            "response.reasoning_summary_text.delta" => {
                json!({"item_id": id, "output_index": oi, "summary_index": 0, "delta": text})
            }
            _ => json!({"item_id": id, "output_index": oi, "delta": text}),
        };
        if let Some(item) = self.item.as_mut() {
            item.text.push_str(text);
        }
        self.emit(out, ty, v);
        Ok(())
    }

    fn close_item(&mut self, index: u64, out: &mut Vec<u8>) -> Result<()> {
        if let Some(i) = self.item.as_ref() {
            if i.kind == Kind::JsonText && i.text.is_empty() && i.anthropic_index == index {
                // A JSON answer with no fragment is `{}`, as in the complete answer.
                let d = json!({"type": "input_json_delta", "partial_json": "{}"});
                self.delta(index, &d, out)?;
            }
        }
        let Some(item) = self.item.take().filter(|i| i.anthropic_index == index) else {
            return Err(upstream("content_block_stop for a block that is not open"));
        };
        let oi = self.output.len();
        let done = match item.kind {
            Kind::Text | Kind::JsonText => {
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": item.id, "output_index": oi, "content_index": 0, "text": item.text, "logprobs": []}),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({"item_id": item.id, "output_index": oi, "content_index": 0,
                           "part": {"type": "output_text", "text": item.text, "annotations": []}}),
                );
                message_item(&item.id, &item.text)
            }
            Kind::Thinking => {
                self.emit(
                    out,
                    "response.reasoning_summary_text.done",
                    json!({"item_id": item.id, "output_index": oi, "summary_index": 0, "text": item.text}),
                );
                self.emit(
                    out,
                    "response.reasoning_summary_part.done",
                    json!({"item_id": item.id, "output_index": oi, "summary_index": 0,
                           "part": {"type": "summary_text", "text": item.text}}),
                );
                reasoning_item(&item.id, &item.text)
            }
            Kind::Tool(_) => {
                // An argument-less call streams no fragment: its arguments are `{}`.
                let args = if item.text.is_empty() {
                    "{}"
                } else {
                    item.text.as_str()
                };
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": item.id, "output_index": oi, "arguments": args}),
                );
                call_item(&item.call_id, &item.name, args)
            }
            Kind::Skip => return Ok(()),
        };
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": oi, "item": done}),
        );
        self.output.push(done);
        Ok(())
    }

    fn event(&mut self, ev: sse::Event, out: &mut Vec<u8>) -> Result<()> {
        if self.done {
            return Ok(());
        }
        let v = data_json(&ev)?;
        let ty = str_of(&v, "type");
        if !self.started && !matches!(ty, "message_start" | "ping" | "error") {
            return Err(upstream(format!("`{ty}` before message_start")));
        }
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match ty {
            "message_start" => {
                let m = v.get("message").cloned().unwrap_or_default();
                self.id = response_id(str_of(&m, "id"));
                self.model = str_of(&m, "model").to_owned();
                if let Some(u) = m.get("usage") {
                    merge_anthropic_usage(&mut self.usage, u);
                }
                self.started = true;
                let r = response_object(&self.id, &self.model, self.ctx.created, None, vec![], None);
                self.emit(out, "response.created", json!({"response": r}));
                self.emit(out, "response.in_progress", json!({"response": r}));
            }
            "content_block_start" => {
                if self.item.is_some() {
                    return Err(upstream("a content block opened inside another"));
                }
                let b = v.get("content_block").cloned().unwrap_or_default();
                self.open_item(index, &b, out);
                let initial = self.item.as_ref().map_or(0, |i| i.text.len());
                self.keep(initial)?;
                if initial > 0 {
                    // A text block that starts with text: say it as a delta too.
                    let text = self.item.as_ref().map(|i| i.text.clone()).unwrap_or_default();
                    if let Some(i) = self.item.as_mut() {
                        i.text.clear();
                    }
                    self.delta(index, &json!({"type": "text_delta", "text": text}), out)?;
                }
            }
            "content_block_delta" => {
                let d = v.get("delta").cloned().unwrap_or_default();
                self.delta(index, &d, out)?;
            }
            "content_block_stop" => self.close_item(index, out)?,
            "message_delta" => {
                if let Some(s) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop = Some(s.to_owned());
                }
                if let Some(u) = v.get("usage") {
                    merge_anthropic_usage(&mut self.usage, u);
                }
            }
            "message_stop" => {
                let stop = self.stop.clone().unwrap_or_else(|| "end_turn".into());
                let output = std::mem::take(&mut self.output);
                let r = response_object(
                    &self.id,
                    &self.model,
                    self.ctx.created,
                    Some(&stop),
                    output,
                    Some(&self.usage),
                );
                let ty = if r["status"] == "incomplete" {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                self.emit(out, ty, json!({"response": r}));
                self.done = true;
            }
            "ping" => {}
            "error" => {
                let e = v.get("error").cloned().unwrap_or_default();
                let err =
                    json!({"code": str_of(&e, "type"), "message": str_of(&e, "message"), "param": null});
                self.emit(out, "error", err);
                self.done = true;
            }
            other => return Err(upstream(format!("unknown event `{other}`"))),
        }
        Ok(())
    }
}

impl Events for AnthropicToResponsesStream {
    fn reader(&mut self) -> &mut sse::Reader {
        &mut self.reader
    }
    fn on_event(&mut self, ev: sse::Event, out: &mut Vec<u8>) -> Result<()> {
        self.event(ev, out)
    }
}

impl StreamTranslator for AnthropicToResponsesStream {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
        drive(self, input, false, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        drive(self, &[], true, out)?;
        if self.done {
            Ok(())
        } else {
            Err(upstream("the stream ended before message_stop"))
        }
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}
