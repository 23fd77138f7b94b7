//! Pure translators between the OpenAI and Anthropic dialects: requests, complete
//! responses, error bodies and SSE streams. Wired into the request path by
//! `proxy::translate` (issue 17 §3): when the client's dialect differs from the picked
//! backend's kind, the route phase translates the request, the upstream-request phase
//! sends it, and the answer comes back through [`Pair::answer`] (complete), a
//! [`StreamTranslator`] (`relay::Transform::Translate`) or [`Pair::error`].
//!
//! Everything here is a function of its input (the clock comes in through
//! [`TranslateOptions::now_unix`]); nothing does I/O. Translation runs once per translated
//! request, off the passthrough path, so bodies are parsed into `serde_json::Value`
//! (its recursion limit of 128 bounds nesting). Stream translators keep one SSE event
//! at most ([`MAX_EVENT_BYTES`]) and never the whole answer, except the Responses one,
//! whose protocol repeats every item in its `*.done` events and in `response.completed`
//! (bounded by [`MAX_RESPONSES_OUTPUT_BYTES`]).
//!
//! # Requests
//! | OpenAI Chat Completions | Anthropic Messages |
//! |---|---|
//! | `system`/`developer` messages (string or text parts), in order | `system` (a string, or text blocks when several); their position among the turns is lost |
//! | `user` content string / `text` parts | string / `text` blocks |
//! | `image_url` `data:<type>;base64,<data>` / `http(s)://` | `image` with `source` `base64` / `url` |
//! | assistant `content` + `tool_calls` (`arguments` a JSON object text; `""` is `{}`) | `text` then `tool_use` blocks (`input` object) |
//! | consecutive `tool` messages (and a `user` message right after them) | one `user` turn: `tool_result` blocks (then the user's blocks) |
//! | `tools[].function` `{name, description, parameters}` | `tools[]` `{name, description, input_schema}` |
//! | `tool_choice` `auto`/`none`/`required`/`{function:{name}}` | `{type:auto}`/`{type:none}`/`{type:any}`/`{type:tool,name}` |
//! | `parallel_tool_calls: false` | `tool_choice.disable_parallel_tool_use: true` |
//! | `max_completion_tokens` or `max_tokens` (not both), else [`TranslateOptions::default_max_tokens`] | `max_tokens` (required) |
//! | `temperature` (0..=1 only), `top_p`, `stop` (string or array) | `temperature`, `top_p`, `stop_sequences` |
//! | `stream`, `stream_options.include_usage` | `stream`; `include_usage` goes to [`ResponseContext`] |
//! | `user` (or `safety_identifier`) | `metadata.user_id` |
//! | `reasoning_effort` `minimal`/`low`/`medium`/`high` (`none`: off) | `thinking {type: enabled, budget_tokens}` 1024/2048/8192/24576, at most `max_tokens - 1` |
//! | `response_format` `json_schema` / `json_object` | a forced tool (see below) |
//!
//! Anthropic → OpenAI (for an Anthropic client on an OpenAI-kind backend) is the reverse,
//! plus: `thinking.budget_tokens` < 4096 → `low`, < 16384 → `medium`, else `high`;
//! `thinking {type: adaptive}` (the model decides) → no `reasoning_effort` (the backend's
//! default); `output_config.effort` `low`/`medium`/`high` → that `reasoning_effort`
//! (`max` → `high`; it wins over a budget's), other `output_config` members refused;
//! `stream: true` adds `stream_options.include_usage: true` (so usage can be read);
//! `tool_result.is_error: true` prefixes the result with `Error: ` (OpenAI has no flag);
//! images in a `tool_result` (OpenAI tool messages carry text only) go, after the turn's
//! tool messages, at the head of the user message that carries the turn's other blocks;
//! several system blocks become one system message of text parts;
//! `max_tokens` becomes `max_tokens` or `max_completion_tokens`
//! ([`TranslateOptions::max_completion_tokens`]).
//!
//! An Anthropic request whose last turn is the assistant's (prefill: Anthropic continues
//! it) is refused, since OpenAI would answer it anew; the reverse (an OpenAI request ending
//! with an assistant message) is sent as is, and Anthropic continues that message.
//!
//! OpenAI Responses → Anthropic: `instructions` and system/developer items → `system`;
//! `input` string or items (`message` with `input_text`/`input_image`/`output_text`,
//! `function_call` → `tool_use`, `function_call_output` → `tool_result`); function tools;
//! `tool_choice`; `max_output_tokens`; `reasoning.effort`; `text.format` as above.
//!
//! **JSON mode.** Anthropic has no JSON mode, so `response_format` (`text.format`)
//! `json_schema` becomes a tool named after the schema whose `input_schema` is the schema
//! (`json_object`: a tool `json_response` taking any object) and `tool_choice` forces it.
//! The response side turns that tool's call back into the message text (the `input` JSON)
//! and `tool_use` into `stop`. Combined with `tools` it is refused (forcing the JSON tool
//! would forbid the client's tools), as is a schema whose top level is not an object.
//!
//! **Thinking.** `reasoning_effort` and `thinking` map onto each other by budget (table
//! above). Thinking with JSON mode is refused (Anthropic refuses a forced tool while
//! thinking). Known limit: with thinking on, Anthropic wants the signed thinking blocks of
//! the last assistant turn back when that turn used tools; an OpenAI client has none to
//! send, so such a request fails upstream (its error is mapped to the client's dialect).
//! Anthropic's own rules on `temperature`/`top_p` with thinking are likewise left to it.
//!
//! **Dropped, documented as harmless** (hints that change nothing the client can observe
//! in the answer's shape): Anthropic `cache_control` markers (prompt-cache hints; OpenAI
//! caches by itself), `thinking`/`redacted_thinking` blocks sent back in assistant turns
//! (OpenAI cannot take signed reasoning back), OpenAI `reasoning_content` on assistant
//! messages and Responses `reasoning` input items (the same, reversed), `image_url.detail`,
//! `tools[].function.strict` and Responses tools' `strict`, `prompt_cache_key`,
//! `stream_options.include_obfuscation`, `service_tier` `auto`/`default`, `n: 1`,
//! Anthropic `context_management` whose edits are all `clear_thinking_*` (they clear
//! earlier thinking blocks, which translation drops anyway; Claude Code sends one),
//! `logprobs: false`, zero penalties, empty `logit_bias`/`metadata`, `modalities: ["text"]`,
//! `store: false`, `parallel_tool_calls` without tools, an empty `stop`; in Responses
//! requests also `store` (nothing is stored, so a later
//! `previous_response_id` is refused), `include: ["reasoning.encrypted_content"]` (no
//! encrypted reasoning is produced), `reasoning.summary`, `truncation: "disabled"`,
//! `background: false`, `text.verbosity: "medium"`, and `id`/`status` of echoed items and
//! `annotations` of echoed `output_text`.
//!
//! **Refused** (a [`TranslateError::Unsupported`] naming the field; the caller answers 400
//! `invalid_request_error` with `param`): `n` > 1, `logprobs`, `top_logprobs`,
//! `logit_bias`, non-zero `presence_penalty`/`frequency_penalty`, `seed`, `audio`,
//! `modalities` other than text, `prediction`, `web_search_options`, `functions` /
//! `function_call`, `store: true`, `metadata` (OpenAI's), `verbosity`, `temperature` > 1
//! for Anthropic, `input_audio`/`file` parts, a message `name`, non-function tools, `top_k`,
//! Anthropic server tools, `document`/`search_result` blocks, `container`, `mcp_servers`,
//! `context_management` edits other than `clear_thinking_*`,
//! `previous_response_id`, `conversation`, `background: true`, built-in Responses tools
//! (`web_search`, `file_search`, ...), `item_reference` items; and any field not listed
//! here (never silently dropped).
//!
//! # Responses
//! Anthropic `message` → `chat.completion`: text blocks joined into `content`, `tool_use`
//! → `tool_calls` (`arguments` the `input` as JSON text), `thinking` → the message's
//! `reasoning_content` (the DeepSeek/vLLM convention; the OpenAI SDKs keep unknown
//! fields), `stop_reason` `end_turn`/`stop_sequence`/`pause_turn` → `stop`, `max_tokens`
//! → `length`, `tool_use` → `tool_calls`, `refusal` → `content_filter`; usage:
//! `prompt_tokens` = input + cache read + cache write, `prompt_tokens_details.cached_tokens`
//! = cache read. `chat.completion` → `message` is the reverse (input = prompt − cached;
//! `stop` is `end_turn`, since OpenAI does not say whether a stop sequence matched, and
//! `reasoning_content`/`reasoning` becomes a thinking block with an empty signature;
//! a `stop` with tool calls, which some OpenAI-compatible servers send, is `tool_use`).
//! Anthropic `message` → Responses `response`: a `message` item per text block, a
//! `function_call` item per `tool_use` (`id` `fc_<tool id>`, `call_id` the tool id), a
//! `reasoning` item (summary text) per thinking block; `max_tokens` → status
//! `incomplete`. Answer blocks a translated request cannot ask for (server tools' blocks,
//! `redacted_thinking`) are skipped, by the complete and the stream translators alike.
//! Error bodies: [`error_to_openai`], [`error_to_anthropic`] (status kept, type by status).
//!
//! # Wiring
//! [`Pair::new`] says whether a client's API on a backend's kind needs translation, and
//! its methods pick the request, answer, error and stream translators; the
//! upstream-request phase also sets the headers (e.g. [`ANTHROPIC_VERSION`]).
//!
//! # Streams
//! [`AnthropicToChatStream`], [`ChatToAnthropicStream`], [`AnthropicToResponsesStream`]:
//! event-by-event state machines over arbitrarily cut reads; see each type.
mod request;
mod response;
mod sse;
mod stream;
#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

