"""The soak's numbers: counts, avoidable 5xx, lost requests, latency per minute and per
fault window, the batch check; as a JSON-able dict, a table, and one verdict line."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from bench.soak_faults import BatchCheck, Window
from bench.soak_load import Load, Record
from bench.soak_procs import EXPERTS, Deployment


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile in ms; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000, 1)


def healthy_candidate(rec: Record, dep: Deployment) -> bool:
    """Could this request have been answered: its expert's upstream (any upstream, when
    routed) was up from the moment it was sent until its answer came."""
    names = EXPERTS if rec.routed else [rec.model]
    return any(dep.upstream_down[n].up_throughout(rec.sent, rec.done) for n in names)


def counts(records: Iterable[Record], dep: Deployment) -> dict[str, Any]:
    recs = list(records)
    ok = [r for r in recs if 200 <= r.status < 300]
    fives = [r for r in recs if r.status >= 500]
    lost = [r for r in recs if r.status == 0]
    return {
        "sent": len(recs),
        "answered": len(ok),
        "4xx": sum(1 for r in recs if 400 <= r.status < 500),
        "5xx": len(fives),
        "5xx_healthy_candidate": sum(1 for r in fives if healthy_candidate(r, dep)),
        "5xx_shed": sum(1 for r in fives if r.error == "shed"),
        "lost": len(lost),
        "p50_ms": pct([r.latency for r in ok], 50),
        "p99_ms": pct([r.latency for r in ok], 99),
    }


def summarise(
    load: Load, dep: Deployment, windows: list[Window], batch: BatchCheck
) -> dict[str, Any]:
    recs = load.records
    t0, seconds = load.t0, load.seconds
    whole = counts(recs, dep)
    lost_why = Counter(r.error or "no answer by the end" for r in recs if r.status == 0)
    routed = [r for r in recs if r.routed]
    routed_ok = sum(1 for r in routed if 200 <= r.status < 300)
    late = [r.sent - r.scheduled for r in recs if r.sent]
    minutes = []
    for m in range(int((seconds + 59) // 60)):
        lo, hi = t0 + 60 * m, t0 + 60 * (m + 1)
        minutes.append({"minute": m + 1, **counts((r for r in recs if lo <= r.sent < hi), dep)})
    faults = []
    for w in windows:
        end = w.end or t0 + seconds
        row = counts((r for r in recs if w.start <= r.sent < end), dep)
        faults.append(
            {
                "fault": w.name,
                "at_s": round(w.start - t0, 1),
                "for_s": round(end - w.start, 1),
                **row,
            }
        )
    quiet = [r for r in recs if not any(w.start <= r.sent < (w.end or 1e18) for w in windows)]
    faults.append({"fault": "(no fault active)", "at_s": None, "for_s": None, **counts(quiet, dep)})
    return {
        "config": {
            "seconds": seconds,
            "rate": load.rate,
            "routed_share": load.routed_share,
            "gateways": load.gateways,
        },
        "totals": {
            **whole,
            "lost_by_reason": dict(lost_why),
            "answered_without_own_id": sum(
                1 for r in recs if 200 <= r.status < 300 and not r.echoed
            ),
            "statuses": dict(Counter(str(r.status or r.error or "none") for r in recs)),
        },
        "routed": {
            "sent": len(routed),
            "answered": routed_ok,
            "answered_per_s": round(routed_ok / seconds, 1),
            **{k: v for k, v in counts(routed, dep).items() if k.endswith("_ms")},
        },
        "per_gateway": [
            {"gateway": g, **counts((r for r in recs if r.gateway == i), dep)}
            for i, g in enumerate(load.gateways)
        ],
        "load_generator": {
            "scheduled_rate": load.rate,
            "achieved_send_rate": round(len(recs) / load.send_wall, 1) if load.send_wall else 0,
            "send_late_p50_ms": pct(late, 50),
            "send_late_p99_ms": pct(late, 99),
            "send_late_max_ms": round(max(late) * 1000, 1) if late else None,
        },
        "per_minute": minutes,
        "per_fault": faults,
        "batch": batch.summary(),
        "upstream_down_s": {
            n: [(round(d - t0, 1), round(u - t0, 1) if u else None) for d, u in iv.down]
            for n, iv in dep.upstream_down.items()
        },
    }


def verdict(report: dict[str, Any]) -> str:
    t, b, g = report["totals"], report["batch"], report["load_generator"]
    problems = []
    if t["lost"]:
        problems.append(f"{t['lost']} requests lost")
    if t["5xx_healthy_candidate"]:
        problems.append(f"{t['5xx_healthy_candidate']} 5xx with a healthy expert up")
    if t["answered_without_own_id"]:
        problems.append(f"{t['answered_without_own_id']} answers not carrying their own id")
    if b["lost_lines"] or b["duplicate_lines"]:
        problems.append(f"batch: {b['lost_lines']} lines lost, {b['duplicate_lines']} duplicated")
    a = report.get("batch_after_redis_restart") or {}
    if a.get("lost_lines") or a.get("duplicate_lines"):
        problems.append(
            f"batch after the Redis restart: {a['lost_lines']} of {a['lines']} lines without a "
            f"result ({a['status']}), {a['duplicate_lines']} duplicated"
        )
    caveat = ""
    if g["achieved_send_rate"] < 0.95 * g["scheduled_rate"] or (g["send_late_p99_ms"] or 0) > 1000:
        caveat = (
            f" (the load generator fell behind: {g['achieved_send_rate']} of "
            f"{g['scheduled_rate']:.0f} req/s sent, p99 {g['send_late_p99_ms']} ms late)"
        )
    if not problems:
        return "VERDICT: CLEAN: every request answered or refused with a reason" + caveat
    return "VERDICT: NOT CLEAN: " + "; ".join(problems) + caveat


def _row(label: str, row: dict[str, Any], width: int) -> str:
    cells = [row["sent"], row["answered"], row["4xx"], row["5xx"], row["5xx_healthy_candidate"]]
    cells += [row["lost"], row["p50_ms"], row["p99_ms"]]
    return f"{label:<{width}}" + "".join(f"{'-' if c is None else c:>9}" for c in cells)


def _after_restart(a: dict[str, Any] | None) -> str:
    if not a:
        return "batch after the Redis restart: none submitted"
    return (
        f"batch after the Redis restart {a['batch_id'] or '-'}: {a['lines']} lines, status "
        f"{a['status']}; lost {a['lost_lines']}, duplicated {a['duplicate_lines']}"
        + (f" ({a['note']})" if a["note"] else "")
    )


def table(report: dict[str, Any]) -> str:
    cfg, t, r = report["config"], report["totals"], report["routed"]
    g, b = report["load_generator"], report["batch"]
    head = ["sent", "2xx", "4xx", "5xx", "5xx-avd", "lost", "p50 ms", "p99 ms"]
    lines = [
        f"soak: {cfg['seconds']:.0f} s at {cfg['rate']:.0f} req/s over 2 gateways, "
        f"{cfg['routed_share']:.0%} routed (coe/auto); {cfg.get('cpus')} CPUs, torch threads per "
        f"process: {cfg.get('torch_threads')}",
        f"load generator: {g['achieved_send_rate']} req/s sent of {g['scheduled_rate']:.0f} "
        f"scheduled; sends late p50 {g['send_late_p50_ms']} ms, p99 {g['send_late_p99_ms']} ms, "
        f"max {g['send_late_max_ms']} ms",
        "",
        f"{'':<34}" + "".join(f"{h:>9}" for h in head),
        _row("total", t, 34),
    ]
    lines += [_row(f"gateway {p['gateway'][-5:]}", p, 34) for p in report["per_gateway"]]
    lines += ["", "per minute (by send time)"]
    lines += [_row(f"  minute {m['minute']}", m, 34) for m in report["per_minute"]]
    lines += ["", "per fault window (requests sent while it lasted)"]
    for f in report["per_fault"]:
        label = f"  {f['fault']}" + (
            f" @{f['at_s']}s/{f['for_s']}s" if f["at_s"] is not None else ""
        )
        lines.append(_row(label[:34], f, 34))
    lines += [
        "",
        f"routed: {r['sent']} sent, {r['answered']} answered = {r['answered_per_s']} routed "
        f"answers/s sustained (p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms)",
        f"shed by admission control (503 server_overloaded, counted in 5xx and 5xx-avd): "
        f"{t['5xx_shed']}",
        f"lost by reason: {t['lost_by_reason'] or 'none'}; answers without their own id: "
        f"{t['answered_without_own_id']}",
        f"batch {b['batch_id'] or '-'}: {b['lines']} lines, status {b['status']}, worker killed "
        f"after {b['worker_killed_after_lines']} lines; lost {b['lost_lines']}, duplicated "
        f"{b['duplicate_lines']}, failed {b['failed_lines']}"
        + (f" ({b['note']})" if b["note"] else ""),
        _after_restart(report.get("batch_after_redis_restart")),
        "5xx-avd: 5xx although the request's expert (any expert, when routed) was up "
        "throughout; lost: no HTTP response at all",
    ]
    return "\n".join(lines)
