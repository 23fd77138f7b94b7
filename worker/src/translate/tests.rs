//! Fixtures of both wire formats, property tests (there and back keeps the shared
//! fields; streamed equals complete), and hostile input.
use serde_json::{json, Value};

use super::request::{chat_to_messages_value, messages_to_chat_value, responses_to_messages_value};
use super::response::{chat_to_message_value, message_to_chat_value, message_to_responses_value};
use super::*;

const NOW: u64 = 1_700_000_000;

fn opts() -> TranslateOptions {
    TranslateOptions {
        default_max_tokens: 1000,
        max_completion_tokens: false,
        now_unix: NOW,
        model: None,
    }
}

fn obj(v: Value) -> Obj {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn to_messages(v: Value) -> Result<(Value, ResponseContext)> {
    chat_to_messages_value(obj(v), &opts()).map(|(m, c)| (Value::Object(m), c))
}

fn to_chat(v: Value) -> Result<(Value, ResponseContext)> {
    messages_to_chat_value(obj(v), &opts()).map(|(m, c)| (Value::Object(m), c))
}

fn from_responses(v: Value) -> Result<(Value, ResponseContext)> {
    responses_to_messages_value(obj(v), &opts()).map(|(m, c)| (Value::Object(m), c))
}

fn refused_param(r: Result<(Value, ResponseContext)>) -> String {
    match r {
        Err(e @ (TranslateError::Unsupported { .. } | TranslateError::Invalid { .. })) => {
            e.param().map(str::to_owned).unwrap_or_default()
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn ctx() -> ResponseContext {
    ResponseContext {
        stream: false,
        include_usage: true,
        json_tool: None,
        created: NOW,
    }
}

// ---------------------------------------------------------------- request fixtures

#[test]
fn translate_chat_request_fixture() {
    let chat = json!({
        "model": "claude-sonnet-4",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "22C"}]},
            {"role": "user", "content": "Thanks. Which is warmer?"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "strict": true,
        }}],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "max_completion_tokens": 300,
        "temperature": 0.2,
        "stop": "END",
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "u-42",
        "n": 1,
        "presence_penalty": 0,
    });
    let (got, ctx) = to_messages(chat).unwrap();
    assert_eq!(
        got,
        json!({
            "model": "claude-sonnet-4",
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in these, and the weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "22C"}]},
                    {"type": "text", "text": "Thanks. Which is warmer?"},
                ]},
            ],
            "tools": [{"name": "weather", "description": "Current weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "max_tokens": 300,
            "temperature": 0.2,
            "stop_sequences": ["END"],
            "stream": true,
            "metadata": {"user_id": "u-42"},
        })
    );
    assert!(ctx.stream && ctx.include_usage && ctx.json_tool.is_none());
    // The byte-level entry point says where it goes.
    let t = chat_to_messages(
        br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        &opts(),
    )
    .unwrap();
    assert_eq!(t.path, "/v1/messages");
    let body: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(
        body,
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000})
    );
}

#[test]
fn translate_chat_request_refusals_name_the_field() {
    let base = || json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let with = |k: &str, v: Value| {
        let mut b = base();
        b[k] = v;
        b
    };
    for (k, v, param) in [
        ("n", json!(2), "n"),
        ("logprobs", json!(true), "logprobs"),
        ("top_logprobs", json!(2), "top_logprobs"),
        ("logit_bias", json!({"50256": -100}), "logit_bias"),
        ("frequency_penalty", json!(0.5), "frequency_penalty"),
        ("presence_penalty", json!(-1), "presence_penalty"),
        ("seed", json!(7), "seed"),
        ("audio", json!({"voice": "alloy", "format": "mp3"}), "audio"),
        ("modalities", json!(["text", "audio"]), "modalities"),
        ("temperature", json!(1.5), "temperature"),
        ("store", json!(true), "store"),
        ("metadata", json!({"a": "b"}), "metadata"),
        ("functions", json!([]), "functions"),
        ("made_up_field", json!(1), "made_up_field"),
        ("reasoning_effort", json!("extreme"), "reasoning_effort"),
        (
            "stream_options",
            json!({"include_usage": true, "x": 1}),
            "stream_options.x",
        ),
        (
            "tools",
            json!([{"type": "custom", "custom": {"name": "x"}}]),
            "tools[0].type",
        ),
        (
            "tool_choice",
            json!({"type": "allowed_tools"}),
            "tool_choice.type",
        ),
    ] {
        assert_eq!(refused_param(to_messages(with(k, v))), param, "{k}");
    }
    let mut both = with("max_tokens", json!(9));
    both["max_completion_tokens"] = json!(10);
    assert_eq!(refused_param(to_messages(both)), "max_tokens");
    // Message-level refusals.
    let msgs = |m: Value| json!({"model": "m", "messages": [m]});
    for (m, param) in [
        (
            json!({"role": "user", "content": "x", "name": "bob"}),
            "messages[0].name",
        ),
        (
            json!({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!({"role": "function", "name": "f", "content": "x"}),
            "messages[0].role",
        ),
        (
            json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
    ] {
        assert_eq!(refused_param(to_messages(msgs(m))), param);
    }
    // The refusal's body for the client, OpenAI dialect, names the field.
    let e = to_messages(with("n", json!(3))).unwrap_err();
    let b: Value = serde_json::from_slice(&e.body(Dialect::OpenAi)).unwrap();
    assert_eq!(b["error"]["param"], "n");
    assert_eq!(b["error"]["type"], "invalid_request_error");
    assert_eq!(e.status(), 400);
}

#[test]
fn translate_chat_request_json_mode_and_reasoning() {
    let (got, ctx) = to_messages(json!({
        "model": "m", "messages": [{"role": "user", "content": "list two colours"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "colours", "strict": true,
            "schema": {"type": "object", "properties": {"c": {"type": "array"}}}}},
        "max_tokens": 5000,
    }))
    .unwrap();
    assert_eq!(got["tools"][0]["name"], "colours");
    assert_eq!(
        got["tools"][0]["input_schema"]["properties"]["c"]["type"],
        "array"
    );
    assert_eq!(got["tool_choice"], json!({"type": "tool", "name": "colours"}));
    assert_eq!(ctx.json_tool.as_deref(), Some("colours"));
    // Thinking: the budget stays below max_tokens; not with JSON mode.
    let (t, _) =
        to_messages(json!({"model": "m", "messages": [], "reasoning_effort": "high", "max_tokens": 5000}))
            .unwrap();
    assert_eq!(t["thinking"], json!({"type": "enabled", "budget_tokens": 4999}));
    assert_eq!(
        refused_param(to_messages(
            json!({"model": "m", "messages": [], "max_tokens": 5000,
            "reasoning_effort": "low", "response_format": {"type": "json_object"}})
        )),
        "reasoning_effort"
    );
    // The answer: the forced tool's input is the text, and it is a plain stop.
    let answer = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "colours", "input": {"c": ["red", "blue"]}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 5}});
    let (chat, _) = message_to_chat_value(&obj(answer), &ctx).unwrap();
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        r#"{"c":["red","blue"]}"#
    );
    assert_eq!(chat["choices"][0]["finish_reason"], "stop");
    assert!(chat["choices"][0]["message"].get("tool_calls").is_none());
    // json_object: a tool taking any object.
    let (got, ctx) = to_messages(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_object"}}),
    )
    .unwrap();
    assert_eq!(got["tools"][0]["input_schema"], json!({"type": "object"}));
    assert_eq!(ctx.json_tool.as_deref(), Some(request::JSON_OBJECT_TOOL));
    // Not with tools, and not a non-object schema.
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    assert_eq!(
        refused_param(to_messages(json!({"model": "m", "messages": [], "tools": tools,
        "response_format": {"type": "json_object"}}))),
        "response_format"
    );
    assert_eq!(
        refused_param(to_messages(json!({"model": "m", "messages": [],
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "array"}}}}))),
        "response_format"
    );
    // Thinking needs room.
    assert_eq!(
        refused_param(to_messages(
            json!({"model": "m", "messages": [], "max_tokens": 1000,
        "reasoning_effort": "low"})
        )),
        "reasoning_effort"
    );
    let (got, _) = to_messages(json!({"model": "m", "messages": [], "reasoning_effort": "none"})).unwrap();
    assert!(got.get("thinking").is_none());
}