pub use crate::errors::Dialect;
pub use request::{chat_to_messages, messages_to_chat, responses_to_messages};
pub use response::{
    chat_to_message, error_to_anthropic, error_to_openai, message_to_chat, message_to_responses,
};
pub use sse::MAX_EVENT_BYTES;
pub use stream::{
    AnthropicToChatStream, AnthropicToResponsesStream, ChatToAnthropicStream, StreamTranslator,
    MAX_RESPONSES_OUTPUT_BYTES,
};

/// The API a client called (decided by its path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientApi {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/responses`
    Responses,
    /// `POST /v1/messages`
    Messages,
}

/// A translation the worker can make: a client's API onto a backend of the other kind.
/// One value picks every translator a request needs, so the proxy's phases carry it in
/// their context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    /// An OpenAI Chat Completions client on an Anthropic backend.
    ChatOnAnthropic,
    /// An OpenAI Responses client on an Anthropic backend.
    ResponsesOnAnthropic,
    /// An Anthropic Messages client on an OpenAI-kind backend.
    MessagesOnOpenAi,
}

impl Pair {
    /// The translation `client` needs on an Anthropic (`backend_anthropic`) or OpenAI-kind
    /// backend: `None` when the dialects match (passthrough), or for a Responses client
    /// on an OpenAI-kind backend (also passthrough).
    pub fn new(client: ClientApi, backend_anthropic: bool) -> Option<Self> {
        match (client, backend_anthropic) {
            (ClientApi::ChatCompletions, true) => Some(Self::ChatOnAnthropic),
            (ClientApi::Responses, true) => Some(Self::ResponsesOnAnthropic),
            (ClientApi::Messages, false) => Some(Self::MessagesOnOpenAi),
            _ => None,
        }
    }

