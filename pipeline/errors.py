"""The one exception type that reaches users as a plain message instead of a traceback."""


class PipelineError(Exception):
    """A problem the user can fix: the message names the file, row or parameter and what to do."""
