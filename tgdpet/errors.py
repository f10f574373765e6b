"""User-facing errors.

Anything a user can cause (a bad file, a wrong option value, a model from
elsewhere) raises :class:`TgdpetError` with one sentence that says what is
wrong and what to do. The CLI prints that sentence, without a traceback, and
exits with status 2. Library users catch it like any exception.
"""


class TgdpetError(Exception):
    """An error caused by the user's input, with a message meant for them."""

    exit_code = 2
