"""Errors the user sees. Each message is one line that names the field, file or plugin at fault
and what would be valid; the CLI prints it without a traceback."""


class OnestepError(Exception):
    """Base of user-facing errors."""


class ConfigError(OnestepError, ValueError):
    """A config value, key or file is wrong; the message starts with the field path."""


class PluginError(OnestepError):
    """A plugin or component name is unknown, duplicated or broken."""


class CheckpointError(OnestepError):
    """A checkpoint is missing, incomplete or does not match the run."""


class DivergenceError(OnestepError):
    """A training loss became NaN or infinite; nothing after the last finite step is saved."""


class Interrupted(OnestepError):
    """The user stopped training (Ctrl-C); the message says which checkpoint holds the last step."""

    exit_code = 130  # the shell's code for a process ended by SIGINT
