"""Pure logic of the gateway: credential formats and hashing, error-to-status mapping,
paging and the shapes pages render.  No I/O here."""
