"""Errors that a user can fix: the entry points print their message without a traceback."""


class UserError(Exception):
    """A problem with the input (config, data, model path) that the message explains."""


class DataError(UserError):
    pass


class ModelLoadError(UserError):
    pass


class RunDirError(UserError):
    pass
