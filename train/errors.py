"""Errors that a user can fix: the entry points print their message without a traceback."""


class UserError(Exception):
    """A problem with the input (config, data, model path) that the message explains."""


class ConfigError(UserError):
    """A setting of the right type but outside its valid range; the message names the key."""


class DataError(UserError):
    pass


class ModelLoadError(UserError):
    pass


class RunDirError(UserError):
    pass


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGINT after writing a checkpoint; the message says how to resume."""

    exit_code = 75  # EX_TEMPFAIL: try again later
