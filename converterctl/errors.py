"""What can end a command, each with its exit status (docs/cli.md lists them)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran, the outcome is not the one asked for (job failed, digest mismatch)
EXIT_USAGE = 2  # bad flags or arguments (argparse uses 2 as well)
EXIT_API = 3  # the master answered with an error
EXIT_UNREACHABLE = 4  # no answer from the master at all
EXIT_TIMEOUT = 5  # watch gave up before the jobs finished


class CliError(Exception):
    """An error printed as one line on stderr, the process ending with ``exit_code``."""

    exit_code = EXIT_FAILED


class UsageError(CliError):
    exit_code = EXIT_USAGE


class ApiError(CliError):
    exit_code = EXIT_API

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


class Unreachable(CliError):
    exit_code = EXIT_UNREACHABLE


class Failed(CliError):
    exit_code = EXIT_FAILED


class TimedOut(CliError):
    exit_code = EXIT_TIMEOUT
