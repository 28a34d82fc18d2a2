"""The one exception type users see: a one-line message naming the file, key or value at fault."""


class CptlabError(Exception):
    """A user-facing error. `str(err)` is a single line that says what to fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))


class RunDirRefused(CptlabError):
    """A run directory that this command must not touch (in use by another process, started with other
    inputs): reported, and nothing is written into it, not even a failed record."""
