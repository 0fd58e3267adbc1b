"""Inventory: the register of every lab resource.

It owns resources of each kind (build servers now; QEMU hosts and boards join as further
kinds of the same record), their SSH credentials encrypted at rest, the host keys pinned
at registration, labels, lifecycle state and an audit trail.  Other services learn about
resources from ``resource.*`` events and ask for details (or, for the services that log
in, credentials) with ``resource.cmd.*`` requests.
"""