    /// The dialect of the client's error bodies.
    pub fn client_dialect(self) -> Dialect {
        match self {
            Self::ChatOnAnthropic | Self::ResponsesOnAnthropic => Dialect::OpenAi,
            Self::MessagesOnOpenAi => Dialect::Anthropic,
        }
    }

    /// The request body for the backend, its path, and the context for the answer.
    pub fn request(self, body: &[u8], opts: &TranslateOptions) -> Result<Translated> {
        match self {
            Self::ChatOnAnthropic => chat_to_messages(body, opts),
            Self::ResponsesOnAnthropic => responses_to_messages(body, opts),
            Self::MessagesOnOpenAi => messages_to_chat(body, opts),
        }
    }

    /// A complete (non-streamed, 2xx) answer for the client, and the usage it reported.
    pub fn answer(self, body: &[u8], ctx: &ResponseContext) -> Result<(Vec<u8>, Usage)> {
        match self {
            Self::ChatOnAnthropic => message_to_chat(body, ctx),
            Self::ResponsesOnAnthropic => message_to_responses(body, ctx),
            Self::MessagesOnOpenAi => chat_to_message(body, ctx),
        }
    }

    /// An upstream error answer (status kept) for the client.
    pub fn error(self, status: u16, body: &[u8]) -> Vec<u8> {
        match self {
            Self::ChatOnAnthropic | Self::ResponsesOnAnthropic => error_to_openai(status, body),
            Self::MessagesOnOpenAi => error_to_anthropic(status, body),
        }
    }

    /// The translator for a streamed (2xx SSE) answer.
    pub fn stream(self, ctx: ResponseContext) -> Box<dyn StreamTranslator> {
        match self {
            Self::ChatOnAnthropic => Box::new(AnthropicToChatStream::new(ctx)),
            Self::ResponsesOnAnthropic => Box::new(AnthropicToResponsesStream::new(ctx)),
            Self::MessagesOnOpenAi => Box::new(ChatToAnthropicStream::new(ctx)),
        }
    }
}

