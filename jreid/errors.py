"""The error a user can cause and act on (a bad file, field, row or setting).

``main.py`` prints such errors as one or two lines (no traceback; ``--debug``
shows it). Raise ``InputError`` (a ``ValueError``) with a message that names the
file, key, row or field and says what was expected.
"""


class InputError(ValueError):
  """Bad input or settings, described well enough to fix without a traceback."""
