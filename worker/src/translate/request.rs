//! Request bodies: OpenAI Chat Completions → Anthropic Messages, the reverse, and
//! OpenAI Responses → Anthropic Messages. Each top-level object is taken apart member by
//! member; whatever is left at the end is refused (`reject_rest`), so a field is either
//! translated, documented as harmless, or named in a 400.
use serde_json::{json, Value};

use super::{
    as_array, as_bool, as_number, as_object, as_string, as_u64, budget_effort, effort_budget, invalid,
    parse_request, path, reject_rest, take, take_required, unsupported, Obj, ResponseContext, Result,
    TranslateOptions, Translated,
};

/// The forced tool's name for `json_object` mode.
pub(super) const JSON_OBJECT_TOOL: &str = "json_response";

/// A message's content while it is built: a plain string stays a string.
#[derive(Debug)]
enum Content {
    Text(String),
    Blocks(Vec<Value>),
}

impl Content {
    fn into_blocks(self) -> Vec<Value> {
        match self {
            Self::Text(t) => vec![json!({"type": "text", "text": t})],
            Self::Blocks(b) => b,
        }
    }

    fn into_value(self) -> Value {
        match self {
            Self::Text(t) => Value::String(t),
            Self::Blocks(b) => Value::Array(b),
        }
    }
}

/// Anthropic turns under construction.
#[derive(Debug, Default)]
struct Turns {
    turns: Vec<(&'static str, Content)>,
    /// The last turn is a user turn made of tool results (so far): the next tool result,
    /// or the user message right after them, joins it.
    tool_turn: bool,
}

impl Turns {
    fn push(&mut self, role: &'static str, content: Content) {
        if role == "user" && self.tool_turn {
            if let Some((_, Content::Blocks(b))) = self.turns.last_mut() {
                b.extend(content.into_blocks());
                self.tool_turn = false;
                return;
            }
        }
        self.tool_turn = false;
        self.turns.push((role, content));
    }

    fn push_tool_result(&mut self, block: Value) {
        if self.tool_turn {
            if let Some((_, Content::Blocks(b))) = self.turns.last_mut() {
                b.push(block);
                return;
            }
        }
        self.turns.push(("user", Content::Blocks(vec![block])));
        self.tool_turn = true;
    }

    /// Appends a `tool_use` block to the assistant turn in hand, or opens one.
    fn push_tool_use(&mut self, block: Value) {
        if !self.tool_turn {
            if let Some(("assistant", c)) = self.turns.last_mut() {
                let mut blocks = std::mem::replace(c, Content::Blocks(vec![])).into_blocks();
                blocks.push(block);
                *c = Content::Blocks(blocks);
                return;
            }
        }
        self.push("assistant", Content::Blocks(vec![block]));
    }

    fn into_value(self) -> Value {
        Value::Array(
            self.turns
                .into_iter()
                .map(|(role, c)| json!({"role": role, "content": c.into_value()}))
                .collect(),
        )
    }
}

/// Text from a string or an array of `text` parts (`part_type` names the part type:
/// `text`, or `input_text` in Responses).
fn text_parts(v: Value, param: &str, part_types: &[&str]) -> Result<Vec<String>> {
    match v {
        Value::String(s) => Ok(vec![s]),
        Value::Array(parts) => parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let p_path = format!("{param}[{i}]");
                let mut p = as_object(p, &p_path)?;
                let ty = as_string(take_required(&mut p, &p_path, "type")?, &path(&p_path, "type"))?;
                if !part_types.contains(&ty.as_str()) {
                    return Err(unsupported(
                        path(&p_path, "type"),
                        format!("`{ty}` parts cannot be used here"),
                    ));
                }
                let text = as_string(take_required(&mut p, &p_path, "text")?, &path(&p_path, "text"))?;
                take(&mut p, "annotations");
                reject_rest(&p, &p_path)?;
                Ok(text)
            })
            .collect(),
        _ => Err(invalid(param, "expected a string or an array of text parts")),
    }
}

/// An image URL → an Anthropic image block.
fn image_block(url: String, param: &str) -> Result<Value> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, data)) = rest.split_once(',') else {
            return Err(invalid(param, "a data URL without a comma"));
        };
        let Some(media_type) = meta.strip_suffix(";base64") else {
            return Err(unsupported(param, "only base64 data URLs can be translated"));
        };
        return Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
        );
    }
    let lower = url.get(..8).unwrap_or("").to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(invalid(
        param,
        "an image URL must be http(s) or a base64 data URL",
    ))
}

/// OpenAI `image_url` part body `{url, detail}` → an Anthropic image block.
fn image_url_part(v: Value, param: &str) -> Result<Value> {
    let mut o = as_object(v, param)?;
    let url = as_string(take_required(&mut o, param, "url")?, &path(param, "url"))?;
    take(&mut o, "detail"); // a resolution hint: dropped (module docs)
    reject_rest(&o, param)?;
    image_block(url, &path(param, "url"))
}

/// Tool-call arguments text → the `input` object (`""` is no arguments).
fn parse_arguments(args: &str, param: &str) -> Result<Value> {
    if args.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(invalid(param, "the arguments must be a JSON object")),
        Err(e) => Err(invalid(param, format!("the arguments are not valid JSON: {e}"))),
    }
}

/// A function tool `{name, description, parameters, strict}` → an Anthropic tool.
fn function_tool(mut f: Obj, param: &str) -> Result<Value> {
    let name = as_string(take_required(&mut f, param, "name")?, &path(param, "name"))?;
    let mut tool = json!({"name": name});
    if let Some(d) = take(&mut f, "description") {
        tool["description"] = Value::String(as_string(d, &path(param, "description"))?);
    }
    tool["input_schema"] = match take(&mut f, "parameters") {
        Some(p) => Value::Object(as_object(p, &path(param, "parameters"))?),
        None => json!({"type": "object", "properties": {}}),
    };
    take(&mut f, "strict"); // Anthropic validates against input_schema anyway (module docs)
    reject_rest(&f, param)?;
    Ok(tool)
}

