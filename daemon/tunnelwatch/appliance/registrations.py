"""The registry as the status page shows it: who is registered, for what, and until when.

`registration_rows` turns the loaded registry into bounded, JSON-able status rows (the daemon sets them
as the `registrations` field whenever the registry is loaded); `render_registrations` is the page's
table, with a registration ending within EXPIRING_DAYS highlighted and an expired one marked, so "a test
entry ending in 29 days" is seen before the customer's VPN is blocked.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from tunnelwatch.policy.registry import Registry

EXPIRING_DAYS: Final = 30
MAX_ROWS: Final = 500  # registrations kept in the status state; the rest are counted, not listed


def registration_rows(registry: Registry) -> list[dict[str, object]]:
    """One row per registration (customer, id, protocols, LAN hosts, validity as epoch seconds)."""
    rows: list[dict[str, object]] = []
    for e in registry.entries[:MAX_ROWS]:
        rows.append({
            "id": e.id[:100], "customer": e.customer[:100], "protocols": [p[:40] for p in e.protocols[:10]],
            "lan_hosts": [str(n) for n in e.lan_hosts[:10]],
            "valid_from": e.valid_from.timestamp() if e.valid_from is not None else None,
            "valid_until": e.valid_until.timestamp() if e.valid_until is not None else None,
        })
    return rows


def _esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _epoch(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _date(ts: float) -> str:
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return str(ts)


def standing(row: Mapping[str, object], now: float) -> tuple[str, str]:
    """(css class, text) of a registration's end: "expired", "expiring" (within EXPIRING_DAYS) or ""."""
    until, start = _epoch(row.get("valid_until")), _epoch(row.get("valid_from"))
    if start is not None and start > now:
        return "pending", f"not in force before {_date(start)}"
    if until is None:
        return "", "no end date"
    days = (until - now) / 86400
    last = _date(until - 60)  # the end is exclusive (a date in the file means to the end of that day)
    if days <= 0:
        return "expired", f"expired {last}"
    if days <= EXPIRING_DAYS:
        return "expiring", f"{last} (ends in {int(days)} days)" if days >= 1 else f"{last} (ends today)"
    return "", last


def render_registrations(snap: Mapping[str, object]) -> str:
    """The page's registry section: a table of registrations, soonest end first."""
    raw = snap.get("registrations")
    rows = [r for r in raw if isinstance(r, dict)] if isinstance(raw, list) else []
    if not rows:
        return '<p id="registrations">No registrations loaded.</p>'
    now = _epoch(snap.get("now")) or 0.0
    rows.sort(key=lambda r: _epoch(r.get("valid_until")) or math.inf)
    body = []
    for r in rows:
        cls, end = standing(r, now)
        protocols = r.get("protocols") if isinstance(r.get("protocols"), list) else []
        hosts = r.get("lan_hosts") if isinstance(r.get("lan_hosts"), list) else []
        cells = [("customer", r.get("customer")), ("id", r.get("id")),
                 ("protocols", ", ".join(str(p) for p in protocols or [])),
                 ("LAN hosts", ", ".join(str(h) for h in hosts or []) or "any"), ("valid until", end)]
        body.append(f'<tr class="reg {cls}">' + "".join(
            f'<td data-label="{_esc(k)}">{_esc(v)}</td>' for k, v in cells) + "</tr>")
    soon = sum(1 for r in rows if standing(r, now)[0] in ("expiring", "expired"))
    note = (f'<p id="registrations-expiring" class="expiring">{soon} registration(s) ended or ending within '
            f"{EXPIRING_DAYS} days.</p>" if soon else "")
    head = "".join(f"<th>{h}</th>" for h in ("customer", "id", "protocols", "LAN hosts", "valid until"))
    return f'{note}<table id="registrations"><tr class="head">{head}</tr>{"".join(body)}</table>'
