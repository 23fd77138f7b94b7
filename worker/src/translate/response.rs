//! Complete (non-streamed) answers and error bodies.
use serde_json::{json, Value};

use super::{
    finish_reason, parse_answer, response_id, stop_reason, upstream, usage_from_anthropic, usage_from_openai,
    usage_to_anthropic, usage_to_openai, usage_to_responses, Obj, ResponseContext, Result, Usage,
};

/// The blocks of an Anthropic message, read once for every target.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub id: String,
    pub model: String,
    pub blocks: Vec<Block>,
    pub stop_reason: Option<String>,
    pub usage: Usage,
}

#[derive(Debug, PartialEq)]
pub(super) enum Block {
    Text(String),
    Thinking(String),
    Tool { id: String, name: String, input: Value },
}

fn str_at(v: &Value, key: &str) -> Result<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| upstream(format!("`{key}` missing or not a string")))
}

/// Reads an Anthropic `message`; a forced JSON tool's call becomes text.
pub(super) fn parse_message(m: &Obj, ctx: &ResponseContext) -> Result<Parsed> {
    let v = Value::Object(m.clone());
    let mut p = Parsed {
        id: str_at(&v, "id")?,
        model: str_at(&v, "model").unwrap_or_default(),
        stop_reason: v.get("stop_reason").and_then(Value::as_str).map(str::to_owned),
        usage: v.get("usage").map(usage_from_anthropic).unwrap_or_default(),
        blocks: vec![],
    };
    let content = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| upstream("`content` missing or not an array"))?;
    for b in content {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => p.blocks.push(Block::Text(str_at(b, "text")?)),
            Some("thinking") => p.blocks.push(Block::Thinking(str_at(b, "thinking")?)),
            Some("redacted_thinking") => {}
            Some("tool_use") => {
                let name = str_at(b, "name")?;
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                if ctx.json_tool.as_deref() == Some(name.as_str()) {
                    p.blocks.push(Block::Text(input.to_string()));
                } else {
                    p.blocks.push(Block::Tool {
                        id: str_at(b, "id")?,
                        name,
                        input,
                    });
                }
            }
            // Blocks of features a translated request cannot ask for (server tools, ...):
            // nothing to translate, as the stream translators skip them too.
            _ => {}
        }
    }
    Ok(p)
}

/// Anthropic `message` → OpenAI `chat.completion`, and the usage it reported.
pub fn message_to_chat(body: &[u8], ctx: &ResponseContext) -> Result<(Vec<u8>, Usage)> {
    let (v, u) = message_to_chat_value(&parse_answer(body)?, ctx)?;
    Ok((v.to_string().into_bytes(), u))
}

pub(super) fn message_to_chat_value(m: &Obj, ctx: &ResponseContext) -> Result<(Value, Usage)> {
    let p = parse_message(m, ctx)?;
    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut calls = Vec::new();
    for b in p.blocks {
        match b {
            Block::Text(t) => text.get_or_insert_with(String::new).push_str(&t),
            Block::Thinking(t) => reasoning.get_or_insert_with(String::new).push_str(&t),
            Block::Tool { id, name, input } => calls.push(json!({
                "id": id, "type": "function",
                "function": {"name": name, "arguments": input.to_string()},
            })),
        }
    }
    let mut message = json!({"role": "assistant", "content": text});
    if let Some(r) = reasoning {
        message["reasoning_content"] = Value::String(r);
    }
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let finish = p
        .stop_reason
        .as_deref()
        .map(|s| finish_reason(s, ctx.json_tool.is_some()));
    Ok((
        json!({
            "id": p.id,
            "object": "chat.completion",
            "created": ctx.created,
            "model": p.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
            "usage": usage_to_openai(&p.usage),
        }),
        p.usage,
    ))
}

/// OpenAI `chat.completion` → Anthropic `message`, and the usage it reported.
pub fn chat_to_message(body: &[u8], ctx: &ResponseContext) -> Result<(Vec<u8>, Usage)> {
    let (v, u) = chat_to_message_value(&parse_answer(body)?, ctx)?;
    Ok((v.to_string().into_bytes(), u))
}

pub(super) fn chat_to_message_value(m: &Obj, _ctx: &ResponseContext) -> Result<(Value, Usage)> {
    let choices = m
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| upstream("`choices` missing or not an array"))?;
    let [choice] = choices.as_slice() else {
        return Err(upstream(format!(
            "{} choices where one was asked for",
            choices.len()
        )));
    };
    let msg = choice
        .get("message")
        .ok_or_else(|| upstream("`message` missing"))?;
    let mut content = Vec::new();
    for key in ["reasoning_content", "reasoning"] {
        if let Some(r) = msg.get(key).and_then(Value::as_str).filter(|r| !r.is_empty()) {
            content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
            break;
        }
    }
    for key in ["content", "refusal"] {
        if let Some(t) = msg.get(key).and_then(Value::as_str).filter(|t| !t.is_empty()) {
            content.push(json!({"type": "text", "text": t}));
        }
    }
    if let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) {
        for c in calls {
            let f = c
                .get("function")
                .ok_or_else(|| upstream("a tool call without `function`"))?;
            let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
            let input = if args.trim().is_empty() {
                json!({})
            } else {
                match serde_json::from_str::<Value>(args) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => return Err(upstream("a tool call whose arguments are not a JSON object")),
                }
            };
            content.push(json!({
                "type": "tool_use",
                "id": str_at(c, "id")?,
                "name": str_at(f, "name")?,
                "input": input,
            }));
        }
    }
    let usage = m.get("usage").map(usage_from_openai).unwrap_or_default();
    let has_calls = content.iter().any(|b| b["type"] == "tool_use");
    let stop = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .map(|f| match stop_reason(f) {
            // Some OpenAI-compatible servers say `stop` after tool calls.
            "end_turn" if has_calls => "tool_use",
            s => s,
        });
    let v = Value::Object(m.clone());
    Ok((
        json!({
            "id": str_at(&v, "id")?,
            "type": "message",
            "role": "assistant",
            "model": v.get("model").and_then(Value::as_str).unwrap_or_default(),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": null,
            "usage": usage_to_anthropic(&usage),
        }),
        usage,
    ))
}