/// `tool_choice` in either OpenAI API → Anthropic's; `named` reads the function's name
/// from a `{type: function, ...}` object.
fn tool_choice(v: Value, param: &str, named: impl Fn(Obj) -> Result<String>) -> Result<Value> {
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "none" => Ok(json!({"type": "none"})),
            "required" => Ok(json!({"type": "any"})),
            _ => Err(invalid(param, format!("unknown tool_choice `{s}`"))),
        },
        Value::Object(mut o) => {
            let ty = as_string(take_required(&mut o, param, "type")?, &path(param, "type"))?;
            if ty != "function" {
                return Err(unsupported(
                    path(param, "type"),
                    format!("`{ty}` cannot be translated"),
                ));
            }
            Ok(json!({"type": "tool", "name": named(o)?}))
        }
        _ => Err(invalid(param, "expected a string or an object")),
    }
}

/// The OpenAI `user` and `safety_identifier` fields, each with the name it came by.
fn take_users(m: &mut Obj, common: &mut Common) -> Result<()> {
    for key in ["user", "safety_identifier"] {
        if let Some(u) = take(m, key) {
            common.users.push((as_string(u, key)?, key));
        }
    }
    Ok(())
}

/// The shared tail of both OpenAI → Anthropic translations.
#[derive(Default)]
struct Common {
    tools: Vec<Value>,
    tool_choice: Option<Value>,
    parallel: Option<bool>,
    /// `(name, description, schema)` of a JSON-mode tool.
    json: Option<(String, Option<String>, Value)>,
    json_param: &'static str,
    effort: Option<String>,
    effort_param: &'static str,
    users: Vec<(String, &'static str)>,
}

impl Common {
    /// Writes tools, tool_choice, thinking and metadata into `out`.
    fn apply(self, out: &mut Obj, max_tokens: u64, ctx: &mut ResponseContext) -> Result<()> {
        let mut tools = self.tools;
        let mut choice = self.tool_choice;
        if let Some((name, description, schema)) = self.json {
            if !tools.is_empty() {
                return Err(unsupported(
                    self.json_param,
                    "JSON mode is a forced tool on an Anthropic backend and cannot be combined with tools",
                ));
            }
            if schema.get("type").and_then(Value::as_str) != Some("object") {
                return Err(unsupported(
                    self.json_param,
                    "the schema's top level must be an object on an Anthropic backend",
                ));
            }
            let mut tool = json!({"name": name, "input_schema": schema});
            tool["description"] =
                Value::String(description.unwrap_or_else(|| "Give the answer as this tool's input.".into()));
            tools.push(tool);
            choice = Some(json!({"type": "tool", "name": name}));
            ctx.json_tool = Some(name);
        }
        if self.parallel == Some(false) && !tools.is_empty() {
            let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
            if c["type"] != "none" {
                c["disable_parallel_tool_use"] = Value::Bool(true);
            }
        }
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
        if let Some(c) = choice {
            out.insert("tool_choice".into(), c);
        }
        if let Some(effort) = self.effort {
            if effort != "none" {
                let Some(budget) = effort_budget(&effort) else {
                    return Err(unsupported(
                        self.effort_param,
                        format!("`{effort}` has no Anthropic equivalent"),
                    ));
                };
                if ctx.json_tool.is_some() {
                    // Anthropic refuses a forced tool while thinking.
                    return Err(unsupported(
                        self.effort_param,
                        "cannot be combined with JSON mode on an Anthropic backend",
                    ));
                }
                if max_tokens <= 1024 {
                    return Err(unsupported(
                        self.effort_param,
                        "Anthropic thinking needs a max_tokens above 1024",
                    ));
                }
                let budget = budget.min(max_tokens - 1);
                out.insert(
                    "thinking".into(),
                    json!({"type": "enabled", "budget_tokens": budget}),
                );
            }
        }
        let mut users = self.users.into_iter();
        if let Some((user, _)) = users.next() {
            for (other, param) in users {
                if other != user {
                    return Err(unsupported(
                        param,
                        "differs from `user`; Anthropic has one user id",
                    ));
                }
            }
            out.insert("metadata".into(), json!({"user_id": user}));
        }
        Ok(())
    }
}

/// Refuses `v` unless it is one of the harmless values `ok` accepts.
fn only_if(m: &mut Obj, key: &str, ok: impl Fn(&Value) -> bool) -> Result<()> {
    match take(m, key) {
        Some(v) if !ok(&v) => Err(unsupported(key, "has no equivalent in the backend's API")),
        _ => Ok(()),
    }
}

fn is_zero(v: &Value) -> bool {
    v.as_f64() == Some(0.0)
}

fn is_empty_object(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.is_empty())
}

/// Takes `temperature` for an Anthropic backend (which accepts 0..=1).
fn temperature(m: &mut Obj, out: &mut Obj) -> Result<()> {
    if let Some(t) = take(m, "temperature") {
        let t = as_number(t, "temperature")?;
        if t.as_f64().is_some_and(|x| x > 1.0) {
            return Err(unsupported("temperature", "Anthropic accepts 0 to 1"));
        }
        out.insert("temperature".into(), t);
    }
    if let Some(p) = take(m, "top_p") {
        out.insert("top_p".into(), as_number(p, "top_p")?);
    }
    Ok(())
}