#[test]
fn translate_anthropic_request_fixture() {
    // What Claude Code sends, in short.
    let req = json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 32000,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be careful."},
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Read main.rs", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Let me look.", "signature": "sig"},
                {"type": "text", "text": "Reading both."},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "main.rs"}},
                {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"path": "lib.rs"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "fn main() {}"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                 "content": [{"type": "text", "text": "no such file"}]},
            ]},
        ],
        "tools": [{"name": "Read", "description": "Read a file",
                   "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
                   "cache_control": {"type": "ephemeral"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        "thinking": {"type": "enabled", "budget_tokens": 10000},
        "metadata": {"user_id": "user_abc"},
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 1,
        "stream": true,
    });
    let (got, rctx) = to_chat(req).unwrap();
    assert_eq!(
        got,
        json!({
            "model": "claude-sonnet-4-5-20250929",
            "max_tokens": 32000,
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "You are Claude Code."}, {"type": "text", "text": "Be careful."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Read main.rs"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ]},
                {"role": "assistant", "content": "Reading both.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": "{\"path\":\"main.rs\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "Read", "arguments": "{\"path\":\"lib.rs\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "fn main() {}"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "Error:"}, {"type": "text", "text": "no such file"}]},
            ],
            "tools": [{"type": "function", "function": {"name": "Read", "description": "Read a file",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "reasoning_effort": "medium",
            "user": "user_abc",
            "stop": ["\n\nHuman:"],
            "temperature": 1,
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    );
    assert!(rctx.stream && rctx.include_usage);
    let t = messages_to_chat(
        br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        &TranslateOptions {
            max_completion_tokens: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(t.path, "/v1/chat/completions");
    let body: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(body["max_completion_tokens"], 5);
    // The backend's model name replaces the client's.
    let o = TranslateOptions {
        model: Some("gpt-4o-2024-08-06".into()),
        ..opts()
    };
    let t = messages_to_chat(
        br#"{"model":"claude-3-5-haiku-latest","max_tokens":5,"messages":[]}"#,
        &o,
    )
    .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&t.body).unwrap()["model"],
        "gpt-4o-2024-08-06"
    );
    let t = chat_to_messages(
        br#"{"model":"gpt-4o","messages":[]}"#,
        &TranslateOptions {
            model: Some("claude-x".into()),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&t.body).unwrap()["model"],
        "claude-x"
    );
    // Refusals.
    let base = || json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    for (k, v, param) in [
        ("top_k", json!(5), "top_k"),
        (
            "tools",
            json!([{"type": "web_search_20250305", "name": "web_search"}]),
            "tools[0].type",
        ),
        ("metadata", json!({"user_id": "a", "other": 1}), "metadata.other"),
        ("mcp_servers", json!([]), "mcp_servers"),
        ("container", json!("c"), "container"),
        ("thinking", json!({"type": "sometimes"}), "thinking.type"),
        (
            "output_config",
            json!({"effort": "extreme"}),
            "output_config.effort",
        ),
        (
            "output_config",
            json!({"format": {"type": "json_schema"}}),
            "output_config.format",
        ),
        (
            "context_management",
            json!({"edits": [{"type": "clear_thinking_20251015"}, {"type": "clear_tool_uses_20250919"}]}),
            "context_management.edits[1].type",
        ),
        (
            "context_management",
            json!({"other": 1}),
            "context_management.other",
        ),
    ] {
        let mut b = base();
        b[k] = v;
        assert_eq!(refused_param(to_chat(b)), param, "{k}");
    }
    // Claude Code with a model it does not know: adaptive thinking, the effort it wants.
    let mut b = base();
    b["thinking"] = json!({"type": "adaptive"});
    assert_eq!(to_chat(b.clone()).unwrap().0, to_chat(base()).unwrap().0);
    b["output_config"] = json!({"effort": "high"});
    assert_eq!(to_chat(b).unwrap().0["reasoning_effort"], "high");
    // Claude Code's thinking-clearing edit is harmless: the request translates as without it.
    let mut b = base();
    b["context_management"] = json!({"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]});
    assert_eq!(to_chat(b).unwrap().0, to_chat(base()).unwrap().0);
    // An image in a tool result follows the tool message, in the turn's user message.
    let mut b = base();
    b["messages"] = json!([{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "text", "text": "a screenshot"},
            {"type": "image", "source": {"type": "url", "url": "https://x/1.png"}}]},
        {"type": "tool_result", "tool_use_id": "u", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}]},
        {"type": "text", "text": "what now?"}]}]);
    assert_eq!(
        to_chat(b).unwrap().0["messages"],
        json!([
            {"role": "tool", "tool_call_id": "t", "content": [{"type": "text", "text": "a screenshot"}]},
            {"role": "tool", "tool_call_id": "u", "content": ""},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://x/1.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                {"type": "text", "text": "what now?"}]},
        ])
    );
    // A stop with tool calls (some OpenAI-compatible servers) is a tool_use.
    let odd = json!({"id": "x", "model": "m", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": null,
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]});
    assert_eq!(
        chat_to_message_value(&obj(odd.clone()), &ctx()).unwrap().0["stop_reason"],
        "tool_use"
    );
    let mut input = Vec::new();
    sse::write_data(
        &mut input,
        &json!({"id": "x", "model": "m", "choices": [{"index": 0, "delta": {
        "tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}}]}),
    );
    sse::write_data(
        &mut input,
        &json!({"id": "x", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    );
    let mut t = ChatToAnthropicStream::new(ctx());
    let (out, r) = run(&mut t, &input, &[]);
    r.unwrap();
    assert_eq!(assemble_anthropic(&out)["stop_reason"], "tool_use");
    let mut b = base();
    b["messages"] = json!([{"role": "user", "content": [{"type": "document", "source": {}}]}]);
    assert_eq!(refused_param(to_chat(b)), "messages[0].content[0].type");
    assert_eq!(
        refused_param(to_chat(json!({"model": "m", "messages": []}))),
        "max_tokens"
    );
    let mut b = base();
    b["messages"] = json!([{"role": "user", "content": "Say a colour."}, {"role": "assistant", "content": "The colour is"}]);
    assert_eq!(refused_param(to_chat(b)), "messages[1]");
}

#[test]
fn translate_responses_request_fixture() {
    let req = json!({
        "model": "claude-opus-4",
        "instructions": "You are Codex.",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be terse."}]},
            {"role": "user", "content": [
                {"type": "input_text", "text": "Fix it"},
                {"type": "input_image", "image_url": "https://example.com/s.png", "detail": "auto"},
            ]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xyz"},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "Looking.", "annotations": []}]},
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell", "arguments": "{\"cmd\":[\"ls\"]}"},
            {"type": "function_call", "call_id": "call_2", "name": "shell", "arguments": ""},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.rs"},
            {"type": "function_call_output", "call_id": "call_2", "output": "b.rs"},
        ],
        "tools": [{"type": "function", "name": "shell", "description": "Run", "strict": false,
                   "parameters": {"type": "object", "properties": {"cmd": {"type": "array"}}}}],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "reasoning": {"effort": "high", "summary": "auto"},
        "max_output_tokens": 40000,
        "store": false,
        "stream": true,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "k",
    });
    let (got, ctx) = from_responses(req).unwrap();
    assert_eq!(
        got,
        json!({
            "model": "claude-opus-4",
            "system": [{"type": "text", "text": "You are Codex."}, {"type": "text", "text": "Be terse."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Fix it"},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/s.png"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "call_1", "name": "shell", "input": {"cmd": ["ls"]}},
                    {"type": "tool_use", "id": "call_2", "name": "shell", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "a.rs"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "b.rs"},
                ]},
            ],
            "tools": [{"name": "shell", "description": "Run",
                       "input_schema": {"type": "object", "properties": {"cmd": {"type": "array"}}}}],
            "tool_choice": {"type": "auto"},
            "thinking": {"type": "enabled", "budget_tokens": 24576},
            "max_tokens": 40000,
            "stream": true,
        })
    );
    assert!(ctx.stream);
    let (got, _) = from_responses(json!({"model": "m", "input": "hi"})).unwrap();
    assert_eq!(got["messages"], json!([{"role": "user", "content": "hi"}]));
    assert_eq!(got["max_tokens"], 1000);
    for (k, v, param) in [
        ("tools", json!([{"type": "web_search"}]), "tools[0].type"),
        ("previous_response_id", json!("resp_1"), "previous_response_id"),
        ("background", json!(true), "background"),
        ("include", json!(["file_search_call.results"]), "include[0]"),
        (
            "input",
            json!([{"type": "item_reference", "id": "x"}]),
            "input[0].type",
        ),
        ("text", json!({"verbosity": "low"}), "text.verbosity"),
    ] {
        let mut b = json!({"model": "m", "input": "hi"});
        b[k] = v;
        assert_eq!(refused_param(from_responses(b)), param, "{k}");
    }
    let (got, ctx) = from_responses(json!({"model": "m", "input": "hi",
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}}}))
    .unwrap();
    assert_eq!(got["tool_choice"], json!({"type": "tool", "name": "out"}));
    assert_eq!(ctx.json_tool.as_deref(), Some("out"));
}

#[test]
fn translate_pair_picks_the_translators() {
    assert_eq!(Pair::new(ClientApi::ChatCompletions, false), None);
    assert_eq!(Pair::new(ClientApi::Messages, true), None);
    assert_eq!(Pair::new(ClientApi::Responses, false), None);
    let p = Pair::new(ClientApi::Messages, false).unwrap();
    assert_eq!(p.client_dialect(), Dialect::Anthropic);
    let t = p
        .request(
            br#"{"model":"m","max_tokens":9,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            &opts(),
        )
        .unwrap();
    assert_eq!(t.path, "/v1/chat/completions");
    assert!(t.ctx.stream && t.ctx.include_usage);
    let mut s = p.stream(t.ctx);
    let mut out = Vec::new();
    s.push(b"data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"yo\"}}]}\n\n", &mut out).unwrap();
    assert!(out.starts_with(b"event: message_start\n"));
    let e: Value = serde_json::from_slice(&p.error(429, b"{}")).unwrap();
    assert_eq!(e["error"]["type"], "rate_limit_error");
    let p = Pair::new(ClientApi::Responses, true).unwrap();
    assert_eq!(p.client_dialect(), Dialect::OpenAi);
    let (body, usage) = p
        .answer(anthropic_answer().to_string().as_bytes(), &ctx())
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["object"],
        "response"
    );
    assert_eq!(usage.output, 50);
}

// ---------------------------------------------------------------- response fixtures

fn anthropic_answer() -> Value {
    json!({
        "id": "msg_01XF", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
        "content": [
            {"type": "thinking", "thinking": "Two cities.", "signature": "EqQB"},
            {"type": "text", "text": "Checking "},
            {"type": "text", "text": "both."},
            {"type": "tool_use", "id": "toolu_A", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_B", "name": "weather", "input": {"city": "Rome"}},
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 100, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 300, "output_tokens": 50},
    })
}

#[test]
fn translate_anthropic_answer_to_chat() {
    let (got, usage) = message_to_chat_value(&obj(anthropic_answer()), &ctx()).unwrap();
    assert_eq!(
        got,
        json!({
            "id": "msg_01XF", "object": "chat.completion", "created": NOW, "model": "claude-sonnet-4",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null, "message": {
                "role": "assistant", "content": "Checking both.", "reasoning_content": "Two cities.",
                "tool_calls": [
                    {"id": "toolu_A", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_B", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}},
                ]}}],
            "usage": {"prompt_tokens": 420, "completion_tokens": 50, "total_tokens": 470,
                      "prompt_tokens_details": {"cached_tokens": 300}},
        })
    );
    assert_eq!(
        usage,
        Usage {
            input: 100,
            output: 50,
            cache_read: 300,
            cache_write: 20,
            reasoning: 0
        }
    );
    assert_eq!(usage.to_account().prompt_tokens, 420);
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ] {
        let mut a = anthropic_answer();
        a["stop_reason"] = json!(stop);
        let (got, _) = message_to_chat_value(&obj(a), &ctx()).unwrap();
        assert_eq!(got["choices"][0]["finish_reason"], finish);
    }
}

#[test]
fn translate_anthropic_answer_to_responses() {
    let (got, usage) = message_to_responses_value(&obj(anthropic_answer()), &ctx()).unwrap();
    assert_eq!(
        got,
        json!({
            "id": "resp_01XF", "object": "response", "created_at": NOW, "status": "completed",
            "model": "claude-sonnet-4", "error": null, "incomplete_details": null,
            "output": [
                {"id": "rs_01XF_0", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Two cities."}]},
                {"id": "msg_01XF_1", "type": "message", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Checking ", "annotations": []}]},
                {"id": "msg_01XF_2", "type": "message", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "both.", "annotations": []}]},
                {"id": "fc_toolu_A", "type": "function_call", "status": "completed", "call_id": "toolu_A",
                 "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
                {"id": "fc_toolu_B", "type": "function_call", "status": "completed", "call_id": "toolu_B",
                 "name": "weather", "arguments": "{\"city\":\"Rome\"}"},
            ],
            "usage": {"input_tokens": 420, "input_tokens_details": {"cached_tokens": 300}, "output_tokens": 50,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 470},
        })
    );
    assert_eq!(usage.cache_write, 20);
    let mut a = anthropic_answer();
    a["stop_reason"] = json!("max_tokens");
    let (got, _) = message_to_responses_value(&obj(a), &ctx()).unwrap();
    assert_eq!(got["status"], "incomplete");
    assert_eq!(got["incomplete_details"]["reason"], "max_output_tokens");
}

#[test]
fn translate_chat_answer_to_anthropic() {
    let chat = json!({
        "id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "On it.", "refusal": null,
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "ls", "arguments": "{\"dir\":\"/\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "pwd", "arguments": ""}},
            ]}}],
        "usage": {"prompt_tokens": 500, "completion_tokens": 20, "total_tokens": 520,
                  "prompt_tokens_details": {"cached_tokens": 400, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 8}},
        "system_fingerprint": "fp_1",
    });
    let (got, usage) = chat_to_message_value(&obj(chat), &ctx()).unwrap();
    assert_eq!(
        got,
        json!({
            "id": "chatcmpl-9", "type": "message", "role": "assistant", "model": "gpt-4o",
            "content": [
                {"type": "text", "text": "On it."},
                {"type": "tool_use", "id": "call_a", "name": "ls", "input": {"dir": "/"}},
                {"type": "tool_use", "id": "call_b", "name": "pwd", "input": {}},
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 400, "cache_creation_input_tokens": 0},
        })
    );
    assert_eq!(usage.reasoning, 8);
    let bad = json!({"id": "x", "choices": [{"message": {"role": "assistant", "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}}]});
    assert!(matches!(
        chat_to_message_value(&obj(bad), &ctx()),
        Err(TranslateError::Upstream(_))
    ));
    let two = json!({"id": "x", "choices": [{"message": {}}, {"message": {}}]});
    assert!(chat_to_message_value(&obj(two), &ctx()).is_err());
}

#[test]
fn translate_error_bodies() {
    let a = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let o: Value = serde_json::from_slice(&error_to_openai(529, a)).unwrap();
    assert_eq!(
        o,
        json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded_error"}})
    );
    let o: Value = serde_json::from_slice(&error_to_openai(429, b"<html>")).unwrap();
    assert_eq!(o["error"]["type"], "rate_limit_error");
    assert_eq!(o["error"]["message"], "upstream error (status 429)");
    let e = br#"{"error":{"message":"Invalid 'messages'","type":"invalid_request_error","param":"messages","code":null}}"#;
    let v: Value = serde_json::from_slice(&error_to_anthropic(400, e)).unwrap();
    assert_eq!(
        v,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "Invalid 'messages'"}})
    );
    for (status, ty) in [
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "overloaded_error"),
    ] {
        let v: Value = serde_json::from_slice(&error_to_anthropic(status, b"")).unwrap();
        assert_eq!(v["error"]["type"], ty);
    }
    let e = TranslateError::Unsupported {
        param: "top_k".into(),
        message: "x".into(),
    };
    let v: Value = serde_json::from_slice(&e.body(Dialect::Anthropic)).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("top_k"));
}

