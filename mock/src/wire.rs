//! OpenAI and Anthropic wire formats: response bodies, SSE event sequences and error bodies.
//!
//! Non-stream bodies are pre-serialised per behaviour into a prefix and a suffix around the
//! model name, so the hot path is one buffer allocation and three copies.

use std::{
    borrow::Cow,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::behavior::{Behavior, JsonStyle, Usage};

/// Which API family a request belongs to; decides error bodies and formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

/// The few request fields the mock needs; everything else is skipped unparsed.
#[derive(Debug, Default, Deserialize)]
pub struct Peek<'a> {
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Responses API: the response this one continues.
    #[serde(borrow, default)]
    pub previous_response_id: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

impl Peek<'_> {
    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// Model name used when a request names none.
pub const NO_MODEL: &str = "mock-model";

/// A marker that never appears in JSON we generate except where we put it.
const PLACEHOLDER: &str = "\u{1}switchyard-mock-model\u{1}";

/// A serialised body split around the model name.
#[derive(Clone, Debug)]
pub struct Template {
    prefix: Bytes,
    suffix: Bytes,
}

impl Template {
    fn new(v: &Value, style: JsonStyle) -> Template {
        let s = styled(v, style, "\n  ");
        let marker = serde_json::to_string(PLACEHOLDER).unwrap_or_default();
        match s.rfind(&marker) {
            Some(i) => Template {
                prefix: Bytes::copy_from_slice(&s.as_bytes()[..i]),
                suffix: Bytes::copy_from_slice(&s.as_bytes()[i + marker.len()..]),
            },
            None => Template {
                prefix: Bytes::from(s),
                suffix: Bytes::new(),
            },
        }
    }

    /// The body with `model` (JSON-escaped) filled in.
    pub fn render(&self, model: &str) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.prefix.len() + self.suffix.len() + model.len() + 8);
        buf.put_slice(&self.prefix);
        write_json_str(&mut buf, model);
        buf.put_slice(&self.suffix);
        buf.freeze()
    }
}

fn write_json_str(buf: &mut BytesMut, s: &str) {
    // Model names are plain ASCII in practice; escape only when needed.
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        buf.put_u8(b'"');
        buf.put_slice(s.as_bytes());
        buf.put_u8(b'"');
    } else {
        let escaped = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string());
        buf.put_slice(escaped.as_bytes());
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn openai_usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

/// The Responses API's usage object (`response.usage`).
pub fn responses_usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// A Responses API response object (`POST /v1/responses`, `GET /v1/responses/{id}`, and
/// inside the `response.*` stream events). `done`: completed, with its output and usage;
/// else in progress, empty.
pub fn response_object(
    id: &str,
    model: &str,
    created: u64,
    reply: &str,
    usage: &Usage,
    previous: Option<&str>,
    done: bool,
) -> Value {
    let output = if done {
        json!([{
            "id": format!("msg_{}", id.trim_start_matches("resp_")),
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": reply, "annotations": []}],
        }])
    } else {
        json!([])
    };
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": if done { "completed" } else { "in_progress" },
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": previous,
        "reasoning": {"effort": null, "summary": null},
        "store": true,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": if done { responses_usage(usage) } else { Value::Null },
        "user": null,
        "metadata": {},
    })
}

/// The non-streamed answer of `POST /v1/responses`.
pub fn responses_body(prepared: &Prepared, id: &str, model: &str, previous: Option<&str>) -> Bytes {
    let b = &prepared.behavior;
    let v = response_object(id, model, prepared.created, &b.reply, &b.usage, previous, true);
    Bytes::from(styled(&v, b.json_style, " "))
}

fn anthropic_usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
    })
}

/// A behaviour with its non-stream bodies serialised ahead of time.
#[derive(Debug)]
pub struct Prepared {
    pub behavior: Behavior,
    pub created: u64,
    pub chat: Template,
    pub completion: Template,
    pub message: Template,
}