/// `response_format`/`text.format` → the JSON-mode tool, if any.
fn json_format(
    v: Value,
    param: &'static str,
    nested: bool,
) -> Result<Option<(String, Option<String>, Value)>> {
    let mut f = as_object(v, param)?;
    let ty = as_string(take_required(&mut f, param, "type")?, &path(param, "type"))?;
    let r = match ty.as_str() {
        "text" => None,
        "json_object" => Some((JSON_OBJECT_TOOL.to_owned(), None, json!({"type": "object"}))),
        "json_schema" => {
            // Chat nests the schema in `json_schema`; Responses puts it beside `type`.
            let (mut s, sp) = if nested {
                let p = path(param, "json_schema");
                (as_object(take_required(&mut f, param, "json_schema")?, &p)?, p)
            } else {
                (std::mem::take(&mut f), param.to_owned())
            };
            let name = as_string(take_required(&mut s, &sp, "name")?, &path(&sp, "name"))?;
            let description = take(&mut s, "description")
                .map(|d| as_string(d, &path(&sp, "description")))
                .transpose()?;
            let schema = match take(&mut s, "schema") {
                Some(v) => Value::Object(as_object(v, &path(&sp, "schema"))?),
                None => json!({"type": "object"}),
            };
            take(&mut s, "strict"); // the tool's input is validated against the schema
            reject_rest(&s, &sp)?;
            Some((name, description, schema))
        }
        _ => {
            return Err(unsupported(
                path(param, "type"),
                format!("`{ty}` cannot be translated"),
            ))
        }
    };
    reject_rest(&f, param)?;
    Ok(r)
}

fn stop_sequences(v: Value) -> Result<Option<Value>> {
    match v {
        Value::String(s) => Ok(Some(json!([s]))),
        Value::Array(a) if a.is_empty() => Ok(None),
        Value::Array(a) => {
            if a.iter().all(Value::is_string) {
                Ok(Some(Value::Array(a)))
            } else {
                Err(invalid("stop", "expected strings"))
            }
        }
        _ => Err(invalid("stop", "expected a string or an array of strings")),
    }
}

/// The output limit from the first of `keys` present, or `default`; more than one is
/// refused (they could disagree).
fn max_tokens(m: &mut Obj, keys: &[&str], default: u64) -> Result<u64> {
    let mut found = None;
    for k in keys {
        if let Some(v) = take(m, k) {
            if found.is_some() {
                return Err(invalid(*k, format!("give only one of {}", keys.join(" and "))));
            }
            found = Some(as_u64(&v, k)?);
        }
    }
    Ok(found.unwrap_or(default))
}

/// The client's `model`, or the backend's name for it ([`TranslateOptions::model`]).
fn model(m: &mut Obj, opts: &TranslateOptions) -> Result<String> {
    let client = as_string(take_required(m, "", "model")?, "model")?;
    Ok(opts.model.clone().unwrap_or(client))
}

fn finish(mut out: Obj, ctx: ResponseContext, target: &'static str) -> Translated {
    out.retain(|_, v| !v.is_null());
    Translated {
        body: Value::Object(out).to_string().into_bytes(),
        path: target,
        ctx,
    }
}

/// OpenAI Chat Completions request → Anthropic Messages request (`POST /v1/messages`).
pub fn chat_to_messages(body: &[u8], opts: &TranslateOptions) -> Result<Translated> {
    let (out, ctx) = chat_to_messages_value(parse_request(body)?, opts)?;
    Ok(finish(out, ctx, "/v1/messages"))
}

pub(super) fn chat_to_messages_value(mut m: Obj, opts: &TranslateOptions) -> Result<(Obj, ResponseContext)> {
    let mut out = Obj::new();
    let mut ctx = ResponseContext {
        created: opts.now_unix,
        ..Default::default()
    };
    out.insert("model".into(), Value::String(model(&mut m, opts)?));
    let messages = as_array(take_required(&mut m, "", "messages")?, "messages")?;
    let mut system = Vec::new();
    let mut turns = Turns::default();
    for (i, msg) in messages.into_iter().enumerate() {
        chat_message(msg, &format!("messages[{i}]"), &mut system, &mut turns)?;
    }
    if !system.is_empty() {
        out.insert("system".into(), system_value(system));
    }
    out.insert("messages".into(), turns.into_value());
    let max = max_tokens(
        &mut m,
        &["max_completion_tokens", "max_tokens"],
        opts.default_max_tokens,
    )?;
    out.insert("max_tokens".into(), max.into());
    temperature(&mut m, &mut out)?;
    if let Some(s) = take(&mut m, "stop") {
        if let Some(s) = stop_sequences(s)? {
            out.insert("stop_sequences".into(), s);
        }
    }
    if let Some(s) = take(&mut m, "stream") {
        ctx.stream = as_bool(&s, "stream")?;
        out.insert("stream".into(), Value::Bool(ctx.stream));
    }
    if let Some(so) = take(&mut m, "stream_options") {
        let mut so = as_object(so, "stream_options")?;
        if let Some(u) = take(&mut so, "include_usage") {
            ctx.include_usage = as_bool(&u, "stream_options.include_usage")?;
        }
        take(&mut so, "include_obfuscation");
        reject_rest(&so, "stream_options")?;
    }
    let mut common = Common {
        json_param: "response_format",
        effort_param: "reasoning_effort",
        ..Default::default()
    };
    take_users(&mut m, &mut common)?;
    if let Some(tools) = take(&mut m, "tools") {
        for (i, t) in as_array(tools, "tools")?.into_iter().enumerate() {
            let p = format!("tools[{i}]");
            let mut t = as_object(t, &p)?;
            let ty = as_string(take_required(&mut t, &p, "type")?, &path(&p, "type"))?;
            if ty != "function" {
                return Err(unsupported(
                    path(&p, "type"),
                    format!("`{ty}` tools cannot be translated"),
                ));
            }
            let fp = path(&p, "function");
            let f = as_object(take_required(&mut t, &p, "function")?, &fp)?;
            common.tools.push(function_tool(f, &fp)?);
            reject_rest(&t, &p)?;
        }
    }
    if let Some(c) = take(&mut m, "tool_choice") {
        common.tool_choice = Some(tool_choice(c, "tool_choice", |mut o| {
            let f = as_object(
                take_required(&mut o, "tool_choice", "function")?,
                "tool_choice.function",
            )?;
            let name = f
                .get("name")
                .cloned()
                .ok_or_else(|| invalid("tool_choice.function.name", "required"))?;
            reject_rest(&o, "tool_choice")?;
            as_string(name, "tool_choice.function.name")
        })?);
    }
    if let Some(p) = take(&mut m, "parallel_tool_calls") {
        common.parallel = Some(as_bool(&p, "parallel_tool_calls")?);
    }
    if let Some(rf) = take(&mut m, "response_format") {
        common.json = json_format(rf, "response_format", true)?;
    }
    if let Some(e) = take(&mut m, "reasoning_effort") {
        common.effort = Some(as_string(e, "reasoning_effort")?);
    }
    common.apply(&mut out, max, &mut ctx)?;
    // Harmless values of fields Anthropic lacks; any other value is refused.
    only_if(&mut m, "n", |v| v.as_u64() == Some(1))?;
    only_if(&mut m, "logprobs", |v| v == &Value::Bool(false))?;
    only_if(&mut m, "presence_penalty", is_zero)?;
    only_if(&mut m, "frequency_penalty", is_zero)?;
    only_if(&mut m, "logit_bias", is_empty_object)?;
    only_if(&mut m, "metadata", is_empty_object)?;
    only_if(&mut m, "store", |v| v == &Value::Bool(false))?;
    only_if(&mut m, "service_tier", |v| v == "auto" || v == "default")?;
    only_if(&mut m, "modalities", |v| v == &json!(["text"]))?;
    take(&mut m, "prompt_cache_key");
    reject_rest(&m, "")?;
    Ok((out, ctx))
}

