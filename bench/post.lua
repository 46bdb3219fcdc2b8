-- wrk script: POST a ~1 KB OpenAI chat body to /v1/chat/completions, with "model" AFTER
-- "messages" so a router has to scan the whole body (the realistic worst case).
-- The model name comes from $BENCH_MODEL (default "bench-model").
local model = os.getenv("BENCH_MODEL") or "bench-model"
local filler = string.rep("The quick brown fox jumps over the lazy dog. ", 19)
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.body = '{"messages":[{"role":"system","content":"You are a helpful assistant."},'
  .. '{"role":"user","content":"' .. filler .. '"}],"max_tokens":16,"temperature":0,'
  .. '"model":"' .. model .. '"}'
