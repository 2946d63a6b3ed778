"""The exit statuses every ``rmrrd`` subcommand shares (``check`` adds its verdicts)."""

import signal

EXIT_FAILURE = 1
"""A peer (xenstored, another host) said no or could not be reached."""
EXIT_USAGE = 2
"""Bad input: the message says what to fix."""
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""What a shell reports for a filter killed by SIGPIPE, as ``cat | head`` gives."""
