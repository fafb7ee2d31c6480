"""The table of `make bench-latency` (bench/latency/run), from the JSON lines of one run:
OUT/{null-lambda,connection-test,peer-lambda}.jsonl (bench/lambda-reference/cold_start.py)
and OUT/probe.jsonl (critical-path-probe).

    python3 report.py OUT ZIP_BYTES_CT ZIP_BYTES_PEER STS_MS PROXY_MS RUNS WARM GAP_MS
"""
import json
import statistics
import sys

EXPECTED = {"statusCode": 200, "headers": {"Content-Type": "application/json"},
            "body": "Database connection was successful!"}

out, zip_ct, zip_peer, sts_ms, proxy_ms, runs, warm, gap = sys.argv[1:9]
zip_ct, zip_peer = int(zip_ct), int(zip_peer)


def load(name):
    rows = [json.loads(line) for line in open(f"{out}/{name}.jsonl") if line.strip()]
    if not rows:
        sys.exit(f"{out}/{name}.jsonl: no runs")
    return rows


def check(name, rows):
    for r in rows:
        for body in [r["body"]] + r["warm_bodies"]:
            if json.loads(body) != EXPECTED:
                sys.exit(f"{name}: run {r['run']} answered {body!r}, not the success response")


med = statistics.median


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


null, ct, peer, probe = load("null-lambda"), load("connection-test"), load("peer-lambda"), load("probe")
for name, rows in (("null-lambda", null), ("connection-test", ct), ("peer-lambda", peer)):
    check(name, rows)


def stats(rows):
    cold = [r["ms"] for r in rows]
    warm_all = [w for r in rows for w in r["warm_ms"]]
    # The second invocation of each process (the first warm one) on its own, and the rest:
    # something left over from the cold invocation (a background refresh, a lazily built
    # client, a stalled socket) shows here first.
    second = [r["warm_ms"][0] for r in rows if r["warm_ms"]]
    later = [w for r in rows for w in r["warm_ms"][1:]]
    return {
        "cold": med(cold), "cold_min": min(cold), "cold_max": max(cold),
        "init": med(r["init_ms"] for r in rows),
        "warm": med(warm_all), "warm_p90": pct(warm_all, 0.9), "n_warm": len(warm_all),
        "second": med(second), "second_max": max(second),
        "later": med(later) if later else None,
        "rss_cold": med(r["peak_rss_kb"] for r in rows) / 1024,
        "rss": med(r["peak_rss_end_kb"] for r in rows) / 1024,
    }


s_null, s_ct, s_peer = stats(null), stats(ct), stats(peer)
a = s_null["cold"]
sts = med(r["sts_ms"] for r in probe)
hs = med(r["handshake_ms"] for r in probe)
first_hs = [r["first_handshake_ms"] for r in probe if "first_handshake_ms" in r]
cq = med(r["connect_query_ms"] for r in probe)
login_query = max(0.0, cq - hs)
limit = a + max(sts, hs) + login_query


def mib(b):
    return f"{b / 1048576:.2f}" if b else "n/a"


print()
print(f"bench-latency: STS +{sts_ms} ms and proxy +{proxy_ms} ms one-way (delay relays on 127.0.0.1); "
      f"{len(ct)} processes per function, each 1 cold + {warm} warm invocations ({gap} ms idle before each warm one)")
print(f"{'':28} {'cold first response ms':>24} {'init ms':>8} {'warm ms':>17} {'2nd invocation ms':>18}"
      f" {'peak RSS MiB':>13} {'arm64 zip MiB':>14}")
print(f"{'':28} {'median (min-max)':>24} {'median':>8} {'median (p90)':>17} {'median (max)':>18}"
      f" {'(after cold)':>13} {'':>14}")
