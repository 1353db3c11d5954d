"""The one exception type that reaches users as a plain message instead of a traceback."""

from __future__ import annotations


class PipelineError(Exception):
    """A problem the user can fix: the message names the file, row or parameter and what to do.

    One raised in a DataLoader worker reaches the fit re-raised by torch, built from a message
    that is the worker's whole traceback; it keeps the original message (the traceback's last
    line) instead, so it is still one line.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        text = str(message)
        if text.startswith(f"Caught {type(self).__name__} ") and "\nOriginal Traceback" in text:
            raised_as = f"{type(self).__module__}.{type(self).__qualname__}: "
            for line in reversed(text.splitlines()):
                if line.startswith(raised_as):
                    message = line[len(raised_as) :]
                    break
        super().__init__(message, *args)


class EndedEarly(PipelineError):
    """A step stopped on purpose before its end (a pruned tune trial): its run ends KILLED with
    the message as its error tag, and the step exits with ENDED_EARLY_EXIT, not as a failure."""


class TrackingAway(PipelineError):
    """The tracking store did not answer, or stopped answering for longer than the MLflow
    client's retries: nothing is wrong with the step, which can run again once it is back.
    The step exits with TRACKING_AWAY_EXIT."""


ENDED_EARLY_EXIT = 3
# sysexits' EX_TEMPFAIL: the step stopped because the tracking store stayed away longer than the
# MLflow client's retries; once it is back the same step can run again into the same run.
TRACKING_AWAY_EXIT = 75


def first_line(text: str, limit: int = 300) -> str:
    """The first line of a long error text (a traceback, an HTML page), for a one-line message."""
    lines = str(text).strip().splitlines()
    return lines[0][:limit] if lines else ""
