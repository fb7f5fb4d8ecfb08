"""Rendering of a status snapshot (see state.StatusState.snapshot): the technician's HTML page and the
`tunnelwatch status` summary (Prometheus metrics: metrics.py, the per-host view: hostview.py).

Pure functions of the snapshot: no I/O, no clock except the snapshot's own `now`. Every value that reaches
HTML is escaped and every value that reaches a terminal has its control characters replaced (flow fields
and mDNS names can be attacker-influenced).
"""

from __future__ import annotations

import datetime as dt
import html
import math
import urllib.parse
from collections.abc import Mapping
from typing import Final

from tunnelwatch.appliance.registrations import render_registrations, standing
from tunnelwatch.text import printable

REFRESH_S: Final = 10  # seconds, when the page is asked to refresh itself (?refresh=10)
PAGE_SIZE: Final = 50  # recent flows per page
#: the page's flow columns: what was done and why first, so a phone shows them without scrolling sideways
PAGE_COLUMNS: Final = ("time", "action", "protocol", "reason", "src", "dst", "transport", "klass",
                        "confidence")
_HEADERS: Final = {"klass": "class"}
_FLOW_COLUMNS: Final = ("time", "transport", "src", "dst", "klass", "protocol", "confidence", "action",
                        "reason")

_CSS: Final = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b;background:#fafafa}
h1{font-size:1.4rem;margin:0 0 1rem}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
dl{display:grid;grid-template-columns:max-content auto;gap:.3rem 1.2rem;margin:0}dt{color:#555}dd{margin:0}
table{border-collapse:collapse;font-size:.9rem}
td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}th{background:#eee}
.health-ok{color:#176f2c;font-weight:bold}.health-bad{color:#a4000f;font-weight:bold}
tr.action-block td{background:#fde8e8}tr.action-report td{background:#fff6d6}
footer{margin-top:2rem;color:#666}td{overflow-wrap:anywhere}
form{margin:.5rem 0}nav a{margin-right:1rem}#logout{display:inline;margin-left:1rem}
tr.expiring td,p.expiring{background:#fff0c2}tr.expired td{background:#fde8e8}tr.pending td{color:#555}
#login input{font-size:1rem;max-width:100%}.error{color:#a4000f;font-weight:bold}
@media (min-width:1000px){#flows td{overflow-wrap:break-word}
#flows td[data-label=src],#flows td[data-label=dst]{white-space:nowrap}}
@media (max-width:700px){
body{margin:.6rem}dl{grid-template-columns:auto}dd{margin:0 0 .4rem}
#flows,#flows tbody,#flows tr,#flows td{display:block}#flows tr.head{display:none}
#flows tr{margin:0 0 .6rem;border:1px solid #ccc}#flows td{border:0;padding:.1rem .4rem}
#flows td::before{content:attr(data-label) ": ";color:#555}
#registrations,#registrations tbody,#registrations tr,#registrations td{display:block}
#registrations tr.head{display:none}#registrations tr{margin:0 0 .6rem;border:1px solid #ccc}
#registrations td{border:0;padding:.1rem .4rem}
#registrations td::before{content:attr(data-label) ": ";color:#555}
}
"""


def esc(value: object) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape("" if value is None else str(value), quote=True)


def endpoint(addr: object, port: object) -> str:
    """addr:port, with brackets around IPv6 addresses."""
    a = "" if addr is None else str(addr)
    if port in (None, ""):
        return a
    return f"[{a}]:{port}" if ":" in a else f"{a}:{port}"


def when(ts: object) -> str:
    """A decision timestamp (epoch seconds or text) as local ISO time to the second."""
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        try:
            return dt.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")
        except (OverflowError, OSError, ValueError):
            return str(ts)
    return "" if ts is None else str(ts)


def duration(seconds: object) -> str:
    """Seconds as e.g. '2d 3h 04m' or '5m 07s'."""
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h {m:02d}m"
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {s:02d}s"


def flow_cells(rec: Mapping[str, object]) -> dict[str, str]:
    """The display cells of one recorded decision."""
    cells = {c: "" if rec.get(c) is None else str(rec.get(c)) for c in _FLOW_COLUMNS}
    cells["time"] = when(rec.get("ts"))
    cells["src"] = endpoint(rec.get("src"), rec.get("sport"))
    cells["dst"] = endpoint(rec.get("dst"), rec.get("dport"))
    return cells


def _counters(snap: Mapping[str, object]) -> list[dict[str, object]]:
    raw = snap.get("counters")
    return [c for c in raw if isinstance(c, dict)] if isinstance(raw, list) else []


def _recent(snap: Mapping[str, object]) -> list[Mapping[str, object]]:
    raw = snap.get("recent")
    return [r for r in raw if isinstance(r, dict)] if isinstance(raw, list) else []


def flow_totals(snap: Mapping[str, object]) -> dict[tuple[str, str], int]:
    """Decided flows by (klass, action) from the snapshot's `flows` counter."""
    out: dict[tuple[str, str], int] = {}
    for c in _counters(snap):
        labels = c.get("labels")
        value = c.get("value")
        if c.get("name") == "flows" and isinstance(labels, dict) and isinstance(value, int):
            key = (str(labels.get("klass", "")), str(labels.get("action", "")))
            out[key] = out.get(key, 0) + value
    return out


def _reasons(snap: Mapping[str, object]) -> list[str]:
    """Why health is not ok (appliance/health.py), worst first."""
    reasons = snap.get("health_reasons")
    return [str(r) for r in reasons[:8]] if isinstance(reasons, list) else []


def _link(token: str, **params: object) -> str:
    """A link to the page with these parameters (and the token, when the page was opened with one)."""
    q = {k: v for k, v in params.items() if v not in (None, "", 0)}
    if token:
        q["token"] = token
    return "?" + urllib.parse.urlencode(q) if q else "/"


def render_html(snap: Mapping[str, object], *, refresh: int = 0, host: str = "", page: int = 0,
                token: str = "", session: bool = False) -> str:
    """The read-only status page; self-contained (no external assets, no script). `host` shows one LAN
    host's decisions, `page` pages through them (PAGE_SIZE each), `refresh` > 0 reloads it every so many
    seconds (off by default: a reload would lose a technician's scrolling), `token` is carried in links,
    `session` (logged in with the form) adds a log-out button."""
    health = str(snap.get("health", "?"))
    backlog = snap.get("uplink_backlog")
    hclass = "ok" if health == "ok" else "bad"
    regver = snap.get("registry_version") or "none"
    reasons = _reasons(snap)
    why = f' <span id="health-reasons">({esc("; ".join(reasons))})</span>' if reasons else ""
    rows = [
        ("Health", f'<span id="health" class="health-{hclass}">{esc(health)}</span>{why}'),
        ("Mode", f'<span id="mode">{esc(snap.get("mode"))}</span>'),
        ("Registry version", f'<span id="registry-version">{esc(regver)}</span>'),
        ("Uplink backlog", f'<span id="uplink-backlog">{esc("n/a" if backlog is None else backlog)}</span>'),
        ("Uplink last error",
         f'<span id="uplink-error">{esc(snap.get("uplink_last_error") or "none")}</span>'),
        ("Registry sync", f'<span id="registry-sync">{esc(snap.get("registry_sync") or "off")}</span>'),
        ("Config check", f'<span id="config-check">{esc(snap.get("config_check"))}</span>'),
        ("Device", f'<span id="device-id">{esc(snap.get("device_id"))}</span>'),
        ("Version", esc(snap.get("version"))),
        ("Up for", esc(duration(snap.get("uptime_s")))),
    ]
    kern = snap.get("kernel")
    if isinstance(kern, Mapping):
        rows.append(("Passed without a verdict (fail-open)",
                     f'<span id="fail-open">{esc(kern.get("bypassed_packets"))} packets, '
                     f'{esc(kern.get("bypassed_flows"))} connections</span>'))
        rows.append(("New connections dropped (per-host limit)",
                     f'<span id="flood-dropped">{esc(kern.get("flood_dropped"))}</span>'))
    summary = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    totals = sorted(flow_totals(snap).items())
    counts = "".join(f"<tr><td>{esc(k)}</td><td>{esc(a)}</td><td>{n}</td></tr>" for (k, a), n in totals)
    counts_table = (f'<table id="counts"><tr><th>klass</th><th>action</th><th>flows</th></tr>{counts}</table>'
                    if counts else '<p id="counts">No flows decided yet.</p>')
    recent = [r for r in _recent(snap) if not host or host in (r.get("src"), r.get("dst"))]
    pages = max(1, -(-len(recent) // PAGE_SIZE))
    page = min(max(page, 0), pages - 1)
    shown = recent[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
    head = "".join(f"<th>{esc(_HEADERS.get(c, c))}</th>" for c in PAGE_COLUMNS)
    body = "".join(
        f'<tr class="action-{esc(r.get("action"))}">'
        + "".join(f'<td data-label="{esc(_HEADERS.get(c, c))}">{esc(flow_cells(r)[c])}</td>'
                  for c in PAGE_COLUMNS) + "</tr>"
        for r in shown)
    who = f" of {esc(host)}" if host else ""
    flows_table = (f'<table id="flows"><tr class="head">{head}</tr>{body}</table>' if shown
                   else f'<p id="flows">No tagged or blocked flows{who} yet.</p>')
    nav = []
    if page > 0:
        nav.append(f'<a id="newer" href="{esc(_link(token, host=host, page=page - 1))}">newer</a>')
    if page < pages - 1:
        nav.append(f'<a id="older" href="{esc(_link(token, host=host, page=page + 1))}">older</a>')
    if host:
        nav.append(f'<a id="all-hosts" href="{esc(_link(token))}">all hosts</a>')
    nav.append(f'<a id="refresh" href="{esc(_link(token, host=host, page=page))}">refresh</a>')
    keep_token = f'<input type="hidden" name="token" value="{esc(token)}">' if token else ""
    search = (f'<form id="host-filter" method="get">{keep_token}<label>LAN host '
              f'<input name="host" value="{esc(host)}" size="20" inputmode="decimal"></label> '
              '<button type="submit">show</button></form>')
    now = esc(when(snap.get("now")))
    auto = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh > 0 else ""
    refreshed = f"refreshed every {int(refresh)} s" if refresh > 0 else "not refreshed by itself"
    logout = ('<form id="logout" method="post" action="/logout"><button type="submit">log out</button></form>'
              if session else "")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="referrer" content="same-origin">{auto}'
        f"<title>tunnelwatch {esc(snap.get('device_id'))}</title><style>{_CSS}</style></head><body>"
        f"<h1>tunnelwatch {esc(snap.get('device_id'))}{logout}</h1><dl id=\"summary\">{summary}</dl>"
        f"<h2>Decided flows</h2>{counts_table}"
        f"<h2>Recent tagged and blocked flows{who} (newest first, page {page + 1} of {pages})</h2>"
        f"{search}{flows_table}<nav>{''.join(nav)}</nav>"
        f"<h2>Registered VPNs</h2>{render_registrations(snap)}"
        f"<footer>Read-only view, generated {now}, {refreshed}. "
        "Also: <code>/api/status</code> (JSON) and <code>/metrics</code> (Prometheus), "
        "both with <code>Authorization: Bearer</code>.</footer></body></html>")


def render_unauthorized(token_file: str | None = None, *, error: str = "") -> str:
    """The 401 page: a log-in form and where the token lives on the box; nothing about the box itself."""
    where = (f"the file <code>{esc(token_file)}</code> on the box" if token_file else
             "the file named by <code>status.token_file</code> in "
             "<code>/etc/tunnelwatch/tunnelwatch.yaml</code>")
    err = f'<p id="login-error" class="error">{esc(error)}</p>' if error else ""
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            # same-origin: the login POST then carries an Origin the server can check ("null" otherwise)
            '<meta name="referrer" content="same-origin">'
            f"<title>401 Unauthorized</title><style>{_CSS}</style>"
            '</head><body><h1 id="unauthorized">401 Unauthorized</h1>'
            f'{err}<form id="login" method="post" action="/login"><label>Status token<br>'
            '<input id="token" name="token" type="password" autocomplete="current-password" size="40" '
            'required autofocus></label> <button id="login-button" type="submit">log in</button></form>'
            f"<p>The status token is the first line of {where} (as root: <code>cat</code> it). "
            "Logging in keeps you in for 12 hours (a cookie for this page only). Scripts send "
            "<code>Authorization: Bearer TOKEN</code> (or <code>?token=TOKEN</code>).</p></body></html>")


def _registry_lines(snap: Mapping[str, object]) -> list[str]:
    """The registrations ended or ending soon, for the summary (the page lists them all)."""
    raw = snap.get("registrations")
    rows = [r for r in raw if isinstance(r, dict)] if isinstance(raw, list) else []
    now = snap.get("now")
    if not rows or not isinstance(now, int | float):
        return []
    near = [(r, standing(r, float(now))) for r in rows]
    near = [(r, s) for r, s in near if s[0] in ("expiring", "expired")]
    out = [f"  registrations:    {len(rows)}, {len(near)} ended or ending within 30 days"]
    out += [f"    {printable(r.get('customer'), 40)} ({printable(r.get('id'), 40)}): {s[1]}"
            for r, s in near[:5]]
    return out


def render_summary(snap: Mapping[str, object], *, limit: int = 20) -> str:
    """The human summary printed by `tunnelwatch status`."""
    p = printable
    backlog = snap.get("uplink_backlog")
    lines = [
        f"tunnelwatch {p(snap.get('version'))} on {p(snap.get('device_id'))}",
        f"  health:           {p(snap.get('health'))} (up {duration(snap.get('uptime_s'))})",
        *(f"    why:            {p(r)}" for r in _reasons(snap)),
        f"  mode:             {p(snap.get('mode'))}",
        f"  config check:     {p(snap.get('config_check'))}",
        f"  registry version: {p(snap.get('registry_version') or 'none')}",
        *_registry_lines(snap),
        f"  uplink backlog:   {p('n/a' if backlog is None else backlog)}",
        f"  uplink error:     {p(snap.get('uplink_last_error') or 'none')}",
        f"  registry sync:    {p(snap.get('registry_sync') or 'off')}",
    ]
    totals = flow_totals(snap)
    by_action: dict[str, int] = {}
    for (_, action), n in totals.items():
        by_action[action] = by_action.get(action, 0) + n
    decided = ", ".join(f"{n} {p(a)}" for a, n in sorted(by_action.items())) or "none yet"
    lines.append(f"  flows decided:    {decided}")
    ft = snap.get("flows")
    if isinstance(ft, dict):
        lines.append(f"  flow table:       {p(ft.get('tracked'))}/{p(ft.get('max'))} tracked, "
                     f"{p(ft.get('evicted'))} evicted when full, {p(ft.get('expired'))} expired idle, "
                     f"{p(ft.get('unparsed_packets'))} unreadable packets, "
                     f"{p(ft.get('classifier_errors'))} classifier errors")
        if ft.get("decoys"):  # an evasion tool at work on the LAN: worth a line of its own
            lines.append(f"  decoys:           {p(ft.get('decoys'))} low-TTL fakes from LAN hosts not "
                         "classified (a DPI-evasion tool; docs/enforcement.md)")
    kern = snap.get("kernel")
    if isinstance(kern, dict):
        hosts = kern.get("limited_hosts")
        over = (f" (over it now: {', '.join(p(h) for h in hosts[:5])})"
                if isinstance(hosts, list) and hosts else "")
        lines.append(f"  fail-open:        {p(kern.get('bypassed_packets'))} packets of "
                     f"{p(kern.get('bypassed_flows'))} connections passed without a verdict; "
                     f"{p(kern.get('flood_dropped'))} new connections dropped by the per-host limit{over}")
    calls = snap.get("voip_calls")
    if isinstance(calls, dict) and calls:
        lines.append("  concurrent calls: " + ", ".join(f"{p(h)} {p(n)}" for h, n in list(calls.items())[:5]))
    recent = _recent(snap)[:limit]
    if not recent:
        lines.append("recent tagged/blocked flows: none")
        return "\n".join(lines) + "\n"
    lines.append(f"recent tagged/blocked flows (newest {len(recent)}):")
    rows = [{c: p(v, 60) for c, v in flow_cells(r).items()} for r in recent]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in _FLOW_COLUMNS}
    lines.append("  " + " ".join(f"{c:{widths[c]}}" for c in _FLOW_COLUMNS).rstrip())
    lines += ["  " + " ".join(f"{r[c]:{widths[c]}}" for c in _FLOW_COLUMNS).rstrip() for r in rows]
    return "\n".join(lines) + "\n"
