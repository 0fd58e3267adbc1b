"""Pure build logic: job states and attempts, the remote commands of a build, errors."""
