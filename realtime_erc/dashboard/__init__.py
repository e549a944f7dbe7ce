"""The web dashboard: a static page (HTML/JS/CSS + vendored mqtt.js) and the server for it.

The page connects to the broker over MQTT-over-WebSockets and shows, per session and speaker,
the current emotion, its probabilities and the conversation's timeline. See :mod:`.server`.
"""

from realtime_erc.dashboard.server import STATIC_DIR, DashboardServer

__all__ = ["STATIC_DIR", "DashboardServer"]