impl Prepared {
    pub fn new(behavior: Behavior) -> Prepared {
        let created = now_secs();
        let b = &behavior;
        let style = b.json_style;
        let chat = Template::new(
            &json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": created,
                "model": PLACEHOLDER,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": b.reply},
                    "finish_reason": "stop"
                }],
                "usage": openai_usage(&b.usage),
            }),
            style,
        );
        let completion = Template::new(
            &json!({
                "id": "cmpl-mock",
                "object": "text_completion",
                "created": created,
                "model": PLACEHOLDER,
                "choices": [{"text": b.reply, "index": 0, "logprobs": null, "finish_reason": "stop"}],
                "usage": openai_usage(&b.usage),
            }),
            style,
        );
        let message = Template::new(
            &json!({
                "id": "msg_mock",
                "type": "message",
                "role": "assistant",
                "model": PLACEHOLDER,
                "content": [{"type": "text", "text": b.reply}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": anthropic_usage(&b.usage),
            }),
            style,
        );
        Prepared {
            behavior,
            created,
            chat,
            completion,
            message,
        }
    }

    /// Piece `i` of the reply split into `stream_chunks` parts on char boundaries (some may be
    /// empty when the reply is shorter than the chunk count).
    fn piece(&self, i: usize) -> &str {
        let reply = self.behavior.reply.as_str();
        let n = self.behavior.stream_chunks.max(1);
        let len = reply.chars().count();
        let (from, to) = (i * len / n, (i + 1) * len / n);
        if reply.is_ascii() {
            return &reply[from..to];
        }
        let byte = |c: usize| reply.char_indices().nth(c).map_or(reply.len(), |(b, _)| b);
        &reply[byte(from)..byte(to)]
    }

    #[cfg(test)]
    fn pieces(&self) -> Vec<String> {
        (0..self.behavior.stream_chunks)
            .map(|i| self.piece(i).to_string())
            .collect()
    }
}

/// The SSE events of one streamed response, produced one at a time so that thousands of
/// long streams cost a few hundred bytes each, not their whole transcript.
#[derive(Debug)]
pub struct StreamEvents {
    prepared: Arc<Prepared>,
    kind: StreamKind,
    model: String,
    include_usage: bool,
    next: usize,
    /// A Responses stream: its response id and `previous_response_id`.
    response_id: String,
    previous: Option<String>,
}

/// What [`StreamEvents::next_event`] yields.
#[derive(Debug)]
pub struct Event {
    pub bytes: Bytes,
    /// Index of the content chunk (0-based) when this event carries content.
    pub content_index: Option<usize>,
    /// The event comes after all content (finish, usage, `[DONE]`, `message_stop`, ...).
    pub tail: bool,
}

impl StreamEvents {
    pub fn new(prepared: Arc<Prepared>, kind: StreamKind, model: &str, include_usage: bool) -> Self {
        StreamEvents {
            prepared,
            kind,
            model: model.to_string(),
            include_usage,
            next: 0,
            response_id: String::new(),
            previous: None,
        }
    }

    /// A Responses stream (`StreamKind::Responses`) for response `id`.
    pub fn responses(prepared: Arc<Prepared>, model: &str, id: String, previous: Option<String>) -> Self {
        let mut s = Self::new(prepared, StreamKind::Responses, model, false);
        s.response_id = id;
        s.previous = previous;
        s
    }

    fn response_event(&self, name: &str, seq: usize, mut v: Value) -> Bytes {
        v["type"] = json!(name);
        v["sequence_number"] = json!(seq);
        self.sse_event(name, &v)
    }

    fn response_obj(&self, done: bool) -> Value {
        let b = &self.prepared.behavior;
        response_object(
            &self.response_id,
            &self.model,
            self.prepared.created,
            &b.reply,
            &b.usage,
            self.previous.as_deref(),
            done,
        )
    }

    fn item_id(&self) -> String {
        format!("msg_{}", self.response_id.trim_start_matches("resp_"))
    }

    fn prelude_len(&self) -> usize {
        match self.kind {
            StreamKind::Chat => 1,
            StreamKind::Completion => 0,
            StreamKind::Messages => 3,
            StreamKind::Responses => 4,
        }
    }

    fn tail_len(&self) -> usize {
        match self.kind {
            StreamKind::Chat | StreamKind::Completion => 2 + usize::from(self.include_usage),
            StreamKind::Messages => 3,
            StreamKind::Responses => 4,
        }
    }

    fn chat_chunk(&self, delta: Value, finish: Value) -> Bytes {
        let mut v = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": self.prepared.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        self.sse_data(&v)
    }

    fn completion_chunk(&self, text: &str, finish: Value) -> Bytes {
        self.sse_data(&json!({
            "id": "cmpl-mock",
            "object": "text_completion",
            "created": self.prepared.created,
            "model": self.model,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
        }))
    }

