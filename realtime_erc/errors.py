"""The one error family a user can cause.

Every problem a user can fix (a bad configuration key, a corrupt recording, a missing device, an
unreachable broker, a wrong checkpoint) raises a subclass of :class:`UserError` whose message
names the problem and the fix. The command line catches this one type: one line, exit status 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; its message names the problem and the fix."""
