"""The `stylefu` command's exit codes (core/cli/main.py's docstring says when each is given)."""

EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_SOME_FAILED = 3  # `stylefu batch`: some items failed, each in the manifest
EXIT_CANCELLED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for coreutils' `yes | head -1`


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt (temporary files are removed on the way)."""