    fn usage_chunk(&self, id: &str, object: &str) -> Bytes {
        self.sse_data(&json!({
            "id": id,
            "object": object,
            "created": self.prepared.created,
            "model": self.model,
            "choices": [],
            "usage": openai_usage(&self.prepared.behavior.usage),
        }))
    }

    fn prelude(&self, i: usize) -> Bytes {
        let u = &self.prepared.behavior.usage;
        match (self.kind, i) {
            (StreamKind::Chat, _) => {
                self.chat_chunk(json!({"role": "assistant", "content": ""}), Value::Null)
            }
            (StreamKind::Messages, 0) => self.sse_event(
                "message_start",
                &json!({
                    "type": "message_start",
                    "message": {
                        "id": "msg_mock",
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": null,
                        "stop_sequence": null,
                        "usage": {
                            "input_tokens": u.prompt_tokens,
                            "output_tokens": 1,
                            "cache_read_input_tokens": u.cached_tokens,
                            "cache_creation_input_tokens": u.cache_write_tokens,
                        },
                    },
                }),
            ),
            (StreamKind::Responses, 0) => {
                self.response_event("response.created", i, json!({"response": self.response_obj(false)}))
            }
            (StreamKind::Responses, 1) => {
                self.response_event("response.in_progress", i, json!({"response": self.response_obj(false)}))
            }
            (StreamKind::Responses, 2) => self.response_event(
                "response.output_item.added",
                i,
                json!({"output_index": 0, "item": {"id": self.item_id(), "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
            ),
            (StreamKind::Responses, _) => self.response_event(
                "response.content_part.added",
                i,
                json!({"item_id": self.item_id(), "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
            ),
            (StreamKind::Messages, 1) => self.sse_event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            _ => self.sse_event("ping", &json!({"type": "ping"})),
        }
    }

    fn content(&self, i: usize) -> Bytes {
        let piece = self.prepared.piece(i);
        match self.kind {
            StreamKind::Chat => self.chat_chunk(json!({"content": piece}), Value::Null),
            StreamKind::Completion => self.completion_chunk(piece, Value::Null),
            StreamKind::Messages => self.sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
            ),
            StreamKind::Responses => self.response_event(
                "response.output_text.delta",
                self.prelude_len() + i,
                json!({"item_id": self.item_id(), "output_index": 0, "content_index": 0, "delta": piece}),
            ),
        }
    }

    fn tail(&self, i: usize) -> Bytes {
        let done = || Bytes::from_static(b"data: [DONE]\n\n");
        match (self.kind, i, self.include_usage) {
            (StreamKind::Chat, 0, _) => self.chat_chunk(json!({}), json!("stop")),
            (StreamKind::Chat, 1, true) => self.usage_chunk("chatcmpl-mock", "chat.completion.chunk"),
            (StreamKind::Completion, 0, _) => self.completion_chunk("", json!("stop")),
            (StreamKind::Completion, 1, true) => self.usage_chunk("cmpl-mock", "text_completion"),
            (StreamKind::Chat | StreamKind::Completion, _, _) => done(),
            (StreamKind::Messages, 0, _) => self.sse_event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": 0}),
            ),
            (StreamKind::Messages, 1, _) => self.sse_event(
                "message_delta",
                &json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": {"output_tokens": self.prepared.behavior.usage.completion_tokens},
                }),
            ),
            (StreamKind::Messages, _, _) => self.sse_event("message_stop", &json!({"type": "message_stop"})),
            (StreamKind::Responses, t, _) => {
                let seq = self.prelude_len() + self.prepared.behavior.stream_chunks + t;
                let reply = &self.prepared.behavior.reply;
                match t {
                    0 => self.response_event(
                        "response.output_text.done",
                        seq,
                        json!({"item_id": self.item_id(), "output_index": 0, "content_index": 0, "text": reply}),
                    ),
                    1 => self.response_event(
                        "response.content_part.done",
                        seq,
                        json!({"item_id": self.item_id(), "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": reply, "annotations": []}}),
                    ),
                    2 => self.response_event(
                        "response.output_item.done",
                        seq,
                        json!({"output_index": 0, "item": self.response_obj(true)["output"][0].clone()}),
                    ),
                    _ => self.response_event("response.completed", seq, json!({"response": self.response_obj(true)})),
                }
            }
        }
    }