/// The `anthropic-version` header value the upstream-request phase sends with a
/// translated request to an Anthropic backend (translation writes bodies only).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Choices the caller makes per backend or model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateOptions {
    /// `max_tokens` for an Anthropic request whose OpenAI client set no limit (Anthropic
    /// requires one); from the model's settings.
    pub default_max_tokens: u64,
    /// Write an Anthropic client's `max_tokens` as `max_completion_tokens` (what OpenAI's
    /// reasoning models require) rather than `max_tokens` (what most OpenAI-compatible
    /// servers read).
    pub max_completion_tokens: bool,
    /// Unix seconds, for the `created` fields the translated answers carry.
    pub now_unix: u64,
    /// The backend's name for the model, written into the translated request in place of
    /// the client's (`None`: the client's stays).
    pub model: Option<String>,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self {
            default_max_tokens: 4096,
            max_completion_tokens: false,
            now_unix: 0,
            model: None,
        }
    }
}

/// What the answer's translation needs to know about the request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseContext {
    /// The request asked for a stream.
    pub stream: bool,
    /// An OpenAI client asked for a final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The name of the forced tool that carries a JSON-mode answer (see the module docs).
    pub json_tool: Option<String>,
    /// Unix seconds for `created`/`created_at`.
    pub created: u64,
}

/// A translated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// The JSON body for the backend.
    pub body: Vec<u8>,
    /// The backend's path for it: `/v1/messages` or `/v1/chat/completions`.
    pub path: &'static str,
    /// Carry this to the answer's translator.
    pub ctx: ResponseContext,
}

/// Token counts a translator saw, in Anthropic's terms: `input` excludes cache reads
/// and writes (OpenAI's `prompt_tokens` is the sum of the three).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

impl Usage {
    /// All prompt tokens: OpenAI's `prompt_tokens`.
    pub fn prompt(&self) -> u64 {
        self.input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write)
    }

    /// The accounting record's form (as `account` reads an upstream's own usage).
    pub fn to_account(&self) -> crate::account::Usage {
        crate::account::Usage {
            prompt_tokens: self.prompt(),
            completion_tokens: self.output,
            total_tokens: self.prompt().saturating_add(self.output),
            cached_tokens: self.cache_read,
            reasoning_tokens: self.reasoning,
            cache_write_tokens: self.cache_write,
        }
    }
}

/// Why a body could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The client's body is not JSON (400).
    #[error("the request body is not valid JSON: {0}")]
    Json(String),
    /// The client's body is malformed at `param` (400).
    #[error("invalid `{param}`: {message}")]
    Invalid { param: String, message: String },
    /// `param` cannot be expressed in the backend's dialect (400).
    #[error("`{param}` is not supported for this model's backend: {message}")]
    Unsupported { param: String, message: String },
    /// The upstream's answer could not be translated (502).
    #[error("the upstream's answer could not be translated: {0}")]
    Upstream(String),
}

impl TranslateError {
    /// The request field the error is about, for the error body's `param`.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::Invalid { param, .. } | Self::Unsupported { param, .. } => Some(param),
            _ => None,
        }
    }

    /// 400 for the client's request, 502 for the upstream's answer.
    pub fn status(&self) -> u16 {
        match self {
            Self::Upstream(_) => 502,
            _ => 400,
        }
    }

    /// The error body in the client's dialect.
    pub fn body(&self, dialect: Dialect) -> Vec<u8> {
        let client = self.status() == 400;
        let v = match dialect {
            Dialect::OpenAi => serde_json::json!({"error": {
                "message": self.to_string(),
                "type": if client { "invalid_request_error" } else { "upstream_error" },
                "param": self.param(),
                "code": Value::Null,
            }}),
            Dialect::Anthropic => serde_json::json!({"type": "error", "error": {
                "type": if client { "invalid_request_error" } else { "api_error" },
                "message": self.to_string(),
            }}),
        };
        v.to_string().into_bytes()
    }
}

type Obj = Map<String, Value>;
type Result<T, E = TranslateError> = std::result::Result<T, E>;

fn invalid(param: impl Into<String>, message: impl Into<String>) -> TranslateError {
    TranslateError::Invalid {
        param: param.into(),
        message: message.into(),
    }
}

fn unsupported(param: impl Into<String>, message: impl Into<String>) -> TranslateError {
    TranslateError::Unsupported {
        param: param.into(),
        message: message.into(),
    }
}

fn upstream(message: impl Into<String>) -> TranslateError {
    TranslateError::Upstream(message.into())
}

/// `prefix.key`, or `key` at the top level.
fn path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Removes `key`; an explicit `null` counts as absent (clients send both).
fn take(m: &mut Obj, key: &str) -> Option<Value> {
    m.remove(key).filter(|v| !v.is_null())
}

