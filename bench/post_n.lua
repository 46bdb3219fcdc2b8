-- wrk script for bench/syscalls.sh: bench/post.lua's request, and the thread stops after
-- exactly BENCH_N responses (run with -t1 -c1 so no other request is in flight), then creates
-- the file $BENCH_DONE (if set) so the caller can stop wrk with SIGINT instead of waiting for -d.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/post.lua")
local limit = tonumber(os.getenv("BENCH_N") or "1000")
local count = 0
response = function(status, headers, body)
  count = count + 1
  if count >= limit then
    local done = os.getenv("BENCH_DONE")
    if done then
      local f = io.open(done, "w")
      if f then f:write(count, "\n") f:close() end
    end
    wrk.thread:stop()
  end
end
