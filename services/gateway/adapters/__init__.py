"""Where the gateway touches the outside: its own tables, the bus, KV and object store."""
