"""Authentication and permissions on the bus: who each process is, and what it may do.

``permissions`` is the policy (pure data); ``identities`` keeps the keys on disk, renders
the server's configuration and gives a client its login options.
"""
from .identities import IdentityError, IdentityStore, connect_options
from .permissions import EXTERNAL, OPERATOR, SERVICES, inbox_prefix

__all__ = ["EXTERNAL", "OPERATOR", "SERVICES", "IdentityError", "IdentityStore",
           "connect_options", "inbox_prefix"]
