"""Official openai and anthropic SDKs across dialects through a Switchyard worker
(issue 17 §3): the openai SDK on a model served by an anthropic-kind backend, and the
anthropic SDK on one served by an openai-kind backend. Plain, streaming, tool-call,
tool round-trip and streaming tool-call calls, usage, and a refused field.

Env: SY_BASE (worker URL), SY_KEY, SY_OA_ON_AN (model for the openai SDK),
SY_AN_ON_OA (model for the anthropic SDK). The mock upstream calls the first tool it is
given with {"location": "Paris"}, and answers with text once the last message carries a
tool result. Exits non-zero with a message on the first failure.
"""
import json
import os
import sys

import anthropic
import openai

base = os.environ["SY_BASE"]
key = os.environ["SY_KEY"]
oa_model = os.environ["SY_OA_ON_AN"]
an_model = os.environ["SY_AN_ON_OA"]
ARGS = {"location": "Paris"}
SCHEMA = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}


def check(cond, what, detail=""):
    if not cond:
        sys.exit(f"FAIL: {what}: {detail}")
    print(f"ok: {what}")


def expect(exc_type, fn, what):
    try:
        fn()
    except exc_type as e:
        print(f"ok: {what} -> {exc_type.__name__}")
        return e
    except Exception as e:  # noqa: BLE001
        sys.exit(f"FAIL: {what}: expected {exc_type.__name__}, got {type(e).__name__}: {e}")
    sys.exit(f"FAIL: {what}: expected {exc_type.__name__}, got success")


# --- the openai SDK on an anthropic-kind backend ---
oa = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
tools_oa = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": SCHEMA}}]
msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]

r = oa.chat.completions.create(model=oa_model, messages=msgs)
check(
    r.object == "chat.completion" and r.choices[0].message.content and r.choices[0].finish_reason == "stop",
    "openai plain", r,
)
check(r.usage.prompt_tokens == 12 and r.usage.completion_tokens == 48, "openai plain usage", r.usage)

parts, usage = [], None
for chunk in oa.chat.completions.create(
    model=oa_model, messages=msgs, stream=True, stream_options={"include_usage": True}
):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
check(parts and usage and usage.completion_tokens == 48, "openai stream", (parts, usage))

r = oa.chat.completions.create(model=oa_model, messages=msgs, tools=tools_oa)
calls = r.choices[0].message.tool_calls or []
check(
    len(calls) == 1 and calls[0].function.name == "get_weather"
    and json.loads(calls[0].function.arguments) == ARGS and r.choices[0].finish_reason == "tool_calls",
    "openai tool call", r,
)
round_trip = msgs + [
    r.choices[0].message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 21 C"},
]
r2 = oa.chat.completions.create(model=oa_model, messages=round_trip, tools=tools_oa)
check(r2.choices[0].message.content and not r2.choices[0].message.tool_calls, "openai tool round trip", r2)

name, args, finish = None, "", None
for chunk in oa.chat.completions.create(model=oa_model, messages=msgs, tools=tools_oa, stream=True):
    for c in chunk.choices:
        for d in c.delta.tool_calls or []:
            if d.function and d.function.name:
                name = d.function.name
            if d.function and d.function.arguments:
                args += d.function.arguments
        finish = c.finish_reason or finish
check(name == "get_weather" and json.loads(args) == ARGS and finish == "tool_calls", "openai stream tool call", (name, args, finish))

e = expect(
    openai.BadRequestError,
    lambda: oa.chat.completions.create(model=oa_model, messages=msgs, logit_bias={"1": 5}),
    "openai untranslatable field",
)
check("logit_bias" in str(e), "openai refusal names the field", e)

r = oa.responses.create(model=oa_model, input="Weather in Paris?", instructions="Be brief.")
check(r.object == "response" and r.output_text and r.usage.output_tokens == 48, "openai responses", r)
events = [e.type for e in oa.responses.create(model=oa_model, input="Weather in Paris?", stream=True)]
check("response.output_text.delta" in events and events[-1] == "response.completed", "openai responses stream", events)

# --- the anthropic SDK on an openai-kind backend ---
an = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
tools_an = [{"name": "get_weather", "description": "Weather", "input_schema": SCHEMA}]
amsgs = [{"role": "user", "content": "Weather in Paris?"}]

m = an.messages.create(model=an_model, max_tokens=64, system="Be brief.", messages=amsgs)
check(m.type == "message" and m.content[0].type == "text" and m.content[0].text and m.stop_reason == "end_turn", "anthropic plain", m)
check(m.usage.input_tokens == 12 and m.usage.output_tokens == 48, "anthropic plain usage", m.usage)

with an.messages.stream(model=an_model, max_tokens=64, system="Be brief.", messages=amsgs) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
check(text and final.usage.output_tokens == 48 and final.stop_reason == "end_turn", "anthropic stream", final)

m = an.messages.create(model=an_model, max_tokens=64, messages=amsgs, tools=tools_an)
uses = [b for b in m.content if b.type == "tool_use"]
check(len(uses) == 1 and uses[0].name == "get_weather" and uses[0].input == ARGS and m.stop_reason == "tool_use", "anthropic tool call", m)
round_trip = amsgs + [
    {"role": "assistant", "content": m.content},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny, 21 C"}]},
]
m2 = an.messages.create(model=an_model, max_tokens=64, messages=round_trip, tools=tools_an)
check(m2.content[0].type == "text" and m2.stop_reason == "end_turn", "anthropic tool round trip", m2)

with an.messages.stream(model=an_model, max_tokens=64, messages=amsgs, tools=tools_an) as s:
    final = s.get_final_message()
uses = [b for b in final.content if b.type == "tool_use"]
check(len(uses) == 1 and uses[0].input == ARGS and final.stop_reason == "tool_use", "anthropic stream tool call", final)

e = expect(
    anthropic.BadRequestError,
    lambda: an.messages.create(model=an_model, max_tokens=8, messages=amsgs, extra_body={"top_k": 3}),
    "anthropic untranslatable field",
)
check("top_k" in str(e), "anthropic refusal names the field", e)
print("ALL OK")
