"""One exception type for user mistakes, so the CLI can print one clear line instead of a traceback."""


class TinyVLMError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option). The message says how."""
