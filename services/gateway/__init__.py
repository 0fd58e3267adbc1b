"""The ops gateway: REST API, web UI, live streams and authentication.

It owns users, API tokens and sessions — no domain state.  Every request is translated
into a command on the bus (request/reply, where a person waits) or read from the shared
state other services publish (KV buckets, the artifact object store, log streams).
"""
