"""The one exception type a user should ever see from bertclf."""


class BertclfError(Exception):
    """A problem with the user's input or environment, stated in one line with its fix.

    The CLI prints it as ``error: <message>`` and exits with code 2; nothing is written.
    """