for name, s, z in (("connection-test", s_ct, zip_ct), ("peer (awslabs-style)", s_peer, zip_peer),
                   ("do-nothing Lambda", s_null, None)):
    cold = f"{s['cold']:.1f} ({s['cold_min']:.1f}-{s['cold_max']:.1f})"
    warm_s = f"{s['warm']:.1f} ({s['warm_p90']:.1f})"
    second = f"{s['second']:.1f} ({s['second_max']:.1f})"
    rss = f"{s['rss']:.1f} ({s['rss_cold']:.1f})"
    print(f"{name:<28} {cold:>24} {s['init']:>8.1f} {warm_s:>17} {second:>18} {rss:>13}"
          f" {mib(z) if z is not None else '':>14}")
zip_ratio = f"{zip_ct / zip_peer:.2f}x" if zip_ct and zip_peer else "n/a"
print(f"{'peer / connection-test':<28} {s_peer['cold'] / s_ct['cold']:>23.2f}x {s_peer['init'] / s_ct['init']:>7.2f}x"
      f" {s_peer['warm'] / s_ct['warm']:>16.2f}x {s_peer['second'] / s_ct['second']:>17.2f}x"
      f" {s_peer['rss'] / s_ct['rss']:>12.2f}x"
      f" {(f'{zip_peer / zip_ct:.2f}x' if zip_ct and zip_peer else 'n/a'):>14}")
print()
print(f"critical-path limit of the cold path: {limit:.1f} ms = do-nothing Lambda's cold first response {a:.1f}"
      f" + max(AssumeRole {sts:.1f}, TCP+SSLRequest+TLS {hs:.1f}) + login+SELECT 1 {login_query:.1f}"
      f"  (plain-client medians of {len(probe)} rounds; TCP+TLS+login+query together {cq:.1f})")
if hs > cq:
    alt = a + max(sts, cq)
    print(f"  WARNING: the probe's TCP+SSLRequest+TLS leg ({hs:.1f}) took longer than TCP+TLS+login+query"
          f" ({cq:.1f}): that leg's timing is suspect; a + max(AssumeRole, TCP+TLS+login+query) = {alt:.1f} ms")
for name, s in (("connection-test", s_ct), ("peer", s_peer)):
    over = s["cold"] - limit
    print(f"  {name:<16} cold {s['cold']:6.1f} ms: {over:+6.1f} ms ({over / limit * 100:+5.1f}%) from the limit")
if first_hs:
    print(f"  (not in the limit: a process's first TCP+SSLRequest+TLS, with one-time setup such as seeding the"
          f" crypto library's random number generator: median {med(first_hs):.1f} ms)")
print()
for name, s in (("connection-test", s_ct), ("peer", s_peer)):
    if s["later"] and s["second"] > 1.5 * s["later"]:
        print(f"  WARNING: {name}'s 2nd invocation ({s['second']:.1f} ms) is slower than its later warm ones"
              f" ({s['later']:.1f} ms): something is left over from the cold invocation")
print()


def goal(text, ok):
    print(f"  goal {text}: {'met' if ok else 'NOT met'}")


print("goals (with the default delays):")
goal(f"cold >= 1.2x faster than the peer ({s_peer['cold'] / s_ct['cold']:.2f}x)", s_peer["cold"] / s_ct["cold"] >= 1.2)
goal(f"cold within 10% of the critical-path limit ({(s_ct['cold'] - limit) / limit * 100:+.1f}%)",
     s_ct["cold"] <= 1.1 * limit)
goal(f"warm >= 3x faster than the peer ({s_peer['warm'] / s_ct['warm']:.2f}x)", s_peer["warm"] / s_ct["warm"] >= 3)
if zip_ct and zip_peer:
    goal(f"arm64 zip no larger than the peer's ({zip_ct} vs {zip_peer} bytes, {zip_ratio})", zip_ct <= zip_peer)
else:
    print("  goal arm64 zip no larger than the peer's: not measured (zips missing)")
print("(native x86_64 release builds run here; the zips are the arm64 release builds. Peak RSS:"
      " VmHWM after the last warm invocation, in brackets after the cold one.)")