    fn sse_data(&self, v: &Value) -> Bytes {
        Bytes::from(format!(
            "data: {}\n\n",
            styled(v, self.prepared.behavior.json_style, " ")
        ))
    }

    fn sse_event(&self, name: &str, v: &Value) -> Bytes {
        let v = styled(v, self.prepared.behavior.json_style, " ");
        Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
    }

    /// The next event, or `None` after the last one.
    pub fn next_event(&mut self) -> Option<Event> {
        let i = self.next;
        let (p, n) = (self.prelude_len(), self.prepared.behavior.stream_chunks);
        if i >= p + n + self.tail_len() {
            return None;
        }
        self.next += 1;
        Some(if i < p {
            Event {
                bytes: self.prelude(i),
                content_index: None,
                tail: false,
            }
        } else if i < p + n {
            Event {
                bytes: self.content(i - p),
                content_index: Some(i - p),
                tail: false,
            }
        } else {
            Event {
                bytes: self.tail(i - p - n),
                content_index: None,
                tail: true,
            }
        })
    }
}

/// The arguments of every tool call the mock makes.
pub const TOOL_ARGUMENTS: &str = r#"{"location":"Paris"}"#;

/// The tool the mock calls for a Chat Completions or Messages request: the first of its
/// `tools`, unless its last message already carries a tool result (then it answers with
/// text, as a model would after a tool ran). Requests without `"tools"` are not parsed.
pub fn tool_to_call(body: &[u8]) -> Option<String> {
    body.windows(7).position(|w| w == b"\"tools\"")?;
    let v: Value = serde_json::from_slice(body).ok()?;
    let t = v.get("tools")?.as_array()?.first()?;
    let name = t
        .get("function")
        .and_then(|f| f.get("name"))
        .or_else(|| t.get("name"))?
        .as_str()?;
    let last = v.get("messages")?.as_array()?.last()?;
    let answered = last["role"] == "tool"
        || last["content"]
            .as_array()
            .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"));
    (!answered).then(|| name.to_string())
}

/// A tool call of `name` with [`TOOL_ARGUMENTS`]: a complete answer, or (`stream`) the
/// whole SSE transcript, whose arguments come in two deltas.
pub fn tool_call_body(
    dialect: Dialect,
    stream: bool,
    include_usage: bool,
    name: &str,
    model: &str,
    u: &Usage,
) -> Bytes {
    let created = now_secs();
    let (a1, a2) = TOOL_ARGUMENTS.split_at(12);
    let data = |v: Value| format!("data: {v}\n\n");
    let event = |n: &str, v: Value| format!("event: {n}\ndata: {v}\n\n");
    let out = match (dialect, stream) {
        (Dialect::OpenAi, false) => json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [{"id": "call_mock", "type": "function",
                    "function": {"name": name, "arguments": TOOL_ARGUMENTS}}]}}],
            "usage": openai_usage(u),
        })
        .to_string(),
        (Dialect::OpenAi, true) => {
            let chunk = |delta: Value, finish: Value| {
                data(
                    json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
                )
            };
            let mut s = chunk(json!({"role": "assistant", "content": null}), Value::Null);
            s += &chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_mock", "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            );
            for a in [a1, a2] {
                s += &chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}),
                    Value::Null,
                );
            }
            s += &chunk(json!({}), json!("tool_calls"));
            if include_usage {
                s += &data(
                    json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [], "usage": openai_usage(u)}),
                );
            }
            s + "data: [DONE]\n\n"
        }
        (Dialect::Anthropic, false) => json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "tool_use", "id": "toolu_mock", "name": name,
                "input": serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap_or_default()}],
            "stop_reason": "tool_use", "stop_sequence": null, "usage": anthropic_usage(u),
        })
        .to_string(),
        (Dialect::Anthropic, true) => {
            let mut usage = anthropic_usage(u);
            usage["output_tokens"] = json!(1);
            let mut s = event(
                "message_start",
                json!({"type": "message_start", "message": {
                "id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": usage}}),
            );
            s += &event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_mock", "name": name, "input": {}}}),
            );
            for a in [a1, a2] {
                s += &event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": a}}),
                );
            }
            s += &event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            );
            s += &event(
                "message_delta",
                json!({"type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": u.completion_tokens}}),
            );
            s + &event("message_stop", json!({"type": "message_stop"}))
        }
    };
    Bytes::from(out)
}

