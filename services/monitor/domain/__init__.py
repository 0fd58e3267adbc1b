"""Pure rules of the monitor: reading a poll's output, judging a host's health."""