fn system_value(system: Vec<String>) -> Value {
    if system.len() == 1 {
        return Value::String(system.into_iter().next().unwrap_or_default());
    }
    Value::Array(
        system
            .into_iter()
            .map(|t| json!({"type": "text", "text": t}))
            .collect(),
    )
}

/// One Chat Completions message into the system list or the turns.
fn chat_message(msg: Value, p: &str, system: &mut Vec<String>, turns: &mut Turns) -> Result<()> {
    let mut m = as_object(msg, p)?;
    let role = as_string(take_required(&mut m, p, "role")?, &path(p, "role"))?;
    let cp = path(p, "content");
    match role.as_str() {
        "system" | "developer" => {
            system.extend(text_parts(take_required(&mut m, p, "content")?, &cp, &["text"])?);
        }
        "user" => {
            let content = match take_required(&mut m, p, "content")? {
                Value::String(s) => Content::Text(s),
                Value::Array(parts) => {
                    let mut blocks = Vec::with_capacity(parts.len());
                    for (i, part) in parts.into_iter().enumerate() {
                        let pp = format!("{cp}[{i}]");
                        let mut part = as_object(part, &pp)?;
                        let ty = as_string(take_required(&mut part, &pp, "type")?, &path(&pp, "type"))?;
                        blocks.push(match ty.as_str() {
                            "text" => {
                                let t =
                                    as_string(take_required(&mut part, &pp, "text")?, &path(&pp, "text"))?;
                                json!({"type": "text", "text": t})
                            }
                            "image_url" => image_url_part(
                                take_required(&mut part, &pp, "image_url")?,
                                &path(&pp, "image_url"),
                            )?,
                            _ => {
                                return Err(unsupported(
                                    path(&pp, "type"),
                                    format!("`{ty}` parts cannot be translated"),
                                ))
                            }
                        });
                        reject_rest(&part, &pp)?;
                    }
                    Content::Blocks(blocks)
                }
                _ => return Err(invalid(cp, "expected a string or an array of parts")),
            };
            turns.push("user", content);
        }
        "assistant" => {
            let mut blocks = Vec::new();
            let mut plain = None;
            match take(&mut m, "content") {
                None => {}
                Some(Value::String(s)) => plain = Some(s),
                Some(v) => {
                    for t in text_parts(v, &cp, &["text", "refusal"])? {
                        blocks.push(json!({"type": "text", "text": t}));
                    }
                }
            }
            if let Some(r) = take(&mut m, "refusal") {
                blocks.push(json!({"type": "text", "text": as_string(r, &path(p, "refusal"))?}));
            }
            take(&mut m, "reasoning_content"); // cannot be replayed (module docs)
            let calls = match take(&mut m, "tool_calls") {
                Some(c) => as_array(c, &path(p, "tool_calls"))?,
                None => vec![],
            };
            if calls.is_empty() && blocks.is_empty() {
                turns.push("assistant", Content::Text(plain.unwrap_or_default()));
            } else {
                if let Some(s) = plain.filter(|s| !s.is_empty()) {
                    blocks.insert(0, json!({"type": "text", "text": s}));
                }
                for (j, call) in calls.into_iter().enumerate() {
                    blocks.push(tool_call(call, &format!("{p}.tool_calls[{j}]"))?);
                }
                turns.push("assistant", Content::Blocks(blocks));
            }
        }
        "tool" => {
            let id = as_string(
                take_required(&mut m, p, "tool_call_id")?,
                &path(p, "tool_call_id"),
            )?;
            let content = match take_required(&mut m, p, "content")? {
                Value::String(s) => Value::String(s),
                v => Value::Array(
                    text_parts(v, &cp, &["text"])?
                        .into_iter()
                        .map(|t| json!({"type": "text", "text": t}))
                        .collect(),
                ),
            };
            turns.push_tool_result(json!({"type": "tool_result", "tool_use_id": id, "content": content}));
        }
        "function" => {
            return Err(unsupported(
                path(p, "role"),
                "deprecated `function` messages cannot be translated",
            ))
        }
        _ => return Err(invalid(path(p, "role"), format!("unknown role `{role}`"))),
    }
    reject_rest(&m, p)
}