/// Which streamed format to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Chat,
    Completion,
    Messages,
    /// The Responses API's `response.*` events.
    Responses,
}

/// `v` serialised in `style`; `ws` is the white space put around tokens when spaced.
fn styled(v: &Value, style: JsonStyle, ws: &str) -> String {
    if style == JsonStyle::Compact {
        return v.to_string();
    }
    let mut out = String::new();
    write_styled(&mut out, v, style == JsonStyle::Hostile, ws, true);
    out
}

fn write_styled(out: &mut String, v: &Value, hostile: bool, ws: &str, top: bool) {
    match v {
        Value::Object(m) => {
            let mut members: Vec<(&String, &Value)> = m.iter().collect();
            if hostile && top {
                // `usage` first: a reader that expects it last must still find it.
                members.sort_by_key(|(k, _)| k.as_str() != "usage");
            }
            out.push('{');
            for (i, (k, v)) in members.iter().enumerate() {
                out.push_str(ws);
                if i > 0 {
                    out.push(',');
                    out.push_str(ws);
                }
                match k.as_str() {
                    "usage" if hostile => out.push_str("\"usag\\u0065\""),
                    "choices" if hostile => out.push_str("\"\\u0063hoices\""),
                    _ => out.push_str(&Value::String((*k).clone()).to_string()),
                }
                out.push_str(ws);
                out.push(':');
                out.push_str(ws);
                write_styled(out, v, hostile, ws, false);
            }
            out.push_str(ws);
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                out.push_str(ws);
                if i > 0 {
                    out.push(',');
                    out.push_str(ws);
                }
                write_styled(out, v, hostile, ws, false);
            }
            out.push_str(ws);
            out.push(']');
        }
        v => out.push_str(&v.to_string()),
    }
}

pub fn error_body(dialect: Dialect, status: u16, message: &str) -> Bytes {
    let v = match dialect {
        Dialect::OpenAi => {
            let (ty, code) = match status {
                400 => ("invalid_request_error", Value::Null),
                401 => ("invalid_request_error", json!("invalid_api_key")),
                403 => ("permission_error", Value::Null),
                404 => ("invalid_request_error", json!("not_found")),
                429 => ("rate_limit_error", json!("rate_limit_exceeded")),
                500..=599 => ("server_error", Value::Null),
                _ => ("invalid_request_error", Value::Null),
            };
            json!({"error": {"message": message, "type": ty, "param": null, "code": code}})
        }
        Dialect::Anthropic => {
            let ty = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                503 | 529 => "overloaded_error",
                500..=599 => "api_error",
                _ => "invalid_request_error",
            };
            json!({"type": "error", "error": {"type": ty, "message": message}})
        }
    };
    Bytes::from(v.to_string())
}

/// The `GET /v1/models` body; Anthropic's shape when the request carries `anthropic-version`.
pub fn models_body(dialect: Dialect, models: &[String], created: u64) -> Bytes {
    let v = match dialect {
        Dialect::OpenAi => json!({
            "object": "list",
            "data": models.iter().map(|m| json!({
                "id": m, "object": "model", "created": created, "owned_by": "switchyard-mock"
            })).collect::<Vec<_>>(),
        }),
        Dialect::Anthropic => json!({
            "data": models.iter().map(|m| json!({
                "type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"
            })).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": models.first(),
            "last_id": models.last(),
        }),
    };
    Bytes::from(v.to_string())
}

/// The `POST /v1/embeddings` body: one small vector per input.
pub fn embeddings_body(body: &[u8], model: &str, usage: &Usage) -> Bytes {
    let inputs = match serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("input").cloned())
    {
        Some(Value::Array(a)) if !a.is_empty() && !a[0].is_number() => a.len(),
        _ => 1,
    };
    let data: Vec<Value> = (0..inputs)
        .map(|i| {
            let f = i as f64;
            json!({"object": "embedding", "index": i, "embedding": [0.1 + f, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8]})
        })
        .collect();
    Bytes::from(
        json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
        })
        .to_string(),
    )
}

/// `POST /v1/messages/count_tokens`.
pub fn count_tokens_body(usage: &Usage) -> Bytes {
    Bytes::from(json!({"input_tokens": usage.prompt_tokens}).to_string())
}

