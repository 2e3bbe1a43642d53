#!/bin/sh
# User-space instructions per lock+unlock pair of the whole daemon (parser,
# core, reactor, allocator; the kernel is not counted), under callgrind,
# while dreadlock-bench drives it. Busy polling is off, so the count has no
# spinning in it. Steadier than time on a noisy machine, though not exact:
# how many commands one read carries depends on timing a little.
#
#   benches/daemon-callgrind.sh DAEMON BENCH PORT "throughput -c 50 -p 32" [DAEMON ARGS...]
#   benches/daemon-callgrind.sh target/release/dreadlock target/release/dreadlock-bench \
#       7101 "acquire -c 50 -p 1"
#   benches/daemon-callgrind.sh target/release/dreadlock target/release/dreadlock-bench \
#       7103 "throughput -c 50 -p 1" --metrics 127.0.0.1:7104    # then scrape it meanwhile
#
# Prints: pairs, instructions, instructions per pair (startup included,
# a few million instructions in all).
set -eu
daemon=$1
bench=$2
port=$3
scenario=$4
shift 4
out=$(mktemp -d)
valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" \
    "$daemon" "$port" --bind 127.0.0.1 --busy-poll-us 0 -q "$@" >"$out/valgrind.log" 2>&1 &
vg=$!
sleep 4
# shellcheck disable=SC2086
"$bench" --addr "127.0.0.1:$port" --json --duration "${DURATION:-4}" --warmup 0 $scenario >"$out/bench.json"
kill -INT "$vg"
wait "$vg" || true
pairs=$(sed -n 's/.*"pairs":\([0-9]*\).*/\1/p' "$out/bench.json")
ir=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out/valgrind.log")
echo "$scenario: $pairs pairs, $ir instructions, $((ir / pairs)) per pair"
rm -rf "$out"
