"""Exception types of napari-atbsn.

Every error a user can cause derives from :class:`ATBSNError`, so the CLI
(and later the widgets) can show its message, which names the problem and
the fix, without a traceback. Each subclass also derives from the builtin
exception a Python caller would expect to catch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class ATBSNError(Exception):
    """Base class: a problem with the user's input, files or settings."""


class ConfigError(ATBSNError, ValueError):
    """A setting is out of range, unknown or inconsistent with another."""


class BlindSpotError(ConfigError):
    """A blind-spot size k is not 0 or a positive odd number the network supports."""


class AxesError(ATBSNError, ValueError):
    """An axes string does not describe the data."""


class ImageError(ATBSNError, ValueError):
    """Image data that cannot be used (dtype, size, NaN, ...)."""


class ModelFolderError(ATBSNError, OSError):
    """A model folder is missing, incomplete, corrupted or of another format."""


class ReadError(ATBSNError, OSError):
    """An input file is missing or cannot be read as an image."""


class WriteError(ATBSNError, OSError):
    """An output cannot be written (exists, unwritable, same as the input)."""


class DeviceError(ATBSNError, RuntimeError):
    """A requested compute device does not exist on this machine."""


@contextmanager
def damaged_input(where: str) -> Iterator[None]:
    """Read input pixels: what a decoder raises for a corrupt compressed strip or chunk (zlib, blosc, zstd,
    LZW ... each its own exception type) becomes a :class:`ReadError` that says where and what to do."""
    try:
        yield
    except (ATBSNError, MemoryError, RecursionError):
        raise
    except OSError as e:
        raise ReadError(f"could not read the input at {where}: {e.strerror or e}. Check that the file is still "
                        f"there and readable, then run the same command again.") from None
    except Exception as e:
        raise ReadError(f"the input could not be decoded at {where} ({type(e).__name__}: {e}); the file is damaged "
                        f"there (a corrupt compressed strip or chunk). Restore it from a copy or export it again; "
                        f"--roi can leave the damaged region out.") from None
