"""Expected failures: one clear line on stderr and an exit code (docs/architecture.md, "Errors")."""


class EgnetError(Exception):
    """A failure the user can act on; the CLI prints it without a traceback."""

    exit_code = 1


class ConfigError(EgnetError):
    """Usage or configuration error (exit 2)."""

    exit_code = 2


class DataError(EgnetError):
    """The step ran and found a problem with its input (exit 1)."""

    exit_code = 1


class GateRefused(EgnetError):
    """A promotion/drift gate refused (exit 1)."""

    exit_code = 1


class StepFailed(RuntimeError):
    """An egnet command run inside a pipeline step exited non-zero (its error line is already printed)."""
