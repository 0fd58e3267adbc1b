"""The builder's edges: its tables, inventory's credentials, the build server over SSH,
the artifact object store and the log stream."""