// ---------------------------------------------------------------- stream fixtures

const ANTHROPIC_SSE: &str = "event: message_start
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}

event: ping
data: {\"type\": \"ping\"}

event: content_block_start
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}

event: content_block_stop
data: {\"type\":\"content_block_stop\",\"index\":0}

event: content_block_start
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}

event: content_block_stop
data: {\"type\":\"content_block_stop\",\"index\":1}

event: message_delta
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":12}}

event: message_stop
data: {\"type\":\"message_stop\"}

";

/// The data of each SSE event, `[DONE]` as a string.
fn sse_data(bytes: &[u8]) -> Vec<(String, Value)> {
    let mut r = sse::Reader::default();
    let mut ev = Vec::new();
    r.push(bytes, &mut ev).unwrap();
    r.finish(&mut ev).unwrap();
    ev.into_iter()
        .map(|e| {
            let v = serde_json::from_slice(&e.data)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&e.data).into_owned()));
            (e.name, v)
        })
        .collect()
}

fn run(t: &mut dyn StreamTranslator, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Result<()>) {
    let mut out = Vec::new();
    let mut at = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    for c in cuts {
        if let Err(e) = t.push(&input[at..c], &mut out) {
            return (out, Err(e));
        }
        at = c;
    }
    if let Err(e) = t.push(&input[at..], &mut out) {
        return (out, Err(e));
    }
    let r = t.finish(&mut out);
    (out, r)
}

