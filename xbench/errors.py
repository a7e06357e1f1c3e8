"""Errors shown to the user as one sentence, without a traceback (``XBENCH_DEBUG=1`` shows it)."""

__all__ = ["UserError"]


class UserError(Exception):
    """A failure the user can fix that is not a config value (a locked run directory, a missing
    checkpoint); ``str(err)`` is one sentence, shown without a traceback."""
