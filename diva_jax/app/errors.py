"""The error type of bad user input to the experiment binaries (no heavy imports)."""


class ConfigError(ValueError):
  """Bad user input: a config value, a flag, a sweep definition or the workdir. The binaries
  print its message as one line (`error: ...`, exit status 2) without a traceback; every
  other exception propagates with its traceback."""
