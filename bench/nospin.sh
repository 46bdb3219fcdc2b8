# Sourced by the per-request measurements (instructions.sh, syscalls.sh, shared_limits.sh,
# replicas_callgrind.sh). Busy polling (issue 19) would add the spin's non-blocking
# epoll_waits to what they count: `nospin BIN` prints '"busyPoll": 0,' when BIN knows the key
# (builds before it do not), and nothing otherwise.
nospin() {
    local probe
    probe=$(mktemp)
    printf '{"busyPoll": 0, "models": {"m": {"url": "http://127.0.0.1:9"}}}' >"$probe"
    if "$1" --check --config "$probe" >/dev/null 2>&1; then echo '"busyPoll": 0,'; fi
    rm -f "$probe"
}
