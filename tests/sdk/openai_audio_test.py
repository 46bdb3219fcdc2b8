#!/usr/bin/env python3
"""Audio uploads through modelgate with the official `openai` Python SDK (multipart routing).

Run by tests/multipart.rs (via scripts/test.sh, which provides a venv with `openai`):
  MODELGATE_URL          http://127.0.0.1:PORT/v1
  MODELGATE_AUDIO_MODEL  the model the uploads name (routed by the multipart `model` field)
  MODELGATE_AUDIO_BYTES  size of the generated audio file
The mock upstream checks each upload byte for byte and answers {"text": "ok <bytes>"}.
Exits 0 when every check passes; prints one line per check.
"""
import os
import sys

import openai

URL = os.environ["MODELGATE_URL"]
MODEL = os.environ["MODELGATE_AUDIO_MODEL"]
SIZE = int(os.environ.get("MODELGATE_AUDIO_BYTES", "300000"))

client = openai.OpenAI(base_url=URL, api_key="sk-modelgate-test", max_retries=0, timeout=30)
# The same pattern the mock expects: byte i is (i * 7 + 3) mod 256.
AUDIO = bytes((i * 7 + 3) % 256 for i in range(SIZE))


def check(name, fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - report every failure the same way
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        return False
    print(f"ok   {name}", flush=True)
    return True


def transcription():
    r = client.audio.transcriptions.create(model=MODEL, file=("speech.wav", AUDIO, "audio/wav"))
    assert r.text == f"ok {SIZE}", r.text


def transcription_with_fields():
    r = client.audio.transcriptions.create(
        model=MODEL,
        file=("speech.wav", AUDIO, "audio/wav"),
        language="en",
        prompt="modelgate",
        temperature=0.0,
    )
    assert r.text == f"ok {SIZE}", r.text


def translation():
    r = client.audio.translations.create(model=MODEL, file=("speech.wav", AUDIO, "audio/wav"))
    assert r.text == f"ok {SIZE}", r.text


def unknown_model():
    try:
        client.audio.transcriptions.create(model="no-such-model", file=("a.wav", AUDIO, "audio/wav"))
    except openai.NotFoundError as e:
        assert e.status_code == 404
        return
    raise AssertionError("unknown model did not raise openai.NotFoundError")


def main():
    print(f"openai {openai.__version__} against {URL}", flush=True)
    checks = [
        ("audio.transcriptions.create", transcription),
        ("audio.transcriptions.create with fields", transcription_with_fields),
        ("audio.translations.create", translation),
        ("unknown model -> NotFoundError", unknown_model),
    ]
    results = [check(name, fn) for name, fn in checks]
    failed = results.count(False)
    print(f"sdk: {len(results) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