fn take_required(m: &mut Obj, prefix: &str, key: &str) -> Result<Value> {
    take(m, key).ok_or_else(|| invalid(path(prefix, key), "required"))
}

/// Refuses whatever `m` still holds: every known member was taken before.
fn reject_rest(m: &Obj, prefix: &str) -> Result<()> {
    match m.keys().next() {
        Some(k) => Err(unsupported(
            path(prefix, k),
            "unknown field, or one that cannot be translated",
        )),
        None => Ok(()),
    }
}

fn as_object(v: Value, param: &str) -> Result<Obj> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(invalid(param, "expected an object")),
    }
}

fn as_array(v: Value, param: &str) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        _ => Err(invalid(param, "expected an array")),
    }
}

fn as_string(v: Value, param: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(invalid(param, "expected a string")),
    }
}

fn as_bool(v: &Value, param: &str) -> Result<bool> {
    v.as_bool().ok_or_else(|| invalid(param, "expected a boolean"))
}

fn as_u64(v: &Value, param: &str) -> Result<u64> {
    v.as_u64()
        .ok_or_else(|| invalid(param, "expected a non-negative integer"))
}

fn as_number(v: Value, param: &str) -> Result<Value> {
    if v.is_number() {
        Ok(v)
    } else {
        Err(invalid(param, "expected a number"))
    }
}

/// Parses a client's request body into its top-level object.
fn parse_request(body: &[u8]) -> Result<Obj> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(TranslateError::Json("the body must be a JSON object".into())),
        Err(e) => Err(TranslateError::Json(e.to_string())),
    }
}

/// Parses an upstream's answer into its top-level object.
fn parse_answer(body: &[u8]) -> Result<Obj> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(upstream("the body is not a JSON object")),
        Err(e) => Err(upstream(format!("invalid JSON: {e}"))),
    }
}

fn u64_at(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Anthropic's `usage` object.
fn usage_from_anthropic(u: &Value) -> Usage {
    Usage {
        input: u64_at(u, "input_tokens"),
        output: u64_at(u, "output_tokens"),
        cache_read: u64_at(u, "cache_read_input_tokens"),
        cache_write: u64_at(u, "cache_creation_input_tokens"),
        reasoning: 0,
    }
}

/// OpenAI's Chat Completions `usage` object.
fn usage_from_openai(u: &Value) -> Usage {
    let cached = u
        .get("prompt_tokens_details")
        .map_or(0, |d| u64_at(d, "cached_tokens"));
    Usage {
        input: u64_at(u, "prompt_tokens").saturating_sub(cached),
        output: u64_at(u, "completion_tokens"),
        cache_read: cached,
        cache_write: 0,
        reasoning: u
            .get("completion_tokens_details")
            .map_or(0, |d| u64_at(d, "reasoning_tokens")),
    }
}

fn usage_to_openai(u: &Usage) -> Value {
    let mut v = serde_json::json!({
        "prompt_tokens": u.prompt(),
        "completion_tokens": u.output,
        "total_tokens": u.prompt().saturating_add(u.output),
        "prompt_tokens_details": {"cached_tokens": u.cache_read},
    });
    if u.reasoning > 0 {
        v["completion_tokens_details"] = serde_json::json!({"reasoning_tokens": u.reasoning});
    }
    v
}

fn usage_to_anthropic(u: &Usage) -> Value {
    serde_json::json!({
        "input_tokens": u.input,
        "output_tokens": u.output,
        "cache_read_input_tokens": u.cache_read,
        "cache_creation_input_tokens": u.cache_write,
    })
}

fn usage_to_responses(u: &Usage) -> Value {
    serde_json::json!({
        "input_tokens": u.prompt(),
        "input_tokens_details": {"cached_tokens": u.cache_read},
        "output_tokens": u.output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.prompt().saturating_add(u.output),
    })
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`; a forced JSON tool's call is a stop.
fn finish_reason(stop_reason: &str, json_mode: bool) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" if json_mode => "stop",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// `reasoning_effort` → a thinking budget (Anthropic's minimum is 1024).
fn effort_budget(effort: &str) -> Option<u64> {
    match effort {
        "minimal" => Some(1024),
        "low" => Some(2048),
        "medium" => Some(8192),
        "high" => Some(24576),
        _ => None,
    }
}

/// A thinking budget → the nearest `reasoning_effort`.
fn budget_effort(budget: u64) -> &'static str {
    match budget {
        0..4096 => "low",
        4096..16384 => "medium",
        _ => "high",
    }
}

/// The Responses id for an Anthropic message id, and the base of its items' ids.
fn response_id(message_id: &str) -> String {
    format!("resp_{}", message_id.strip_prefix("msg_").unwrap_or(message_id))
}
