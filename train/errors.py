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


class DiskFull(UserError):
    """A write ran out of space (or quota); the message says what is intact and how to resume."""

    exit_code = 74  # EX_IOERR: distinct from bad input (2) and preemption (75)


def is_disk_full(error: BaseException | None) -> bool:
    """Whether an error, or one it was raised from, is "no space left on device" (or over quota):
    an OSError's errno, or the message of a library that wraps it (safetensors, Arrow)."""
    import errno

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


class PeerLost(Exception):
    """Another process of a multi-process run died or stopped answering."""

    exit_code = 76  # distinct from bad input (2), a full disk (74) and preemption (75)


# What torch.distributed's backends say when a peer is gone: gloo (its connection closed or reset, or
# no answer within the timeout) and NCCL (the watchdog's timeout, an aborted communicator).
# Narrow on purpose: a network timeout of a tracker or a download is not a lost peer.
_PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting", "Socket Timeout",
               "Watchdog caught collective operation timeout", "NCCL communicator was aborted")


def is_peer_lost(error: BaseException | None) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__name__ in ("DistBackendError", "DistNetworkError", "DistStoreError"):
            return True
        if isinstance(error, RuntimeError) and any(sign in str(error) for sign in _PEER_SIGNS):
            return True
        error = error.__cause__ or error.__context__
    return False
