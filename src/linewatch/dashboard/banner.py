"""The alarm banner at the top of every page: one coloured line per alarm of :mod:`.alarm_watch` (red: critical,
amber: warning), or a green line when there is none. It refreshes itself every ``dashboard.refresh_s``."""

from __future__ import annotations

import html
import time

import streamlit as st

from linewatch.contracts.settings import Settings

from . import alarm_watch
from .alarms import Alarm
from .views import steady_style

_STYLE = {"critical": "background:#b3261e;color:#fff", "warning": "background:#f2b705;color:#1c1b1f",
          "ok": "background:#1e7d32;color:#fff", "unknown": "background:#5f6368;color:#fff"}
_WORD = {"critical": "CRITICAL", "warning": "WARNING", "ok": "OK", "unknown": "UNKNOWN"}
# The banner redraws every refresh_s in a fragment that may wait behind the page's own run: Streamlit would fade it
# as stale meanwhile, so an alarm would blink. It is drawn from the alarm thread's latest result, never stale.
_STEADY = steady_style(".st-key-lw_alarms", ".st-key-lw_alarms [data-stale]", ".st-key-lw_alarms [data-stale] *")


def _line(state: str, text: str, kind: str = "", subject: str = "") -> str:
    return (f"<div class='lw-alarm lw-alarm-{state}' data-alarm='{html.escape(kind)}' "
            f"data-subject='{html.escape(subject)}' style='{_STYLE[state]};padding:0.45em 0.8em;margin:0 0 0.3em 0;"
            f"border-radius:0.4em;font-weight:600'><span style='font-weight:800;margin-right:0.6em'>"
            f"{_WORD[state]}</span>{html.escape(text)}</div>")


def lines(alarms: list[Alarm], evaluated_at: float | None, period_s: float, now: float | None = None) -> list[str]:
    """The banner's HTML lines: alarms first; a grey line while none was evaluated yet or the last evaluation
    is older than five periods (the alarm thread is stuck: what it showed may be stale); green when all is well."""
    now = time.time() if now is None else now
    out = [_line(a.severity, a.text, a.kind, a.subject) for a in alarms]
    if evaluated_at is None:
        out.append(_line("unknown", "Alarms: the first evaluation is running"))
    elif now - evaluated_at > max(10.0, 5 * period_s):
        out.append(_line("unknown", f"Alarms last evaluated {now - evaluated_at:.0f} s ago: the line's state may have "
                                    "changed since", "alarms_stale"))
    elif not alarms:
        out.append(_line("ok", "No alarms: every camera inspected in time, workers and stores answer"))
    return out


def render(settings: Settings) -> None:
    """The banner (call inside a fragment that reruns every ``dashboard.refresh_s``)."""
    alarms, _, evaluated_at = alarm_watch.watch(settings).current()
    with st.container(key="lw_alarms"):
        st.markdown(_STEADY + "".join(lines(alarms, evaluated_at, settings.dashboard.alarms.period_s)),
                    unsafe_allow_html=True)
