-- wrk script: POST a vision-style chat request whose image_url is a big base64 string
-- (BENCH_BIG_MB MiB, default 10), with "model" LAST so a router must scan all of it.
-- The body is built once per wrk thread (at script load), not per request.
local model = os.getenv("BENCH_MODEL") or "bench-model"
local mib = tonumber(os.getenv("BENCH_BIG_MB") or "10")
local chunk = "iVBORw0KGgoAAAANSUhEUgAAAQAAAAEACAYAAABccqhmAAAgAElEQVR4nO3dAAAA"  -- 64 base64 chars
local image = string.rep(chunk, math.floor(mib * 1024 * 1024 / #chunk))
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.body = '{"messages":[{"role":"user","content":[{"type":"text","text":"What is in this image?"},'
  .. '{"type":"image_url","image_url":{"url":"data:image/png;base64,' .. image .. '"}}]}],'
  .. '"max_tokens":16,"model":"' .. model .. '"}'