#[test]
fn translate_stream_anthropic_to_chat_fixture() {
    let mut t = AnthropicToChatStream::new(ctx());
    let (out, r) = run(&mut t, ANTHROPIC_SSE.as_bytes(), &[]);
    r.unwrap();
    let data: Vec<Value> = sse_data(&out).into_iter().map(|(_, v)| v).collect();
    let deltas: Vec<Value> = data.iter().map(|d| d["choices"][0]["delta"].clone()).collect();
    assert_eq!(
        deltas[..5],
        [
            json!({"role": "assistant", "content": ""}),
            json!({"content": "Hi"}),
            json!({"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        ]
    );
    assert_eq!(data[5]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(data[6]["choices"], json!([]));
    assert_eq!(
        data[6]["usage"],
        json!({"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
        "prompt_tokens_details": {"cached_tokens": 5}})
    );
    assert_eq!(data[7], json!("[DONE]"));
    assert_eq!(data.len(), 8);
    assert!(out.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(
        t.usage(),
        Usage {
            input: 25,
            output: 12,
            cache_read: 5,
            cache_write: 0,
            reasoning: 0
        }
    );
    // Without include_usage: no usage chunk.
    let mut t = AnthropicToChatStream::new(ResponseContext {
        include_usage: false,
        ..ctx()
    });
    let (out, r) = run(&mut t, ANTHROPIC_SSE.as_bytes(), &[]);
    r.unwrap();
    assert!(sse_data(&out).iter().all(|(_, d)| d.get("usage").is_none()));
    // Cut short: the translated part is out, and finish says so.
    let cut = ANTHROPIC_SSE.find("event: message_delta").unwrap();
    let mut t = AnthropicToChatStream::new(ctx());
    let (out, r) = run(&mut t, &ANTHROPIC_SSE.as_bytes()[..cut], &[]);
    assert!(matches!(r, Err(TranslateError::Upstream(_))));
    assert_eq!(sse_data(&out).len(), 5);
    // An upstream error event.
    let err = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let mut t = AnthropicToChatStream::new(ctx());
    let (out, r) = run(&mut t, err.as_bytes(), &[]);
    r.unwrap();
    assert_eq!(
        sse_data(&out)[0].1,
        json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded_error"}})
    );
}

#[test]
fn translate_stream_chat_to_anthropic_fixture() {
    // Parallel tool calls as OpenAI streams them.
    let chunks = [
        json!({"id": "c1", "model": "gpt", "choices": [{"index": 0, "delta": {"role": "assistant", "content": null}}]}),
        json!({"id": "c1", "model": "gpt", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "a", "arguments": ""}}]}}]}),
        json!({"id": "c1", "model": "gpt", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\""}}]}}]}),
        json!({"id": "c1", "model": "gpt", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
        json!({"id": "c1", "model": "gpt", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{}"}}]}}]}),
        json!({"id": "c1", "model": "gpt", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"id": "c1", "model": "gpt", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}),
    ];
    let mut input = Vec::new();
    for c in &chunks {
        sse::write_data(&mut input, c);
    }
    input.extend_from_slice(b"data: [DONE]\n\n");
    let mut t = ChatToAnthropicStream::new(ctx());
    let (out, r) = run(&mut t, &input, &[]);
    r.unwrap();
    let ev = sse_data(&out);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(
        ev[1].1["content_block"],
        json!({"type": "tool_use", "id": "call_1", "name": "a", "input": {}})
    );
    assert_eq!(
        ev[3].1["delta"],
        json!({"type": "input_json_delta", "partial_json": ":1}"})
    );
    assert_eq!(ev[5].1["index"], 1);
    assert_eq!(ev[8].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(ev[8].1["usage"]["input_tokens"], 9);
    assert_eq!(t.usage().output, 4);
    // The largest index a call may have does not overflow the count of calls seen.
    let max = json!({"id": "c1", "model": "gpt", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": u32::MAX, "id": "call_x", "type": "function", "function": {"name": "a", "arguments": "{}"}}]}}]});
    let mut big = Vec::new();
    sse::write_data(&mut big, &max);
    sse::write_data(&mut big, &max);
    let mut t = ChatToAnthropicStream::new(ctx());
    assert!(run(&mut t, &big, &[]).1.is_err(), "no finish reason");
    // Interleaved argument deltas cannot be expressed as Anthropic blocks.
    let mut bad = Vec::new();
    sse::write_data(&mut bad, &chunks[1]);
    sse::write_data(&mut bad, &chunks[4]);
    sse::write_data(&mut bad, &chunks[2]);
    let mut t = ChatToAnthropicStream::new(ctx());
    assert!(run(&mut t, &bad, &[]).1.is_err());
}

#[test]
fn translate_stream_anthropic_to_responses_fixture() {
    let mut t = AnthropicToResponsesStream::new(ctx());
    let (out, r) = run(&mut t, ANTHROPIC_SSE.as_bytes(), &[]);
    r.unwrap();
    let ev = sse_data(&out);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, (name, v)) in ev.iter().enumerate() {
        assert_eq!(v["sequence_number"], i, "{name}");
        assert_eq!(v["type"], name.as_str());
    }
    let done = &ev[13].1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
    assert_eq!(done["usage"]["input_tokens"], 30);
    assert_eq!(done["usage"]["output_tokens"], 12);
}

// ---------------------------------------------------------------- generators

/// A small deterministic generator: proptest draws the seed (and the cuts), this the
/// documents, so that the documents stay valid by construction.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bool(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn text(&mut self) -> String {
        let words = [
            "hello",
            "wörld",
            "a\"quote\"",
            "back\\slash",
            "new\nline",
            "🦀",
            "tab\t",
            "<b>",
            "{\"json\":1}",
            "x",
        ];
        let n = 1 + self.below(4);
        (0..n).map(|_| self.pick(&words)).collect::<Vec<_>>().join(" ")
    }
    fn ident(&mut self) -> String {
        let n = 1 + self.below(6);
        (0..n).map(|_| char::from(b'a' + self.below(26) as u8)).collect()
    }
    fn json(&mut self, depth: u32) -> Value {
        match self.below(if depth == 0 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => json!(self.bool()),
            2 => json!(self.below(1_000_000)),
            3 => json!(self.text()),
            4 => Value::Array((0..self.below(3)).map(|_| self.json(depth - 1)).collect()),
            _ => self.object(depth - 1),
        }
    }
    fn object(&mut self, depth: u32) -> Value {
        Value::Object(
            (0..self.below(4))
                .map(|_| (self.ident(), self.json(depth)))
                .collect(),
        )
    }
    /// `s` in 1..=4 pieces cut at char boundaries.
    fn pieces(&mut self, s: &str) -> Vec<String> {
        let chars: Vec<char> = s.chars().collect();
        let mut cuts: Vec<usize> = (0..self.below(4))
            .map(|_| self.below(chars.len() as u64 + 1) as usize)
            .collect();
        cuts.push(0);
        cuts.push(chars.len());
        cuts.sort_unstable();
        cuts.dedup();
        cuts.windows(2)
            .map(|w| chars[w[0]..w[1]].iter().collect())
            .collect()
    }
}

fn gen_user_content(r: &mut Rng) -> Value {
    if r.bool() {
        return json!(r.text());
    }
    let n = 1 + r.below(3);
    Value::Array(
        (0..n)
            .map(|_| match r.below(3) {
                0 => json!({"type": "image_url", "image_url": {"url": format!("data:image/{};base64,{}", r.pick(&["png", "jpeg"]), r.ident())}}),
                1 => json!({"type": "image_url", "image_url": {"url": format!("https://example.com/{}.png", r.ident())}}),
                _ => json!({"type": "text", "text": r.text()}),
            })
            .collect(),
    )
}

/// A Chat Completions request made only of what both dialects have.
fn gen_chat_request(r: &mut Rng) -> Value {
    let mut messages = Vec::new();
    if r.bool() {
        messages.push(json!({"role": "system", "content": r.text()}));
    }
    let tools: Vec<String> = (0..r.below(3)).map(|i| format!("{}_{i}", r.ident())).collect();
    let mut call = 0;
    for _ in 0..1 + r.below(4) {
        messages.push(json!({"role": "user", "content": gen_user_content(r)}));
        let mut a =
            json!({"role": "assistant", "content": if r.bool() { json!(r.text()) } else { Value::Null }});
        let calls: Vec<Value> = (0..if tools.is_empty() { 0 } else { r.below(3) })
            .map(|_| {
                call += 1;
                let name = tools[r.below(tools.len() as u64) as usize].clone();
                json!({"id": format!("call_{call}"), "type": "function",
                       "function": {"name": name, "arguments": r.object(2).to_string()}})
            })
            .collect();
        if calls.is_empty() && a["content"].is_null() {
            a["content"] = json!(r.text());
        }
        let ids: Vec<Value> = calls.iter().map(|c| c["id"].clone()).collect();
        if !calls.is_empty() {
            a["tool_calls"] = Value::Array(calls);
        }
        messages.push(a);
        for id in ids {
            let content = if r.bool() {
                json!(r.text())
            } else {
                json!([{"type": "text", "text": r.text()}])
            };
            messages.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
        }
    }
    // Never a final assistant turn: that is an Anthropic prefill, refused towards OpenAI.
    if r.bool() || messages.last().is_some_and(|m| m["role"] == "assistant") {
        messages.push(json!({"role": "user", "content": gen_user_content(r)}));
    }
    let mut req = json!({"model": r.ident(), "messages": messages, "max_tokens": 1 + r.below(200_000)});
    if r.bool() {
        req["temperature"] = json!(r.below(101) as f64 / 100.0);
    }
    if r.bool() {
        req["top_p"] = json!(r.below(101) as f64 / 100.0);
    }
    if r.bool() {
        req["stop"] = Value::Array((0..1 + r.below(3)).map(|_| json!(r.text())).collect());
    }
    if r.bool() {
        let s = r.bool();
        req["stream"] = json!(s);
        if s {
            req["stream_options"] = json!({"include_usage": true});
        }
    }
    if r.bool() {
        req["user"] = json!(r.ident());
    }
    if !tools.is_empty() {
        req["tools"] = Value::Array(
            tools
                .iter()
                .map(|name| {
                    let mut f = json!({"name": name, "parameters": {"type": "object", "properties": {r.ident(): {"type": "string"}}}});
                    if r.bool() {
                        f["description"] = json!(r.text());
                    }
                    json!({"type": "function", "function": f})
                })
                .collect(),
        );
        match r.below(5) {
            0 => {}
            1 => req["tool_choice"] = json!("none"),
            2 => req["tool_choice"] = json!("auto"),
            3 => req["tool_choice"] = json!("required"),
            _ => req["tool_choice"] = json!({"type": "function", "function": {"name": tools[0]}}),
        }
        if req.get("tool_choice").is_some_and(|c| c != "none") && r.bool() {
            req["parallel_tool_calls"] = json!(false);
        }
    }
    if r.bool() {
        req["reasoning_effort"] = json!(r.pick(&["low", "medium", "high"]));
        req["max_tokens"] = json!(30_000 + r.below(100_000));
    }
    req
}

/// Content compared as both dialects can say it: one text part is the string.
fn normalize_chat(mut req: Value) -> Value {
    if let Some(msgs) = req.get_mut("messages").and_then(Value::as_array_mut) {
        for m in msgs {
            if let Some(parts) = m.get("content").and_then(Value::as_array) {
                if let [p] = parts.as_slice() {
                    if p["type"] == "text" {
                        m["content"] = p["text"].clone();
                    }
                }
            }
        }
    }
    req
}

/// The Responses request that says what `chat` says (without `stop`, which Responses lacks).
fn chat_to_responses_request(chat: &Value) -> Value {
    let mut input = Vec::new();
    let mut req = json!({"model": chat["model"], "max_output_tokens": chat["max_tokens"]});
    for m in chat["messages"].as_array().unwrap() {
        let parts = |c: &Value, ty: &str| -> Value {
            match c {
                Value::String(_) => c.clone(),
                _ => Value::Array(
                    c.as_array()
                        .unwrap()
                        .iter()
                        .map(|p| match p["type"].as_str().unwrap() {
                            "text" => json!({"type": ty, "text": p["text"]}),
                            _ => json!({"type": "input_image", "image_url": p["image_url"]["url"]}),
                        })
                        .collect(),
                ),
            }
        };
        match m["role"].as_str().unwrap() {
            "system" => req["instructions"] = m["content"].clone(),
            "user" => input.push(json!({"role": "user", "content": parts(&m["content"], "input_text")})),
            "assistant" => {
                if let Some(t) = m["content"].as_str() {
                    input.push(
                        json!({"type": "message", "role": "assistant", "id": "msg_x", "status": "completed",
                        "content": [{"type": "output_text", "text": t, "annotations": []}]}),
                    );
                }
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    input.push(
                        json!({"type": "function_call", "call_id": c["id"], "name": c["function"]["name"],
                        "arguments": c["function"]["arguments"]}),
                    );
                }
            }
            _ => input.push(
                json!({"type": "function_call_output", "call_id": m["tool_call_id"],
                "output": parts(&m["content"], "input_text")}),
            ),
        }
    }
    req["input"] = Value::Array(input);
    for k in [
        "temperature",
        "top_p",
        "stream",
        "user",
        "tool_choice",
        "parallel_tool_calls",
    ] {
        if let Some(v) = chat.get(k) {
            req[k] = v.clone();
        }
    }
    if let Some(name) = chat.pointer("/tool_choice/function/name") {
        req["tool_choice"] = json!({"type": "function", "name": name});
    }
    if let Some(tools) = chat["tools"].as_array() {
        req["tools"] = Value::Array(
            tools
                .iter()
                .map(|t| {
                    let mut f = t["function"].clone();
                    f["type"] = json!("function");
                    f
                })
                .collect(),
        );
    }
    if let Some(e) = chat.get("reasoning_effort") {
        req["reasoning"] = json!({"effort": e});
    }
    req
}

/// Anthropic content compared as both sources can say it: one text block is the string.
fn normalize_anthropic(mut req: Value) -> Value {
    if let Some(msgs) = req.get_mut("messages").and_then(Value::as_array_mut) {
        for m in msgs {
            if let Some([b]) = m.get("content").and_then(Value::as_array).map(Vec::as_slice) {
                if b["type"] == "text" {
                    m["content"] = b["text"].clone();
                }
            }
        }
    }
    req
}

/// An Anthropic message (the answer) with text, thinking and tool use.
fn gen_anthropic_message(r: &mut Rng, round_trip: bool) -> Value {
    let mut content = Vec::new();
    if r.below(3) == 0 {
        content.push(json!({"type": "thinking", "thinking": r.text(), "signature": ""}));
    }
    let texts = if round_trip { r.below(2) } else { r.below(3) };
    for _ in 0..texts {
        content.push(json!({"type": "text", "text": r.text()}));
    }
    let tools = r.below(4);
    for i in 0..tools {
        let input = if r.below(4) == 0 { json!({}) } else { r.object(2) };
        content.push(json!({"type": "tool_use", "id": format!("toolu_{}{i}", r.ident()), "name": r.ident(), "input": input}));
    }
    if !round_trip && r.bool() {
        content.push(json!({"type": "text", "text": r.text()}));
    }
    let stop = if tools > 0 {
        "tool_use"
    } else {
        r.pick(&["end_turn", "max_tokens"])
    };
    json!({
        "id": format!("msg_{}", r.ident()), "type": "message", "role": "assistant", "model": r.ident(),
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": r.below(10_000), "output_tokens": r.below(10_000),
                  "cache_read_input_tokens": r.below(10_000),
                  "cache_creation_input_tokens": if round_trip { 0 } else { r.below(10_000) }},
    })
}