/// An assistant's `tool_calls[j]` → a `tool_use` block.
fn tool_call(call: Value, p: &str) -> Result<Value> {
    let mut c = as_object(call, p)?;
    let id = as_string(take_required(&mut c, p, "id")?, &path(p, "id"))?;
    if let Some(ty) = take(&mut c, "type") {
        if ty != "function" {
            return Err(unsupported(
                path(p, "type"),
                "only function calls can be translated",
            ));
        }
    }
    let fp = path(p, "function");
    let mut f = as_object(take_required(&mut c, p, "function")?, &fp)?;
    let name = as_string(take_required(&mut f, &fp, "name")?, &path(&fp, "name"))?;
    let ap = path(&fp, "arguments");
    let args = match take(&mut f, "arguments") {
        Some(a) => as_string(a, &ap)?,
        None => String::new(),
    };
    let input = parse_arguments(&args, &ap)?;
    reject_rest(&f, &fp)?;
    reject_rest(&c, p)?;
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

/// OpenAI Responses request → Anthropic Messages request (`POST /v1/messages`).
pub fn responses_to_messages(body: &[u8], opts: &TranslateOptions) -> Result<Translated> {
    let (out, ctx) = responses_to_messages_value(parse_request(body)?, opts)?;
    Ok(finish(out, ctx, "/v1/messages"))
}

pub(super) fn responses_to_messages_value(
    mut m: Obj,
    opts: &TranslateOptions,
) -> Result<(Obj, ResponseContext)> {
    let mut out = Obj::new();
    let mut ctx = ResponseContext {
        created: opts.now_unix,
        include_usage: true,
        ..Default::default()
    };
    out.insert("model".into(), Value::String(model(&mut m, opts)?));
    let mut system = Vec::new();
    if let Some(i) = take(&mut m, "instructions") {
        system.push(as_string(i, "instructions")?);
    }
    let mut turns = Turns::default();
    match take_required(&mut m, "", "input")? {
        Value::String(s) => turns.push("user", Content::Text(s)),
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                responses_item(item, &format!("input[{i}]"), &mut system, &mut turns)?;
            }
        }
        _ => return Err(invalid("input", "expected a string or an array of items")),
    }
    if !system.is_empty() {
        out.insert("system".into(), system_value(system));
    }
    out.insert("messages".into(), turns.into_value());
    let max = max_tokens(&mut m, &["max_output_tokens"], opts.default_max_tokens)?;
    out.insert("max_tokens".into(), max.into());
    temperature(&mut m, &mut out)?;
    if let Some(s) = take(&mut m, "stream") {
        ctx.stream = as_bool(&s, "stream")?;
        out.insert("stream".into(), Value::Bool(ctx.stream));
    }
    if let Some(so) = take(&mut m, "stream_options") {
        let mut so = as_object(so, "stream_options")?;
        take(&mut so, "include_obfuscation");
        reject_rest(&so, "stream_options")?;
    }
    let mut common = Common {
        json_param: "text.format",
        effort_param: "reasoning.effort",
        ..Default::default()
    };
    take_users(&mut m, &mut common)?;
    if let Some(tools) = take(&mut m, "tools") {
        for (i, t) in as_array(tools, "tools")?.into_iter().enumerate() {
            let p = format!("tools[{i}]");
            let mut t = as_object(t, &p)?;
            let ty = as_string(take_required(&mut t, &p, "type")?, &path(&p, "type"))?;
            if ty != "function" {
                return Err(unsupported(
                    path(&p, "type"),
                    format!("the built-in `{ty}` tool has no Anthropic equivalent"),
                ));
            }
            common.tools.push(function_tool(t, &p)?);
        }
    }
    if let Some(c) = take(&mut m, "tool_choice") {
        common.tool_choice = Some(tool_choice(c, "tool_choice", |mut o| {
            let name = take_required(&mut o, "tool_choice", "name")?;
            reject_rest(&o, "tool_choice")?;
            as_string(name, "tool_choice.name")
        })?);
    }
    if let Some(p) = take(&mut m, "parallel_tool_calls") {
        common.parallel = Some(as_bool(&p, "parallel_tool_calls")?);
    }
    if let Some(r) = take(&mut m, "reasoning") {
        let mut r = as_object(r, "reasoning")?;
        if let Some(e) = take(&mut r, "effort") {
            common.effort = Some(as_string(e, "reasoning.effort")?);
        }
        take(&mut r, "summary");
        take(&mut r, "generate_summary");
        reject_rest(&r, "reasoning")?;
    }
    if let Some(t) = take(&mut m, "text") {
        let mut t = as_object(t, "text")?;
        if let Some(f) = take(&mut t, "format") {
            common.json = json_format(f, "text.format", false)?;
        }
        if let Some(v) = take(&mut t, "verbosity") {
            if v != "medium" {
                return Err(unsupported("text.verbosity", "has no Anthropic equivalent"));
            }
        }
        reject_rest(&t, "text")?;
    }
    common.apply(&mut out, max, &mut ctx)?;
    take(&mut m, "store"); // nothing is stored either way (module docs)
    take(&mut m, "prompt_cache_key");
    if let Some(inc) = take(&mut m, "include") {
        for (i, v) in as_array(inc, "include")?.iter().enumerate() {
            if v != "reasoning.encrypted_content" {
                return Err(unsupported(
                    format!("include[{i}]"),
                    "cannot be produced by an Anthropic backend",
                ));
            }
        }
    }
    only_if(&mut m, "metadata", is_empty_object)?;
    only_if(&mut m, "service_tier", |v| v == "auto" || v == "default")?;
    only_if(&mut m, "truncation", |v| v == "disabled")?;
    only_if(&mut m, "background", |v| v == &Value::Bool(false))?;
    reject_rest(&m, "")?;
    Ok((out, ctx))
}

