#!/bin/sh
# Instructions per call of one micro-benchmark under callgrind, which is
# steadier than time on a loaded machine: the difference of two runs with
# fixed call counts (DREADLOCK_BENCH_CALLS), so setup costs cancel.
#
#   cargo bench --no-run --bench core      # prints the binary's path
#   benches/callgrind.sh target/release/deps/core-HASH "lock+unlock"
#   A=20 B=40 benches/callgrind.sh target/release/deps/parser-HASH "short keys, whole"
#
# Divide by the bench's units per call (core: 50 pairs per call for
# "lock+unlock" and "acquire+unlock", 32 for "pipelined", 1 handoff for
# "contended"; parser: 2000 commands). Figures: BENCHMARKS.md.
set -eu
bin=$1
filter=$2
a=${A:-2000}
b=${B:-4000}
ir() {
    DREADLOCK_BENCH_CALLS=$1 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$bin" "$filter" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
x=$(ir "$a")
y=$(ir "$b")
echo "$filter: $(((y - x) / (b - a))) instructions per call"
