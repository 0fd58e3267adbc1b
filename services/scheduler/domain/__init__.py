"""Pure scheduling logic: the build pool as data, placement, wait estimates. No I/O."""
