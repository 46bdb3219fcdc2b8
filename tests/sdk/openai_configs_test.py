#!/usr/bin/env python3
"""The official `openai` SDK through one shipped config (tests/openai_sdk.rs drives it once per
config: examples/*.json, the README's configs, the Kubernetes ConfigMap), with every model URL
pointed at the mock upstream, base paths (`/v1`, `/api/v1`, ...) kept as written.

  MODELGATE_URL       http://127.0.0.1:PORT/v1 (what a user gives the SDK as base_url)
  MODELGATE_API_KEY   the token the config accepts (anything when it has none)
  MODELGATE_MODELS    comma-separated model names to call
  MODELGATE_CONFIG    the config's name, for the output

For each model: a chat completion, a streamed one with usage, and a Responses API call, each
asserting the mock's tokens (a doubled `/v1` would be the mock's 404). Prints one line per
check; exits 0 when all pass.
"""
import os
import sys

import openai

URL = os.environ["MODELGATE_URL"]
KEY = os.environ.get("MODELGATE_API_KEY") or "sk-none"
MODELS = [m for m in os.environ.get("MODELGATE_MODELS", "").split(",") if m]
NAME = os.environ.get("MODELGATE_CONFIG", "config")
TOKENS = [f"tok{i}" for i in range(8)]

client = openai.OpenAI(base_url=URL, api_key=KEY, max_retries=0, timeout=20)
MESSAGES = [{"role": "user", "content": "Say hello."}]


def chat(model):
    r = client.chat.completions.create(model=model, messages=MESSAGES)
    assert r.choices[0].message.content.split() == TOKENS, r.choices[0].message.content
    assert r.usage.completion_tokens == len(TOKENS), r.usage


def chat_stream(model):
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
    assert text.split() == TOKENS, text
    assert usage is not None and usage.completion_tokens == len(TOKENS), usage


def responses(model):
    r = client.responses.create(model=model, input="Say hello.")
    assert r.output_text.split() == TOKENS, r.output_text
    assert r.usage.output_tokens == len(TOKENS), r.usage


failed = 0
for model in MODELS:
    for check in (chat, chat_stream, responses):
        try:
            check(model)
        except Exception as e:  # noqa: BLE001 - report every failure the same way
            failed += 1
            print(f"FAIL {NAME} {model} {check.__name__}: {type(e).__name__}: {e}", flush=True)
        else:
            print(f"ok   {NAME} {model} {check.__name__}", flush=True)
sys.exit(1 if failed or not MODELS else 0)