/// Anthropic `message` → OpenAI Responses `response`, and the usage it reported.
pub fn message_to_responses(body: &[u8], ctx: &ResponseContext) -> Result<(Vec<u8>, Usage)> {
    let (v, u) = message_to_responses_value(&parse_answer(body)?, ctx)?;
    Ok((v.to_string().into_bytes(), u))
}

/// The Responses output items, as both the complete and the streamed translation write
/// them once done.
pub(super) fn message_item(id: &str, text: &str) -> Value {
    json!({
        "id": id, "type": "message", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

pub(super) fn call_item(call_id: &str, name: &str, arguments: &str) -> Value {
    json!({
        "id": format!("fc_{call_id}"), "type": "function_call", "status": "completed",
        "call_id": call_id, "name": name, "arguments": arguments,
    })
}

pub(super) fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"id": id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]})
}

/// An output item's id: `<prefix>_<response base>_<output index>`.
pub(super) fn item_id(prefix: &str, resp_id: &str, index: usize) -> String {
    format!(
        "{prefix}_{}_{index}",
        resp_id.strip_prefix("resp_").unwrap_or(resp_id)
    )
}

/// The `response` object: `completed`, or `incomplete` when the answer hit its limit.
pub(super) fn response_object(
    id: &str,
    model: &str,
    created: u64,
    stop: Option<&str>,
    output: Vec<Value>,
    usage: Option<&Usage>,
) -> Value {
    let (status, incomplete) = match stop {
        None => ("in_progress", Value::Null),
        Some("max_tokens" | "model_context_window_exceeded") => {
            ("incomplete", json!({"reason": "max_output_tokens"}))
        }
        Some(_) => ("completed", Value::Null),
    };
    json!({
        "id": id, "object": "response", "created_at": created, "status": status,
        "model": model, "output": output, "error": null, "incomplete_details": incomplete,
        "usage": usage.map(usage_to_responses),
    })
}

pub(super) fn message_to_responses_value(m: &Obj, ctx: &ResponseContext) -> Result<(Value, Usage)> {
    let p = parse_message(m, ctx)?;
    let id = response_id(&p.id);
    let mut output = Vec::with_capacity(p.blocks.len());
    for b in &p.blocks {
        let i = output.len();
        output.push(match b {
            Block::Text(t) => message_item(&item_id("msg", &id, i), t),
            Block::Thinking(t) => reasoning_item(&item_id("rs", &id, i), t),
            Block::Tool {
                id: call,
                name,
                input,
            } => call_item(call, name, &input.to_string()),
        });
    }
    let stop = p.stop_reason.as_deref().unwrap_or("end_turn");
    Ok((
        response_object(&id, &p.model, ctx.created, Some(stop), output, Some(&p.usage)),
        p.usage,
    ))
}

/// The message of an upstream error body in either dialect (`error.message`), if any.
fn error_message(body: &[u8]) -> Option<(String, Option<String>)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let msg = e.get("message")?.as_str()?.to_owned();
    let ty = e.get("type").and_then(Value::as_str).map(str::to_owned);
    Some((msg, ty))
}

/// An Anthropic error answer (status and body) → the OpenAI error body. The type is
/// chosen by status, as OpenAI's SDKs read it; the Anthropic type goes in `code`. A body
/// that is not an Anthropic error gets a generic message (never the raw bytes).
pub fn error_to_openai(status: u16, anthropic_body: &[u8]) -> Vec<u8> {
    let (message, code) =
        error_message(anthropic_body).unwrap_or_else(|| (format!("upstream error (status {status})"), None));
    let ty = match status {
        400 | 404 | 409 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "server_error",
    };
    json!({"error": {"message": message, "type": ty, "param": null, "code": code}})
        .to_string()
        .into_bytes()
}

/// An OpenAI error answer (status and body) → the Anthropic error body, typed by status.
pub fn error_to_anthropic(status: u16, openai_body: &[u8]) -> Vec<u8> {
    let message = error_message(openai_body)
        .map(|(m, _)| m)
        .unwrap_or_else(|| format!("upstream error (status {status})"));
    json!({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}})
        .to_string()
        .into_bytes()
}

pub(super) fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        400 | 409 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// Anthropic error `type` → the OpenAI error `type` (for a stream's error event).
pub(super) fn openai_error_type(anthropic_type: &str) -> &'static str {
    match anthropic_type {
        "invalid_request_error" | "not_found_error" | "request_too_large" => "invalid_request_error",
        "authentication_error" => "authentication_error",
        "permission_error" => "permission_error",
        "rate_limit_error" => "rate_limit_error",
        _ => "server_error",
    }
}