/// One Responses input item.
fn responses_item(item: Value, p: &str, system: &mut Vec<String>, turns: &mut Turns) -> Result<()> {
    let mut it = as_object(item, p)?;
    let ty = match take(&mut it, "type") {
        Some(t) => as_string(t, &path(p, "type"))?,
        None if it.contains_key("role") => "message".to_owned(),
        None => return Err(invalid(path(p, "type"), "required")),
    };
    // Echoed output items carry these; they mean nothing to a new request.
    take(&mut it, "id");
    take(&mut it, "status");
    match ty.as_str() {
        "message" => {
            let role = as_string(take_required(&mut it, p, "role")?, &path(p, "role"))?;
            let cp = path(p, "content");
            let content = take_required(&mut it, p, "content")?;
            match role.as_str() {
                "system" | "developer" => system.extend(text_parts(content, &cp, &["input_text"])?),
                "assistant" => match content {
                    Value::String(s) => turns.push("assistant", Content::Text(s)),
                    v => {
                        let blocks = text_parts(v, &cp, &["output_text", "refusal", "input_text"])?
                            .into_iter()
                            .map(|t| json!({"type": "text", "text": t}))
                            .collect();
                        turns.push("assistant", Content::Blocks(blocks));
                    }
                },
                "user" => {
                    let c = match content {
                        Value::String(s) => Content::Text(s),
                        Value::Array(parts) => {
                            let mut blocks = Vec::with_capacity(parts.len());
                            for (i, part) in parts.into_iter().enumerate() {
                                let pp = format!("{cp}[{i}]");
                                let mut part = as_object(part, &pp)?;
                                let ty =
                                    as_string(take_required(&mut part, &pp, "type")?, &path(&pp, "type"))?;
                                blocks.push(match ty.as_str() {
                                    "input_text" => {
                                        let t = as_string(
                                            take_required(&mut part, &pp, "text")?,
                                            &path(&pp, "text"),
                                        )?;
                                        json!({"type": "text", "text": t})
                                    }
                                    "input_image" => {
                                        take(&mut part, "detail");
                                        let url = as_string(
                                            take_required(&mut part, &pp, "image_url")?,
                                            &path(&pp, "image_url"),
                                        )?;
                                        image_block(url, &path(&pp, "image_url"))?
                                    }
                                    _ => {
                                        return Err(unsupported(
                                            path(&pp, "type"),
                                            format!("`{ty}` parts cannot be translated"),
                                        ))
                                    }
                                });
                                reject_rest(&part, &pp)?;
                            }
                            Content::Blocks(blocks)
                        }
                        _ => return Err(invalid(cp, "expected a string or an array of parts")),
                    };
                    turns.push("user", c);
                }
                _ => return Err(invalid(path(p, "role"), format!("unknown role `{role}`"))),
            }
        }
        "function_call" => {
            let id = as_string(take_required(&mut it, p, "call_id")?, &path(p, "call_id"))?;
            let name = as_string(take_required(&mut it, p, "name")?, &path(p, "name"))?;
            let ap = path(p, "arguments");
            let args = as_string(take_required(&mut it, p, "arguments")?, &ap)?;
            let input = parse_arguments(&args, &ap)?;
            turns.push_tool_use(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
        "function_call_output" => {
            let id = as_string(take_required(&mut it, p, "call_id")?, &path(p, "call_id"))?;
            let op = path(p, "output");
            let content = match take_required(&mut it, p, "output")? {
                Value::String(s) => Value::String(s),
                v => Value::Array(
                    text_parts(v, &op, &["input_text", "output_text"])?
                        .into_iter()
                        .map(|t| json!({"type": "text", "text": t}))
                        .collect(),
                ),
            };
            turns.push_tool_result(json!({"type": "tool_result", "tool_use_id": id, "content": content}));
        }
        "reasoning" => {
            // Encrypted or summarised OpenAI reasoning cannot be replayed (module docs).
            it.clear();
        }
        _ => {
            return Err(unsupported(
                path(p, "type"),
                format!("`{ty}` items cannot be translated"),
            ))
        }
    }
    reject_rest(&it, p)
}

/// Anthropic Messages request → OpenAI Chat Completions request
/// (`POST /v1/chat/completions`).
pub fn messages_to_chat(body: &[u8], opts: &TranslateOptions) -> Result<Translated> {
    let (out, ctx) = messages_to_chat_value(parse_request(body)?, opts)?;
    Ok(finish(out, ctx, "/v1/chat/completions"))
}

pub(super) fn messages_to_chat_value(mut m: Obj, opts: &TranslateOptions) -> Result<(Obj, ResponseContext)> {
    let mut out = Obj::new();
    let mut ctx = ResponseContext {
        created: opts.now_unix,
        ..Default::default()
    };
    out.insert("model".into(), Value::String(model(&mut m, opts)?));
    let mut messages = Vec::new();
    if let Some(s) = take(&mut m, "system") {
        let content = match s {
            Value::String(s) => Value::String(s),
            Value::Array(blocks) => {
                let mut texts = Vec::with_capacity(blocks.len());
                for (i, b) in blocks.into_iter().enumerate() {
                    texts.push(text_block(b, &format!("system[{i}]"))?);
                }
                if texts.len() == 1 {
                    Value::String(texts.remove(0))
                } else {
                    Value::Array(
                        texts
                            .into_iter()
                            .map(|t| json!({"type": "text", "text": t}))
                            .collect(),
                    )
                }
            }
            _ => return Err(invalid("system", "expected a string or an array of text blocks")),
        };
        messages.push(json!({"role": "system", "content": content}));
    }
    let turns = as_array(take_required(&mut m, "", "messages")?, "messages")?;
    if let Some(last) = turns.len().checked_sub(1) {
        if turns[last].get("role").is_some_and(|r| r == "assistant") {
            // Anthropic continues a final assistant turn; OpenAI would answer it anew.
            return Err(unsupported(
                format!("messages[{last}]"),
                "a final assistant turn (prefill) has no OpenAI equivalent",
            ));
        }
    }
    for (i, t) in turns.into_iter().enumerate() {
        anthropic_turn(t, &format!("messages[{i}]"), &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));
    let mt = as_u64(&take_required(&mut m, "", "max_tokens")?, "max_tokens")?;
    let key = if opts.max_completion_tokens {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    out.insert(key.into(), mt.into());
    for k in ["temperature", "top_p"] {
        if let Some(v) = take(&mut m, k) {
            out.insert(k.into(), as_number(v, k)?);
        }
    }
    if let Some(s) = take(&mut m, "stop_sequences") {
        let s = as_array(s, "stop_sequences")?;
        if !s.iter().all(Value::is_string) {
            return Err(invalid("stop_sequences", "expected strings"));
        }
        if !s.is_empty() {
            out.insert("stop".into(), Value::Array(s));
        }
    }
    if let Some(s) = take(&mut m, "stream") {
        ctx.stream = as_bool(&s, "stream")?;
        out.insert("stream".into(), Value::Bool(ctx.stream));
        if ctx.stream {
            out.insert("stream_options".into(), json!({"include_usage": true}));
            ctx.include_usage = true;
        }
    }
    if let Some(md) = take(&mut m, "metadata") {
        let mut md = as_object(md, "metadata")?;
        if let Some(u) = take(&mut md, "user_id") {
            out.insert("user".into(), Value::String(as_string(u, "metadata.user_id")?));
        }
        reject_rest(&md, "metadata")?;
    }
    if let Some(tools) = take(&mut m, "tools") {
        let mut list = Vec::new();
        for (i, t) in as_array(tools, "tools")?.into_iter().enumerate() {
            let p = format!("tools[{i}]");
            let mut t = as_object(t, &p)?;
            if let Some(ty) = take(&mut t, "type") {
                if ty != "custom" {
                    return Err(unsupported(
                        path(&p, "type"),
                        "Anthropic server tools have no OpenAI equivalent",
                    ));
                }
            }
            let name = as_string(take_required(&mut t, &p, "name")?, &path(&p, "name"))?;
            let mut f = json!({"name": name});
            if let Some(d) = take(&mut t, "description") {
                f["description"] = Value::String(as_string(d, &path(&p, "description"))?);
            }
            f["parameters"] = Value::Object(as_object(
                take_required(&mut t, &p, "input_schema")?,
                &path(&p, "input_schema"),
            )?);
            take(&mut t, "cache_control");
            reject_rest(&t, &p)?;
            list.push(json!({"type": "function", "function": f}));
        }
        if !list.is_empty() {
            out.insert("tools".into(), Value::Array(list));
        }
    }
    if let Some(c) = take(&mut m, "tool_choice") {
        let mut c = as_object(c, "tool_choice")?;
        let ty = as_string(take_required(&mut c, "tool_choice", "type")?, "tool_choice.type")?;
        let choice = match ty.as_str() {
            "auto" => json!("auto"),
            "any" => json!("required"),
            "none" => json!("none"),
            "tool" => {
                let name = as_string(take_required(&mut c, "tool_choice", "name")?, "tool_choice.name")?;
                json!({"type": "function", "function": {"name": name}})
            }
            _ => {
                return Err(unsupported(
                    "tool_choice.type",
                    format!("`{ty}` cannot be translated"),
                ))
            }
        };
        if let Some(d) = take(&mut c, "disable_parallel_tool_use") {
            if as_bool(&d, "tool_choice.disable_parallel_tool_use")? {
                out.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
        reject_rest(&c, "tool_choice")?;
        out.insert("tool_choice".into(), choice);
    }
    if let Some(t) = take(&mut m, "thinking") {
        let mut t = as_object(t, "thinking")?;
        let ty = as_string(take_required(&mut t, "thinking", "type")?, "thinking.type")?;
        match ty.as_str() {
            "enabled" => {
                let b = as_u64(
                    &take_required(&mut t, "thinking", "budget_tokens")?,
                    "thinking.budget_tokens",
                )?;
                out.insert("reasoning_effort".into(), budget_effort(b).into());
            }
            // The model decides how much to think: the backend's own default reasoning
            // (an `output_config.effort` below sets it).
            "adaptive" | "disabled" => {}
            _ => {
                return Err(unsupported(
                    "thinking.type",
                    format!("`{ty}` cannot be translated"),
                ))
            }
        }
        reject_rest(&t, "thinking")?;
    }
    if let Some(c) = take(&mut m, "context_management") {
        context_management(c)?;
    }
    if let Some(c) = take(&mut m, "output_config") {
        let mut c = as_object(c, "output_config")?;
        if let Some(e) = take(&mut c, "effort") {
            let e = as_string(e, "output_config.effort")?;
            let effort = match e.as_str() {
                "low" | "medium" | "high" => e,
                "max" => "high".to_string(),
                _ => {
                    return Err(unsupported(
                        "output_config.effort",
                        format!("`{e}` cannot be translated"),
                    ))
                }
            };
            out.insert("reasoning_effort".into(), effort.into());
        }
        reject_rest(&c, "output_config")?;
    }
    only_if(&mut m, "service_tier", |v| v == "auto")?;
    reject_rest(&m, "")?;
    Ok((out, ctx))
}

/// Anthropic's `context_management` (Claude Code sends it with thinking on): edits the
/// server applies to the conversation before the model reads it. `clear_thinking_*` edits
/// drop earlier turns' thinking blocks, which the translation drops anyway, so they are
/// harmless; any other edit (clearing tool results, say) changes what the model sees and
/// has no OpenAI equivalent, so it is refused, naming the edit.
fn context_management(c: Value) -> Result<()> {
    let mut c = as_object(c, "context_management")?;
    if let Some(edits) = take(&mut c, "edits") {
        for (i, e) in as_array(edits, "context_management.edits")?
            .into_iter()
            .enumerate()
        {
            let p = format!("context_management.edits[{i}]");
            let e = as_object(e, &p)?;
            let ty = e.get("type").and_then(Value::as_str).unwrap_or_default();
            if !ty.starts_with("clear_thinking_") {
                return Err(unsupported(
                    path(&p, "type"),
                    format!("the `{ty}` edit has no OpenAI equivalent"),
                ));
            }
        }
    }
    reject_rest(&c, "context_management")
}

/// A `{type: text, text}` block (its `cache_control` dropped) → its text.
fn text_block(b: Value, p: &str) -> Result<String> {
    let mut b = as_object(b, p)?;
    let ty = as_string(take_required(&mut b, p, "type")?, &path(p, "type"))?;
    if ty != "text" {
        return Err(unsupported(
            path(p, "type"),
            format!("`{ty}` blocks cannot be used here"),
        ));
    }
    let t = as_string(take_required(&mut b, p, "text")?, &path(p, "text"))?;
    take(&mut b, "cache_control");
    reject_rest(&b, p)?;
    Ok(t)
}

/// An Anthropic image `source` → an OpenAI `image_url` part.
fn image_part(mut b: Obj, p: &str) -> Result<Value> {
    let sp = path(p, "source");
    let mut s = as_object(take_required(&mut b, p, "source")?, &sp)?;
    let ty = as_string(take_required(&mut s, &sp, "type")?, &path(&sp, "type"))?;
    let url = match ty.as_str() {
        "base64" => {
            let mt = as_string(
                take_required(&mut s, &sp, "media_type")?,
                &path(&sp, "media_type"),
            )?;
            let data = as_string(take_required(&mut s, &sp, "data")?, &path(&sp, "data"))?;
            format!("data:{mt};base64,{data}")
        }
        "url" => as_string(take_required(&mut s, &sp, "url")?, &path(&sp, "url"))?,
        _ => {
            return Err(unsupported(
                path(&sp, "type"),
                format!("`{ty}` images cannot be translated"),
            ))
        }
    };
    reject_rest(&s, &sp)?;
    take(&mut b, "cache_control");
    reject_rest(&b, p)?;
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// One Anthropic turn → one or more Chat Completions messages.
fn anthropic_turn(t: Value, p: &str, out: &mut Vec<Value>) -> Result<()> {
    let mut t = as_object(t, p)?;
    let role = as_string(take_required(&mut t, p, "role")?, &path(p, "role"))?;
    let cp = path(p, "content");
    let content = take_required(&mut t, p, "content")?;
    reject_rest(&t, p)?;
    let blocks = match (role.as_str(), content) {
        ("user" | "assistant", Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        ("user" | "assistant", Value::Array(b)) => b,
        ("user" | "assistant", _) => return Err(invalid(cp, "expected a string or an array of blocks")),
        _ => return Err(invalid(path(p, "role"), format!("unknown role `{role}`"))),
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    // Images of tool results, sent after the tool messages in the turn's user message.
    let mut late_images = Vec::new();
    for (i, b) in blocks.into_iter().enumerate() {
        let bp = format!("{cp}[{i}]");
        let mut b = as_object(b, &bp)?;
        let ty = as_string(take_required(&mut b, &bp, "type")?, &path(&bp, "type"))?;
        match (role.as_str(), ty.as_str()) {
            (_, "text") => {
                b.insert("type".into(), Value::String("text".into()));
                parts.push(json!({"type": "text", "text": text_block(Value::Object(b), &bp)?}));
            }
            ("user", "image") => parts.push(image_part(b, &bp)?),
            ("user", "tool_result") => {
                let id = as_string(
                    take_required(&mut b, &bp, "tool_use_id")?,
                    &path(&bp, "tool_use_id"),
                )?;
                let is_error = match take(&mut b, "is_error") {
                    Some(e) => as_bool(&e, &path(&bp, "is_error"))?,
                    None => false,
                };
                let rp = path(&bp, "content");
                let mut content = match take(&mut b, "content") {
                    None => Value::String(String::new()),
                    Some(Value::String(s)) => Value::String(s),
                    Some(Value::Array(inner)) => {
                        let mut texts = Vec::with_capacity(inner.len());
                        for (j, ib) in inner.into_iter().enumerate() {
                            let ip = format!("{rp}[{j}]");
                            if ib.get("type").is_some_and(|t| t == "image") {
                                // OpenAI tool messages carry text only: the image follows
                                // in a user message (module docs).
                                let mut ib = as_object(ib, &ip)?;
                                ib.remove("type");
                                late_images.push(image_part(ib, &ip)?);
                                continue;
                            }
                            texts.push(json!({"type": "text", "text": text_block(ib, &ip)?}));
                        }
                        if texts.is_empty() {
                            Value::String(String::new())
                        } else {
                            Value::Array(texts)
                        }
                    }
                    Some(_) => return Err(invalid(rp, "expected a string or an array of blocks")),
                };
                if is_error {
                    // OpenAI has no error flag on a tool result: say it in the text.
                    content = match content {
                        Value::String(s) => Value::String(format!("Error: {s}")),
                        Value::Array(mut a) => {
                            a.insert(0, json!({"type": "text", "text": "Error:"}));
                            Value::Array(a)
                        }
                        v => v,
                    };
                }
                take(&mut b, "cache_control");
                reject_rest(&b, &bp)?;
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            ("assistant", "tool_use") => {
                let id = as_string(take_required(&mut b, &bp, "id")?, &path(&bp, "id"))?;
                let name = as_string(take_required(&mut b, &bp, "name")?, &path(&bp, "name"))?;
                let input = Value::Object(as_object(
                    take_required(&mut b, &bp, "input")?,
                    &path(&bp, "input"),
                )?);
                take(&mut b, "cache_control");
                reject_rest(&b, &bp)?;
                calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}}));
            }
            ("assistant", "thinking" | "redacted_thinking") => {} // cannot be replayed (module docs)
            _ => {
                return Err(unsupported(
                    path(&bp, "type"),
                    format!("`{ty}` blocks cannot be translated"),
                ))
            }
        }
    }
    if role == "user" {
        late_images.append(&mut parts);
        if !late_images.is_empty() {
            out.push(json!({"role": "user", "content": late_images}));
        }
        return Ok(());
    }
    let content = match parts.len() {
        0 => Value::Null,
        1 => parts.remove(0)["text"].take(),
        _ => Value::Array(parts),
    };
    let mut msg = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    }
    out.push(msg);
    Ok(())
}
