"""How much of a window a cutover needs: the window step (steps/window.py) cuts over only if
what is left of the window holds the forecast downtime x FORECAST_FACTOR + FORECAST_SLACK, and
the plan checks (plan_checks.py) refuse a window that could never hold one. Constants only (no
imports beyond datetime): `plan check` and preflight load this without the engine."""

from __future__ import annotations

from datetime import timedelta

__all__ = ["FORECAST_FACTOR", "FORECAST_SLACK", "MIN_CUTOVER", "SHORTEST_DOWNTIME"]

# the forecast is partly estimated; leave room for a slower final pass and takeover
FORECAST_FACTOR = 1.5
FORECAST_SLACK = timedelta(seconds=30)
# the least downtime a cutover has (quiesce, a final sync, the takeover, the services started)
SHORTEST_DOWNTIME = timedelta(seconds=40)
# the shortest window that can take a cutover: what await_window asks for the shortest downtime
MIN_CUTOVER = SHORTEST_DOWNTIME * FORECAST_FACTOR + FORECAST_SLACK
