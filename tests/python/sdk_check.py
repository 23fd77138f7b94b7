"""Official openai and anthropic SDKs against a Switchyard worker.

Env: SY_BASE (worker URL), SY_KEY (allowed key), SY_LIMITED (key not allowed the models),
SY_OA_MODEL, SY_AN_MODEL. Exits non-zero with a message on the first failure.
"""
import os
import sys

import anthropic
import openai

base = os.environ["SY_BASE"]
key = os.environ["SY_KEY"]
limited = os.environ["SY_LIMITED"]
oa_model = os.environ["SY_OA_MODEL"]
an_model = os.environ["SY_AN_MODEL"]


def expect(exc_type, fn, what):
    try:
        fn()
    except exc_type:
        print(f"ok: {what} -> {exc_type.__name__}")
        return
    except Exception as e:  # noqa: BLE001
        sys.exit(f"FAIL: {what}: expected {exc_type.__name__}, got {type(e).__name__}: {e}")
    sys.exit(f"FAIL: {what}: expected {exc_type.__name__}, got success")


oa = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
r = oa.chat.completions.create(model=oa_model, messages=[{"role": "user", "content": "hi"}])
assert r.choices[0].message.content, r
print("ok: openai plain")
parts = []
for chunk in oa.chat.completions.create(
    model=oa_model, messages=[{"role": "user", "content": "hi"}], stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
assert parts, "no streamed content"
print("ok: openai stream")
models = [m.id for m in oa.models.list()]
assert oa_model in models, models
print("ok: openai models.list")

bad = openai.OpenAI(base_url=base + "/v1", api_key="sk-not-a-valid-key-xxxxxxxx", max_retries=0)
expect(openai.AuthenticationError, lambda: bad.chat.completions.create(model=oa_model, messages=[]), "openai bad key")
expect(openai.NotFoundError, lambda: oa.chat.completions.create(model="no-such-model", messages=[]), "openai unknown model")
lim = openai.OpenAI(base_url=base + "/v1", api_key=limited, max_retries=0)
# A model the key may not use answers as one that does not exist (no hidden-model oracle).
expect(openai.NotFoundError, lambda: lim.chat.completions.create(model=oa_model, messages=[]), "openai forbidden model")

an = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
m = an.messages.create(model=an_model, max_tokens=20, messages=[{"role": "user", "content": "hi"}])
assert m.content and m.content[0].text, m
print("ok: anthropic plain")
with an.messages.stream(model=an_model, max_tokens=20, messages=[{"role": "user", "content": "hi"}]) as s:
    text = "".join(s.text_stream)
assert text, "no streamed text"
print("ok: anthropic stream")

bad = anthropic.Anthropic(base_url=base, api_key="sk-not-a-valid-key-xxxxxxxx", max_retries=0)
expect(anthropic.AuthenticationError, lambda: bad.messages.create(model=an_model, max_tokens=5, messages=[{"role": "user", "content": "x"}]), "anthropic bad key")
expect(anthropic.NotFoundError, lambda: an.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}]), "anthropic unknown model")
lim = anthropic.Anthropic(base_url=base, api_key=limited, max_retries=0)
expect(anthropic.NotFoundError, lambda: lim.messages.create(model=an_model, max_tokens=5, messages=[{"role": "user", "content": "x"}]), "anthropic forbidden model")
print("ALL OK")
