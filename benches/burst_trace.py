#!/usr/bin/env python3
"""Where a burst of timeouts spends its lateness, from syscall tracepoints.

Record a `dreadlock-bench timeouts` run system-wide, then split each
waiter's lateness into: the server reading the request late (A), the
server writing the reply late after its deadline (B), and the tool reading
the reply late (C), and time the server's reply writes:

    dreadlock 7055 --bind 127.0.0.1 -q &
    perf record -a -o burst.data \\
        -e syscalls:sys_enter_sendto -e syscalls:sys_exit_sendto \\
        -e syscalls:sys_enter_recvfrom -e syscalls:sys_exit_recvfrom &
    dreadlock-bench --addr 127.0.0.1:7055 timeouts -n 2000 --timeout-ms 250
    kill -INT %2; perf script -i burst.data > burst.txt
    python3 benches/burst_trace.py burst.txt [TIMEOUT_MS]

Waiters are matched by order (the i-th request written, read, answered and
its reply read), which is exact when the server answers in arrival order,
as it does for equal timeouts. Tracing slows every syscall a little, so
the absolute figures are somewhat higher than in an untraced run.
"""

import re
import sys
from collections import Counter

LINE = re.compile(r"\s*(\S+)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)")


def quantiles(xs, unit="ms"):
    xs = sorted(xs)
    if not xs:
        return "none"
    pick = lambda q: xs[min(len(xs) - 1, int(len(xs) * q))]
    return (
        f"min {xs[0]:.3f}  p50 {pick(0.5):.3f}  p90 {pick(0.9):.3f}  "
        f"p99 {pick(0.99):.3f}  max {xs[-1]:.3f} {unit}"
    )


def main(path, timeout_ms):
    tool_send, tool_recv, srv_send, srv_recv = [], [], [], []
    send_enter, send_us = {}, []
    for line in open(path, encoding="utf-8", errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        comm, pid, _cpu, t, event, args = m.groups()
        t = float(t)
        tool = comm.startswith("dreadlock-bench")
        if event.endswith("sys_enter_sendto"):
            n = int(re.search(r"len: (0x[0-9a-f]+)", args).group(1), 16)
            (tool_send if tool else srv_send).append((t, n))
            if not tool:
                send_enter[pid] = (t, n)
        elif event.endswith("sys_exit_sendto") and not tool and pid in send_enter:
            t0, n = send_enter.pop(pid)
            send_us.append(((t - t0) * 1e6, n))
        elif event.endswith("sys_exit_recvfrom"):
            r = int(args.strip(), 16)
            if 0 < r < 1 << 32:
                (tool_recv if tool else srv_recv).append((t, r))
    if not tool_send:
        sys.exit("no dreadlock-bench sendto in the trace")
    request = Counter(n for _, n in tool_send).most_common(1)[0][0]
    reply = len(b"t timeout\r\n")
    a = [t for t, n in tool_send if n == request]
    b = [t for t, n in srv_recv if n == request]
    c = [t for t, n in srv_send if n == reply]
    d = [t for t, n in tool_recv if n == reply]
    n = min(len(a), len(b), len(c), len(d))
    print(f"{n} waiters matched ({len(a)} requests written, {len(d)} timeouts read)")
    due = timeout_ms / 1e3
    print("A server read - tool write: ", quantiles([(b[i] - a[i]) * 1e3 for i in range(n)]))
    print("B server write - deadline:  ", quantiles([(c[i] - b[i] - due) * 1e3 for i in range(n)]))
    print("C tool read - server write: ", quantiles([(d[i] - c[i]) * 1e3 for i in range(n)]))
    print("lateness (tool's view):     ", quantiles([(d[i] - a[i] - due) * 1e3 for i in range(n)]))
    writes = [us for us, size in send_us if size == reply]
    print("server's reply write takes: ", quantiles(writes, "µs"))
    gaps = [(c[i + 1] - c[i]) * 1e6 for i in range(n - 1)]
    print("between reply writes:       ", quantiles(gaps, "µs"))
    print(
        f"spreads: requests written {(a[n - 1] - a[0]) * 1e3:.1f} ms, read "
        f"{(b[n - 1] - b[0]) * 1e3:.1f} ms; replies written {(c[n - 1] - c[0]) * 1e3:.1f} ms, "
        f"read {(d[n - 1] - d[0]) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 250.0)
