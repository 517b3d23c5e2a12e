"""The one exception type for user errors.

A `FssegError` carries a single line that names the thing at fault and the fix. The CLI
prints it without a traceback and exits non-zero; anything else is a bug and shows one.
"""


class FssegError(Exception):
    """A user error: bad input, wrong artifact, bad option value. `str(err)` is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))
