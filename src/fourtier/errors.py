"""Errors the user can act on. Stages print them as one clear line and exit 2, without a traceback."""
import functools
import sys


class FourtierError(Exception):
    """Base class: the message names the bad input and the fix."""


class ParamsError(FourtierError):
    """params.yaml has a bad value."""


class VideoError(FourtierError):
    """A video cannot be read; the message is the reason recorded in manifests."""


class DataError(FourtierError):
    """A dataset is missing, empty or inconsistent."""


def exits_cleanly(main):
    """Decorator for entry points: a FourtierError becomes `error: ...` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except FourtierError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