/// A chat.completion with what both dialects have.
fn gen_chat_answer(r: &mut Rng) -> Value {
    let mut message =
        json!({"role": "assistant", "content": if r.bool() { json!(r.text()) } else { Value::Null }});
    let calls: Vec<Value> = (0..r.below(4))
        .map(|i| {
            json!({"id": format!("call_{}{i}", r.ident()), "type": "function",
                        "function": {"name": r.ident(), "arguments": r.object(2).to_string()}})
        })
        .collect();
    let finish = if calls.is_empty() {
        r.pick(&["stop", "length"])
    } else {
        "tool_calls"
    };
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let prompt = r.below(10_000);
    let completion = r.below(10_000);
    json!({
        "id": format!("chatcmpl-{}", r.ident()), "object": "chat.completion", "created": NOW, "model": r.ident(),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                  "prompt_tokens_details": {"cached_tokens": r.below(prompt + 1)}},
    })
}

/// The SSE stream Anthropic would send for `msg`, each delta cut into pieces.
fn anthropic_sse(r: &mut Rng, msg: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = msg.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"]["output_tokens"] = json!(1);
    sse::write_event(
        &mut out,
        "message_start",
        &json!({"type": "message_start", "message": start}),
    );
    sse::write_event(&mut out, "ping", &json!({"type": "ping"}));
    for (i, b) in msg["content"].as_array().into_iter().flatten().enumerate() {
        let (first, deltas): (Value, Vec<Value>) = match b["type"].as_str() {
            Some("text") => (
                json!({"type": "text", "text": ""}),
                r.pieces(b["text"].as_str().unwrap_or(""))
                    .into_iter()
                    .map(|p| json!({"type": "text_delta", "text": p}))
                    .collect(),
            ),
            Some("thinking") => {
                let mut d: Vec<Value> = r
                    .pieces(b["thinking"].as_str().unwrap_or(""))
                    .into_iter()
                    .map(|p| json!({"type": "thinking_delta", "thinking": p}))
                    .collect();
                d.push(json!({"type": "signature_delta", "signature": "c2ln"}));
                (json!({"type": "thinking", "thinking": "", "signature": ""}), d)
            }
            _ => {
                let input = b["input"].to_string();
                let d = if input == "{}" && r.bool() {
                    vec![json!({"type": "input_json_delta", "partial_json": ""})]
                } else {
                    r.pieces(&input)
                        .into_iter()
                        .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                        .collect()
                };
                (
                    json!({"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}),
                    d,
                )
            }
        };
        sse::write_event(
            &mut out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": i, "content_block": first}),
        );
        for d in deltas {
            sse::write_event(
                &mut out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": i, "delta": d}),
            );
        }
        sse::write_event(
            &mut out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": i}),
        );
    }
    sse::write_event(
        &mut out,
        "message_delta",
        &json!({"type": "message_delta",
        "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": null},
        "usage": {"output_tokens": msg["usage"]["output_tokens"]}}),
    );
    sse::write_event(&mut out, "message_stop", &json!({"type": "message_stop"}));
    out
}

/// The chunks OpenAI would stream for `chat`, each text cut into pieces.
fn chat_sse(r: &mut Rng, chat: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": chat["id"], "object": "chat.completion.chunk", "created": NOW,
        "model": chat["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let m = &chat["choices"][0]["message"];
    sse::write_data(
        &mut out,
        &chunk(json!({"role": "assistant", "content": ""}), Value::Null),
    );
    if let Some(t) = m["reasoning_content"].as_str() {
        for p in r.pieces(t) {
            sse::write_data(&mut out, &chunk(json!({"reasoning_content": p}), Value::Null));
        }
    }
    if let Some(t) = m["content"].as_str() {
        for p in r.pieces(t) {
            sse::write_data(&mut out, &chunk(json!({"content": p}), Value::Null));
        }
    }
    for (i, c) in m["tool_calls"].as_array().into_iter().flatten().enumerate() {
        sse::write_data(
            &mut out,
            &chunk(
                json!({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
            "function": {"name": c["function"]["name"], "arguments": ""}}]}),
                Value::Null,
            ),
        );
        for p in r.pieces(c["function"]["arguments"].as_str().unwrap_or("")) {
            sse::write_data(
                &mut out,
                &chunk(
                    json!({"tool_calls": [{"index": i, "function": {"arguments": p}}]}),
                    Value::Null,
                ),
            );
        }
    }
    sse::write_data(
        &mut out,
        &chunk(json!({}), chat["choices"][0]["finish_reason"].clone()),
    );
    sse::write_data(
        &mut out,
        &json!({"id": chat["id"], "object": "chat.completion.chunk", "created": NOW,
        "model": chat["model"], "choices": [], "usage": chat["usage"]}),
    );
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

/// Assembles translated chat chunks into the chat.completion they describe.
fn assemble_chat(out: &[u8]) -> Value {
    let (mut id, mut model, mut created) = (Value::Null, Value::Null, Value::Null);
    let (mut content, mut reasoning): (Option<String>, Option<String>) = (None, None);
    let mut calls: Vec<Value> = Vec::new();
    let (mut finish, mut usage) = (Value::Null, Value::Null);
    let mut done = false;
    for (_, d) in sse_data(out) {
        if d == "[DONE]" {
            done = true;
            continue;
        }
        assert!(!done, "a chunk after [DONE]");
        assert_eq!(d["object"], "chat.completion.chunk");
        (id, model, created) = (d["id"].clone(), d["model"].clone(), d["created"].clone());
        if d["usage"].is_object() {
            usage = d["usage"].clone();
        }
        let Some(c) = d["choices"].get(0) else { continue };
        let delta = &c["delta"];
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            content.get_or_insert_with(String::new).push_str(t);
        }
        if let Some(t) = delta["reasoning_content"].as_str() {
            reasoning.get_or_insert_with(String::new).push_str(t);
        }
        for tc in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = tc["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                assert!(tc["id"].is_string(), "a new call names its id");
                calls.push(json!({"id": tc["id"], "type": "function", "function": {"name": tc["function"]["name"], "arguments": ""}}));
            }
            let args = calls[i]["function"]["arguments"].as_str().unwrap().to_owned()
                + tc["function"]["arguments"].as_str().unwrap_or("");
            calls[i]["function"]["arguments"] = json!(args);
        }
        if !c["finish_reason"].is_null() {
            finish = c["finish_reason"].clone();
        }
    }
    assert!(done, "no [DONE]");
    let mut message = json!({"role": "assistant", "content": content});
    if let Some(r) = reasoning {
        message["reasoning_content"] = json!(r);
    }
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({"id": id, "object": "chat.completion", "created": created, "model": model,
           "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}], "usage": usage})
}

/// Assembles translated Anthropic events into the message they describe.
fn assemble_anthropic(out: &[u8]) -> Value {
    let mut msg = Value::Null;
    let mut partial: Vec<String> = Vec::new();
    let mut stopped = false;
    for (name, d) in sse_data(out) {
        assert_eq!(d["type"], name.as_str());
        assert!(!stopped, "an event after message_stop");
        match name.as_str() {
            "message_start" => msg = d["message"].clone(),
            "content_block_start" => {
                let i = d["index"].as_u64().unwrap() as usize;
                assert_eq!(i, msg["content"].as_array().unwrap().len(), "blocks in order");
                msg["content"]
                    .as_array_mut()
                    .unwrap()
                    .push(d["content_block"].clone());
                partial.push(String::new());
            }
            "content_block_delta" => {
                let i = d["index"].as_u64().unwrap() as usize;
                let b = &mut msg["content"][i];
                let dl = &d["delta"];
                match dl["type"].as_str().unwrap() {
                    "text_delta" => {
                        b["text"] =
                            json!(b["text"].as_str().unwrap().to_owned() + dl["text"].as_str().unwrap())
                    }
                    "thinking_delta" => {
                        b["thinking"] = json!(
                            b["thinking"].as_str().unwrap().to_owned() + dl["thinking"].as_str().unwrap()
                        )
                    }
                    "input_json_delta" => partial[i].push_str(dl["partial_json"].as_str().unwrap()),
                    other => panic!("{other}"),
                }
            }
            "content_block_stop" => {
                let i = d["index"].as_u64().unwrap() as usize;
                if msg["content"][i]["type"] == "tool_use" && !partial[i].is_empty() {
                    msg["content"][i]["input"] = serde_json::from_str(&partial[i]).unwrap();
                }
            }
            "message_delta" => {
                msg["stop_reason"] = d["delta"]["stop_reason"].clone();
                msg["stop_sequence"] = d["delta"]["stop_sequence"].clone();
                for (k, v) in d["usage"].as_object().unwrap() {
                    msg["usage"][k] = v.clone();
                }
            }
            "message_stop" => stopped = true,
            "ping" => {}
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(stopped);
    msg
}

/// With `json_mode`, the context of a JSON-mode request whose tool is the message's last
/// tool call (its input becomes text).
fn json_ctx(msg: &Value, json_mode: bool) -> ResponseContext {
    let tool = msg["content"]
        .as_array()
        .into_iter()
        .flatten()
        .rfind(|b| b["type"] == "tool_use");
    ResponseContext {
        json_tool: tool
            .filter(|_| json_mode)
            .and_then(|b| b["name"].as_str())
            .map(str::to_owned),
        ..ctx()
    }
}

fn cuts() -> impl proptest::strategy::Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0usize..100_000, 0..12)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Chat → Anthropic → Chat keeps every field both dialects have.
    #[test]
    fn translate_request_round_trip(seed in 1u64..) {
        let mut r = Rng(seed);
        let req = gen_chat_request(&mut r);
        let (msgs, ctx) = to_messages(req.clone()).unwrap();
        let (back, _) = to_chat(msgs.clone()).unwrap();
        proptest::prop_assert_eq!(normalize_chat(back), normalize_chat(req.clone()), "via {}", msgs);
        proptest::prop_assert_eq!(ctx.stream, req["stream"] == true);
    }

    /// Anthropic → Chat → Anthropic keeps the Anthropic request (made from a generated
    /// Chat request, so that it holds only what both dialects have).
    #[test]
    fn translate_anthropic_request_round_trip(seed in 1u64..) {
        let mut r = Rng(seed);
        let (msgs, _) = to_messages(gen_chat_request(&mut r)).unwrap();
        let (chat, ctx) = to_chat(msgs.clone()).unwrap();
        let (back, _) = to_messages(chat.clone()).unwrap();
        proptest::prop_assert_eq!(&back, &msgs, "via {}", chat);
        proptest::prop_assert_eq!(ctx.include_usage, msgs["stream"] == true);
    }

    /// A Responses request translates to the Anthropic request its Chat Completions twin
    /// does: the Responses translation keeps every field the three APIs share.
    #[test]
    fn translate_responses_request_agrees_with_chat(seed in 1u64..) {
        let mut r = Rng(seed);
        let mut chat = gen_chat_request(&mut r);
        let resp = chat_to_responses_request(&chat);
        chat.as_object_mut().unwrap().remove("stop");
        let (via_chat, _) = to_messages(chat).unwrap();
        let (via_resp, ctx) = from_responses(resp.clone()).unwrap();
        proptest::prop_assert_eq!(normalize_anthropic(via_resp), normalize_anthropic(via_chat), "from {}", resp);
        proptest::prop_assert_eq!(ctx.stream, resp["stream"] == true);
    }

    /// Anthropic → Chat → Anthropic, and Chat → Anthropic → Chat, for answers.
    #[test]
    fn translate_response_round_trip(seed in 1u64..) {
        let mut r = Rng(seed);
        let msg = gen_anthropic_message(&mut r, true);
        let (chat, u1) = message_to_chat_value(&obj(msg.clone()), &ctx()).unwrap();
        let (back, u2) = chat_to_message_value(&obj(chat.clone()), &ctx()).unwrap();
        proptest::prop_assert_eq!(&back, &msg, "via {}", chat);
        proptest::prop_assert_eq!(u1, u2);
        let chat = gen_chat_answer(&mut r);
        let (msg, _) = chat_to_message_value(&obj(chat.clone()), &ctx()).unwrap();
        let (back, _) = message_to_chat_value(&obj(msg.clone()), &ctx()).unwrap();
        proptest::prop_assert_eq!(&back, &chat, "via {}", msg);
    }

    /// Anthropic SSE cut anywhere → chat chunks that assemble into the complete translation.
    #[test]
    fn translate_stream_anthropic_to_chat_equals_complete(seed in 1u64.., cuts in cuts(), json_mode: bool) {
        let mut r = Rng(seed);
        let msg = gen_anthropic_message(&mut r, false);
        let input = anthropic_sse(&mut r, &msg);
        let ctx = || json_ctx(&msg, json_mode);
        let mut t = AnthropicToChatStream::new(ctx());
        let (out, res) = run(&mut t, &input, &cuts);
        res.unwrap();
        let (want, usage) = message_to_chat_value(&obj(msg.clone()), &ctx()).unwrap();
        proptest::prop_assert_eq!(assemble_chat(&out), want);
        proptest::prop_assert_eq!(t.usage(), usage);
    }

    /// Anthropic SSE cut anywhere → Responses events whose final response is the complete
    /// translation, and whose deltas add up to its items.
    #[test]
    fn translate_stream_anthropic_to_responses_equals_complete(seed in 1u64.., cuts in cuts(), json_mode: bool) {
        let mut r = Rng(seed);
        let msg = gen_anthropic_message(&mut r, false);
        let input = anthropic_sse(&mut r, &msg);
        let ctx = || json_ctx(&msg, json_mode);
        let mut t = AnthropicToResponsesStream::new(ctx());
        let (out, res) = run(&mut t, &input, &cuts);
        res.unwrap();
        let (want, usage) = message_to_responses_value(&obj(msg.clone()), &ctx()).unwrap();
        let ev = sse_data(&out);
        let (last_name, last) = ev.last().unwrap();
        proptest::prop_assert!(last_name == "response.completed" || last_name == "response.incomplete");
        proptest::prop_assert_eq!(&last["response"], &want);
        let mut deltas = std::collections::BTreeMap::<u64, String>::new();
        let mut items = Vec::new();
        for (i, (name, v)) in ev.iter().enumerate() {
            proptest::prop_assert_eq!(v["sequence_number"].as_u64(), Some(i as u64));
            if name.ends_with(".delta") {
                deltas.entry(v["output_index"].as_u64().unwrap()).or_default().push_str(v["delta"].as_str().unwrap());
            }
            if name == "response.output_item.done" {
                items.push(v["item"].clone());
            }
        }
        proptest::prop_assert_eq!(&Value::Array(items), &want["output"]);
        for (i, item) in want["output"].as_array().unwrap().iter().enumerate() {
            let got = deltas.get(&(i as u64)).cloned().unwrap_or_default();
            match item["type"].as_str().unwrap() {
                "message" => proptest::prop_assert_eq!(got.as_str(), item["content"][0]["text"].as_str().unwrap()),
                "reasoning" => proptest::prop_assert_eq!(got.as_str(), item["summary"][0]["text"].as_str().unwrap()),
                // An argument-less call may stream no fragment at all.
                _ if got.is_empty() => proptest::prop_assert_eq!(&item["arguments"], "{}"),
                _ => proptest::prop_assert_eq!(got.as_str(), item["arguments"].as_str().unwrap()),
            }
        }
        proptest::prop_assert_eq!(t.usage(), usage);
    }

    /// OpenAI chunks cut anywhere → Anthropic events that assemble into the complete translation.
    #[test]
    fn translate_stream_chat_to_anthropic_equals_complete(seed in 1u64.., cuts in cuts(), reasoning: bool) {
        let mut r = Rng(seed);
        let mut chat = gen_chat_answer(&mut r);
        if reasoning {
            chat["choices"][0]["message"]["reasoning_content"] = json!(r.text());
        }
        let input = chat_sse(&mut r, &chat);
        let mut t = ChatToAnthropicStream::new(ctx());
        let (out, res) = run(&mut t, &input, &cuts);
        res.unwrap();
        let (want, usage) = chat_to_message_value(&obj(chat), &ctx()).unwrap();
        proptest::prop_assert_eq!(assemble_anthropic(&out), want);
        proptest::prop_assert_eq!(t.usage(), usage);
    }

    /// Arbitrary bytes never panic any entry point.
    #[test]
    fn translate_hostile_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512), cuts in cuts()) {
        let o = opts();
        let _ = chat_to_messages(&data, &o);
        let _ = messages_to_chat(&data, &o);
        let _ = responses_to_messages(&data, &o);
        let _ = message_to_chat(&data, &ctx());
        let _ = chat_to_message(&data, &ctx());
        let _ = message_to_responses(&data, &ctx());
        let _ = error_to_openai(500, &data);
        let _ = error_to_anthropic(500, &data);
        for pair in [Pair::ChatOnAnthropic, Pair::ResponsesOnAnthropic, Pair::MessagesOnOpenAi] {
            let whole = run(&mut *pair.stream(ctx()), &data, &[]);
            let cut = run(&mut *pair.stream(ctx()), &data, &cuts);
            proptest::prop_assert_eq!((&whole.0, whole.1.is_err()), (&cut.0, cut.1.is_err()), "{:?}", pair);
        }
    }

    /// Well-formed events in any order, with odd indexes, types and values (what a
    /// confused or hostile upstream could send): no panic, and the same output however
    /// the bytes are cut.
    #[test]
    fn translate_scrambled_events_never_panic(seed in 1u64.., cuts in cuts()) {
        let mut r = Rng(seed);
        let num = |r: &mut Rng| match r.below(4) {
            0 => json!(r.below(3)),
            1 => json!(u64::MAX),
            2 => json!(u32::MAX),
            _ => json!(-1),
        };
        let mut anthropic = Vec::new();
        let mut chat = Vec::new();
        for _ in 0..r.below(24) {
            let ty = r.pick(&["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                              "message_delta", "message_stop", "ping", "error", "weird"]);
            let block = r.pick(&["text", "tool_use", "thinking", "redacted_thinking", "server_tool_use"]);
            let delta = r.pick(&["text_delta", "input_json_delta", "thinking_delta", "signature_delta", "citations_delta"]);
            let v = json!({
                "type": ty, "index": num(&mut r),
                "message": {"id": r.ident(), "model": r.ident(), "usage": {"input_tokens": num(&mut r), "output_tokens": num(&mut r)}},
                "content_block": {"type": block, "id": r.ident(), "name": r.pick(&["json_response", "f"]), "text": r.text()},
                "delta": {"type": delta, "text": r.text(), "partial_json": r.text(), "thinking": r.text(),
                          "stop_reason": r.pick(&["end_turn", "max_tokens", "tool_use", "refusal"])},
                "usage": {"output_tokens": num(&mut r), "cache_read_input_tokens": num(&mut r)},
                "error": {"type": "overloaded_error", "message": r.text()},
            });
            sse::write_event(&mut anthropic, ty, &v);
            let mut c = json!({"id": r.ident(), "model": r.ident(), "choices": [{"index": num(&mut r), "delta": {
                "content": r.text(), "reasoning_content": if r.bool() { json!(r.text()) } else { Value::Null },
                "tool_calls": [{"index": num(&mut r), "id": r.ident(), "function": {"name": r.ident(), "arguments": r.text()}}],
            }, "finish_reason": if r.bool() { json!("tool_calls") } else { Value::Null }}]});
            match r.below(5) {
                0 => c["usage"] = json!({"prompt_tokens": num(&mut r), "prompt_tokens_details": {"cached_tokens": num(&mut r)}}),
                1 => c["error"] = json!({"message": r.text(), "code": num(&mut r)}),
                2 => c["choices"] = json!([]),
                _ => {}
            }
            if r.below(8) == 0 {
                chat.extend_from_slice(b"data: [DONE]\n\n");
            } else {
                sse::write_data(&mut chat, &c);
            }
        }
        for (pair, input) in [(Pair::ChatOnAnthropic, &anthropic), (Pair::ResponsesOnAnthropic, &anthropic), (Pair::MessagesOnOpenAi, &chat)] {
            for json_tool in [None, Some("json_response".to_owned())] {
                let c = || ResponseContext { json_tool: json_tool.clone(), ..ctx() };
                let whole = run(&mut *pair.stream(c()), input, &[]);
                let cut = run(&mut *pair.stream(c()), input, &cuts);
                proptest::prop_assert_eq!((&whole.0, whole.1.is_err()), (&cut.0, cut.1.is_err()), "{:?}", pair);
            }
        }
    }

    /// Valid streams and bodies, truncated and with bytes flipped, never panic; a
    /// truncated request body is refused as JSON.
    #[test]
    fn translate_damaged_input_never_panics(seed in 1u64.., cut in 0usize..100_000, flips in proptest::collection::vec((0usize..100_000, proptest::num::u8::ANY), 0..4), cuts in cuts()) {
        let mut r = Rng(seed);
        let msg = gen_anthropic_message(&mut r, false);
        let chat = gen_chat_answer(&mut r);
        let req = gen_chat_request(&mut r).to_string().into_bytes();
        for (mut bytes, which) in [(anthropic_sse(&mut r, &msg), 0), (chat_sse(&mut r, &chat), 1), (req.clone(), 2),
                                  (msg.to_string().into_bytes(), 3), (chat.to_string().into_bytes(), 4)] {
            bytes.truncate(cut % (bytes.len() + 1));
            for (at, b) in &flips {
                if !bytes.is_empty() {
                    let n = bytes.len();
                    bytes[at % n] = *b;
                }
            }
            let pairs: &[Pair] = match which {
                0 => &[Pair::ChatOnAnthropic, Pair::ResponsesOnAnthropic],
                1 => &[Pair::MessagesOnOpenAi],
                _ => &[],
            };
            for pair in pairs {
                // However damaged, the output does not depend on how the bytes were cut.
                let whole = run(&mut *pair.stream(ctx()), &bytes, &[]);
                let cut = run(&mut *pair.stream(ctx()), &bytes, &cuts);
                proptest::prop_assert_eq!((&whole.0, whole.1.is_err()), (&cut.0, cut.1.is_err()), "{:?}", pair);
            }
            match which {
                0 | 1 => {}
                2 => {
                    let _ = chat_to_messages(&bytes, &opts());
                    let _ = messages_to_chat(&bytes, &opts());
                    let _ = responses_to_messages(&bytes, &opts());
                }
                _ => {
                    let _ = message_to_chat(&bytes, &ctx());
                    let _ = message_to_responses(&bytes, &ctx());
                    let _ = chat_to_message(&bytes, &ctx());
                }
            }
        }
        let short = &req[..cut % req.len()];
        proptest::prop_assert!(matches!(chat_to_messages(short, &opts()), Err(TranslateError::Json(_))));
    }
}

/// The mock upstream's own wire formats (what `switchyard up --demo` answers with), in
/// each of its JSON styles: streamed translations equal the complete ones.
#[test]
fn translate_mock_wire_formats() {
    use std::sync::Arc;
    use switchyard_mock::{
        wire::{Prepared, StreamEvents, StreamKind},
        Behavior, JsonStyle,
    };
    for style in [JsonStyle::Compact, JsonStyle::Spaced, JsonStyle::Hostile] {
        let b = Behavior {
            json_style: style,
            reply: "Héllo \"world\" 🦀 from the mock".into(),
            stream_chunks: 7,
            usage: switchyard_mock::Usage {
                prompt_tokens: 30,
                completion_tokens: 9,
                cached_tokens: 4,
                reasoning_tokens: 0,
                cache_write_tokens: 0,
            },
            ..Behavior::default()
        };
        let p = Arc::new(Prepared::new(b));
        let stream = |kind| {
            let mut ev = StreamEvents::new(p.clone(), kind, "demo", true);
            let mut out = Vec::new();
            while let Some(e) = ev.next_event() {
                out.extend_from_slice(&e.bytes);
            }
            out
        };
        let message = p.message.render("demo");
        let chat = p.chat.render("demo");
        // An OpenAI client on the mock's Anthropic side.
        let (want, usage) = message_to_chat(&message, &ctx()).unwrap();
        let mut t = AnthropicToChatStream::new(ctx());
        let (out, r) = run(&mut t, &stream(StreamKind::Messages), &[17, 301]);
        r.unwrap();
        assert_eq!(
            assemble_chat(&out),
            serde_json::from_slice::<Value>(&want).unwrap(),
            "{style:?}"
        );
        assert_eq!((t.usage(), usage.input, usage.cache_read), (usage, 30, 4));
        // A Responses client on the mock's Anthropic side.
        let (want, _) = message_to_responses(&message, &ctx()).unwrap();
        let mut t = AnthropicToResponsesStream::new(ctx());
        let (out, r) = run(&mut t, &stream(StreamKind::Messages), &[5]);
        r.unwrap();
        let last = sse_data(&out).pop().unwrap().1;
        assert_eq!(
            last["response"],
            serde_json::from_slice::<Value>(&want).unwrap(),
            "{style:?}"
        );
        // An Anthropic client (Claude Code) on the mock's OpenAI side: the demo's case.
        let (want, usage) = chat_to_message(&chat, &ctx()).unwrap();
        let mut t = ChatToAnthropicStream::new(ctx());
        let (out, r) = run(&mut t, &stream(StreamKind::Chat), &[1, 2, 3, 99]);
        r.unwrap();
        assert_eq!(
            assemble_anthropic(&out),
            serde_json::from_slice::<Value>(&want).unwrap(),
            "{style:?}"
        );
        assert_eq!((t.usage(), usage.input, usage.cache_read), (usage, 26, 4));
    }
}

#[test]
fn translate_deep_nesting_is_refused_not_overflowed() {
    let depth = 100_000;
    let mut body = br#"{"model":"m","messages":[{"role":"user","content":"#.to_vec();
    body.extend(std::iter::repeat_n(b'[', depth));
    body.extend(std::iter::repeat_n(b']', depth));
    body.extend_from_slice(b"}]}");
    assert!(matches!(
        chat_to_messages(&body, &opts()),
        Err(TranslateError::Json(_))
    ));
    assert!(matches!(
        messages_to_chat(&body, &opts()),
        Err(TranslateError::Json(_))
    ));
    assert!(matches!(
        message_to_chat(&body, &ctx()),
        Err(TranslateError::Upstream(_))
    ));
    // In a stream, a deep event is one bad event.
    let mut sse = b"event: message_start\ndata: ".to_vec();
    sse.extend(std::iter::repeat_n(b'[', depth));
    sse.extend_from_slice(b"\n\n");
    let mut t = AnthropicToChatStream::new(ctx());
    assert!(run(&mut t, &sse, &[]).1.is_err());
}
