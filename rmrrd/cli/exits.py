"""How a command ends: the exit statuses every ``rmrrd`` subcommand shares, and the
one error inside a trio exception group (``check`` and ``plan`` add their own statuses)."""

import signal

EXIT_FAILURE = 1
"""A peer (xenstored, another host) said no or could not be reached."""
EXIT_USAGE = 2
"""Bad input: the message says what to fix."""
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""What a shell reports for a filter killed by SIGPIPE, as ``cat | head`` gives."""
EXIT_INTERRUPTED = 128 + signal.SIGINT


def sole_cause(exc: BaseException) -> BaseException:
    """The one exception inside nested exception groups, or ``exc`` itself.

    trio's nurseries wrap whatever a task raised in an ``ExceptionGroup`` even when
    it is one error; this finds that error so that it can be reported as itself.  A
    group of several errors is returned as it is.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
