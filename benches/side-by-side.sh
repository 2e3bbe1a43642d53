#!/usr/bin/env bash
# One side-by-side benchmark session: every row of BENCHMARKS.md, each
# server started fresh on a fresh port for each run, the servers of a row
# alternated (their order rotated from round to round), every reply checked
# by dreadlock-bench. Writes one JSON line per run to $OUT; summarize with
# `python3 benches/summarize.py $OUT`.
#
# Servers are given as binaries; a server left unset is skipped. Nothing
# here builds or fetches them:
#   DREADLOCK   this daemon (required), e.g. target/release/dreadlock
#   BENCH       dreadlock-bench (required), e.g. target/release/dreadlock-bench
#   BEFORE      this daemon at an older commit, for before/after rows
#   ORIGINAL    the original C/libtask dreadlock
#   REDIS       redis-server
#   DFLOCKD     dflockd
# Knobs: ROUNDS (3), DURATION seconds per run (5), OUT (side-by-side.jsonl),
# ROWS (space-separated row names to run; default all), PORT (first port,
# 20000; each run takes the next two).
#
# Example:
#   DREADLOCK=target/release/dreadlock BENCH=target/release/dreadlock-bench \
#   ORIGINAL=/path/to/dreadlock REDIS=$(command -v redis-server) \
#   DFLOCKD=/path/to/dflockd BEFORE=/path/to/old/dreadlock \
#   benches/side-by-side.sh && python3 benches/summarize.py side-by-side.jsonl
set -u
: "${DREADLOCK:?set DREADLOCK to the binary of this daemon}"
: "${BENCH:?set BENCH to dreadlock-bench}"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
OUT=${OUT:-side-by-side.jsonl}
PORT=${PORT:-20000}

# row name | servers | dreadlock-bench arguments after the global ones
# Servers: D this daemon, DA this daemon with the admin endpoint scraped
# every second, DB the BEFORE build, O original, R Redis, G dflockd, F the
# floor server.
ROW_TABLE='
tp1       |D DB O R F   |throughput -c 1 -p 1
tp50      |D DA DB O R F|throughput -c 50 -p 1
tp50x32   |D DA DB O R F|throughput -c 50 -p 32
contended |D DB O R     |contended -c 50 -k 1
strict1   |D G F        |strict -c 1 -k 1
strict50  |D G F        |strict -c 50 -k 50
strict50k1|D G          |strict -c 50 -k 1
acquire50 |D F          |acquire -c 50 -p 1
acquire50x32|D F        |acquire -c 50 -p 32
semaphore |D G          |semaphore -c 50 -n 4
flood     |D DB         |flood -c 50 -p 4096
burst     |D DB O       |timeouts -n 2000 --timeout-ms 250
spread    |D DB O       |timeouts -n 2000 --timeout-ms 250 --spread-ms 200
'

binary_of() {
    case $1 in
    D | DA) echo "$DREADLOCK" ;;
    DB) echo "${BEFORE:-}" ;;
    O) echo "${ORIGINAL:-}" ;;
    R) echo "${REDIS:-}" ;;
    G) echo "${DFLOCKD:-}" ;;
    F) echo "$BENCH" ;;
    esac
}

# Starts server $1 on port $2 in the background; sets SERVER_PID.
start_server() {
    local s=$1 p=$2
    case $s in
    D | DB) "$(binary_of "$s")" "$p" --bind 127.0.0.1 -q >/dev/null 2>&1 & ;;
    DA) "$DREADLOCK" "$p" --bind 127.0.0.1 -q --metrics "127.0.0.1:$((p + 1))" >/dev/null 2>&1 & ;;
    O) "$ORIGINAL" "$p" >/dev/null 2>&1 & ;;
    R) "$REDIS" --port "$p" --bind 127.0.0.1 --save '' --appendonly no \
        --maxclients 19990 >/dev/null 2>&1 & ;;
    G) "$DFLOCKD" -host 127.0.0.1 -port "$p" -max-locks 1000000 >/dev/null 2>&1 & ;;
    F) "$BENCH" floor --port "$p" >/dev/null 2>&1 & ;;
    esac
    SERVER_PID=$!
}

wait_port() {
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

proto_flag() {
    case $1 in
    R) echo --redis ;;
    G) echo --dflockd ;;
    esac
}

run_one() {
    local round=$1 row=$2 s=$3 args=$4
    local p=$PORT scraper=
    PORT=$((PORT + 2))
    # Nothing started here may read the row table the loop reads on stdin.
    start_server "$s" "$p" </dev/null
    if ! wait_port "$p"; then
        echo "{\"round\":$round,\"row\":\"$row\",\"server\":\"$s\",\"error\":\"server did not listen\"}" >>"$OUT"
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
        return
    fi
    if [ "$s" = DA ]; then
        (while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$((p + 1))/metrics"; done) </dev/null &
        scraper=$!
    fi
    local result
    # shellcheck disable=SC2046,SC2086
    result=$("$BENCH" --addr "127.0.0.1:$p" --pid "$SERVER_PID" --json \
        --duration "$DURATION" $(proto_flag "$s") $args </dev/null)
    local rc=$?
    [ -n "$scraper" ] && kill "$scraper" 2>/dev/null && wait "$scraper" 2>/dev/null
    kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    [ -n "$result" ] || result=null
    echo "{\"round\":$round,\"row\":\"$row\",\"server\":\"$s\",\"rc\":$rc,\"load\":\"$(cut -d' ' -f1 /proc/loadavg)\",\"at\":\"$(date -u +%H:%M:%S)\",\"result\":$result}" >>"$OUT"
    printf '%s round %s %-12s %-3s rc=%s\n' "$(date -u +%H:%M:%S)" "$round" "$row" "$s" "$rc" >&2
}

echo "{\"session\":\"start\",\"at\":\"$(date -u +%FT%TZ)\",\"load\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"duration\":$DURATION,\"rounds\":$ROUNDS}" >>"$OUT"
for round in $(seq 1 "$ROUNDS"); do
    while IFS='|' read -r row servers args; do
        row=$(echo "$row" | tr -d ' ')
        [ -n "$row" ] || continue
        if [ -n "${ROWS:-}" ] && ! echo " $ROWS " | grep -q " $row "; then
            continue
        fi
        # The servers that are set, rotated by the round number.
        set -- $servers
        present=()
        for s in "$@"; do
            [ -n "$(binary_of "$s")" ] && present+=("$s")
        done
        n=${#present[@]}
        for i in $(seq 0 $((n - 1))); do
            s=${present[$(((i + round - 1) % n))]}
            run_one "$round" "$row" "$s" "$args"
        done
    done <<<"$ROW_TABLE"
done
echo "{\"session\":\"end\",\"at\":\"$(date -u +%FT%TZ)\",\"load\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >>"$OUT"
