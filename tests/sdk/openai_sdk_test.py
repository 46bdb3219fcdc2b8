#!/usr/bin/env python3
"""modelgate through the official `openai` Python SDK.

Run by tests/openai_sdk.rs (via scripts/test.sh, which provides a venv with `openai`):
  MODELGATE_URL      http://127.0.0.1:PORT/v1
  MODELGATE_MODELS   comma-separated ids /v1/models must list, in order (sorted, unlisted hidden)
  MODELGATE_CHAT_MODEL, MODELGATE_EMBED_MODEL, MODELGATE_HIDDEN_MODEL (optional)
  MODELGATE_SSE_EVENTS  tokens the mock streams per answer (default 8)
Exits 0 when every check passes; prints one line per check.
"""
import os
import sys

import openai

URL = os.environ["MODELGATE_URL"]
LISTED = [m for m in os.environ.get("MODELGATE_MODELS", "").split(",") if m]
CHAT = os.environ.get("MODELGATE_CHAT_MODEL", LISTED[0] if LISTED else "chat")
EMBED = os.environ.get("MODELGATE_EMBED_MODEL", CHAT)
HIDDEN = os.environ.get("MODELGATE_HIDDEN_MODEL")
N = int(os.environ.get("MODELGATE_SSE_EVENTS", "8"))

client = openai.OpenAI(base_url=URL, api_key="sk-modelgate-test", max_retries=0, timeout=20)
MESSAGES = [{"role": "user", "content": "Say hello."}]


def check(name, fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - report every failure the same way
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        return False
    print(f"ok   {name}", flush=True)
    return True


def chat():
    r = client.chat.completions.create(model=CHAT, messages=MESSAGES)
    assert r.model == CHAT, r.model
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.split() == [f"tok{i}" for i in range(N)], r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == N and r.usage.prompt_tokens > 0, r.usage


def chat_stream():
    stream = client.chat.completions.create(
        model=CHAT, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    tokens, finish, usage, chunks = [], None, None, 0
    for chunk in stream:  # the loop ends only when the SDK saw `data: [DONE]` or EOF
        chunks += 1
        assert chunk.model == CHAT, chunk.model
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                tokens.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert tokens == [f"tok{i} " for i in range(N)], tokens
    assert finish == "stop", finish
    assert usage is not None and usage.completion_tokens == N, usage
    assert chunks == N + 2, chunks


def completion_stream_raw():
    # The raw response of a stream keeps its SSE framing intact through the proxy.
    with client.chat.completions.with_streaming_response.create(
        model=CHAT, messages=MESSAGES, stream=True
    ) as resp:
        assert resp.headers.get("content-type", "").startswith("text/event-stream"), resp.headers
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]", lines[-3:]
    assert len([line for line in lines if line.startswith("data: {")]) == N + 1, len(lines)


def embedding():
    r = client.embeddings.create(model=EMBED, input=["a", "b"])
    assert r.model == EMBED, r.model
    assert len(r.data) == 2 and len(r.data[0].embedding) > 0, r.data
    assert r.usage.prompt_tokens > 0


def models_list():
    ids = [m.id for m in client.models.list()]
    assert ids == LISTED, f"{ids} != {LISTED}"
    for m in client.models.list():
        assert m.object == "model", m


def models_retrieve():
    for mid in LISTED:
        m = client.models.retrieve(mid)  # ids with `/` are sent percent-encoded
        assert m.id == mid, (m.id, mid)


def unlisted_model_routes():
    if HIDDEN:
        r = client.chat.completions.create(model=HIDDEN, messages=MESSAGES)
        assert r.model == HIDDEN, r.model


def unknown_model():
    try:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    except openai.NotFoundError as e:
        assert e.status_code == 404
        body = e.body if isinstance(e.body, dict) else {}
        assert body.get("code") == "model_not_found" or "model_not_found" in str(e), e
        return
    raise AssertionError("unknown model did not raise openai.NotFoundError")


def main():
    print(f"openai {openai.__version__} against {URL}", flush=True)
    checks = [
        ("chat completion", chat),
        ("streamed chat completion", chat_stream),
        ("raw SSE stream", completion_stream_raw),
        ("embedding", embedding),
        ("models.list sorted", models_list),
        ("models.retrieve", models_retrieve),
        ("unlisted model routes", unlisted_model_routes),
        ("unknown model -> NotFoundError", unknown_model),
    ]
    results = [check(name, fn) for name, fn in checks]
    failed = results.count(False)
    print(f"sdk: {len(results) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