/// Any other `POST /v1/*`: says what it saw.
pub fn echo_body(path: &str, model: &str) -> Bytes {
    Bytes::from(json!({"object": "mock.echo", "path": path, "model": model}).to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn template_renders_valid_json_with_the_model() {
        let p = Prepared::new(Behavior::default());
        let body = p.chat.render("gpt-4o");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            crate::behavior::DEFAULT_REPLY
        );
        let weird = "a\"b\\c\u{7}";
        let v: Value = serde_json::from_slice(&p.message.render(weird)).unwrap();
        assert_eq!(v["model"], weird);
    }

    #[test]
    fn default_chat_body_is_about_650_bytes() {
        let p = Prepared::new(Behavior::default());
        let n = p.chat.render("gpt-4o-mini").len();
        assert!((550..=750).contains(&n), "default body is {n} bytes");
    }

    #[test]
    fn pieces_reassemble_the_reply() {
        for n in [1, 3, 5, 20, 500] {
            let p = Prepared::new(Behavior {
                stream_chunks: n,
                ..Behavior::default()
            });
            let pieces = p.pieces();
            assert_eq!(pieces.len(), n);
            assert_eq!(pieces.concat(), crate::behavior::DEFAULT_REPLY);
        }
    }

    #[test]
    fn stream_events_have_the_documented_shape() {
        let p = Arc::new(Prepared::new(Behavior {
            stream_chunks: 4,
            ..Behavior::default()
        }));
        let collect = |kind, usage| {
            let mut e = StreamEvents::new(p.clone(), kind, "m", usage);
            std::iter::from_fn(|| e.next_event()).collect::<Vec<_>>()
        };
        // role + 4 + finish + [DONE] (+ usage)
        assert_eq!(collect(StreamKind::Chat, false).len(), 7);
        assert_eq!(collect(StreamKind::Chat, true).len(), 8);
        assert_eq!(collect(StreamKind::Completion, false).len(), 6);
        let msgs = collect(StreamKind::Messages, false);
        assert_eq!(msgs.len(), 10);
        let contents: Vec<usize> = msgs.iter().filter_map(|e| e.content_index).collect();
        assert_eq!(contents, [0, 1, 2, 3]);
        assert!(msgs[7..].iter().all(|e| e.tail));
        assert!(msgs[0].bytes.starts_with(b"event: message_start\ndata: {"));
    }

    #[test]
    fn non_ascii_replies_split_on_char_boundaries() {
        let p = Prepared::new(Behavior {
            stream_chunks: 3,
            reply: "héllo wörld ✓".into(),
            ..Behavior::default()
        });
        assert_eq!(p.pieces().concat(), "héllo wörld ✓");
    }

    #[test]
    fn the_first_tool_is_called_until_a_result_comes_back() {
        let chat = br#"{"tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":"x"}]}"#;
        assert_eq!(tool_to_call(chat).as_deref(), Some("f"));
        let done = br#"{"tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"tool","content":"x"}]}"#;
        assert_eq!(tool_to_call(done), None);
        let msgs =
            br#"{"tools":[{"name":"g"}],"messages":[{"role":"user","content":[{"type":"tool_result"}]}]}"#;
        assert_eq!(tool_to_call(msgs), None);
        assert_eq!(tool_to_call(br#"{"messages":[]}"#), None);
        let u = Usage::default();
        let v: Value =
            serde_json::from_slice(&tool_call_body(Dialect::OpenAi, false, false, "f", "m", &u)).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            TOOL_ARGUMENTS
        );
        let v: Value =
            serde_json::from_slice(&tool_call_body(Dialect::Anthropic, false, false, "g", "m", &u)).unwrap();
        assert_eq!(v["content"][0]["input"]["location"], "Paris");
        // Streamed: the argument deltas add up to the arguments.
        let s = tool_call_body(Dialect::OpenAi, true, true, "f", "m", &u);
        let args: String = String::from_utf8_lossy(&s)
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .map(String::from)
            })
            .collect();
        assert_eq!(args, TOOL_ARGUMENTS);
        assert!(String::from_utf8_lossy(&s).ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn peek_reads_model_and_stream_only() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"x\""}],"model":"m\u0041","stream":true,"stream_options":{"include_usage":true}}"#;
        let p: Peek = serde_json::from_slice(body).unwrap();
        assert_eq!(p.model.as_deref(), Some("mA"));
        assert!(p.stream);
        assert!(p.include_usage());
    }
}
