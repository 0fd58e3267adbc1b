"""One module of message models per domain; import from the domain module.

``resource`` (inventory), ``health`` (monitor), ``build`` (builder/scheduler),
``request`` (scheduler), ``system`` (liveness, dead letters).
"""
from .envelope import Command, ErrorInfo, Event, Message, Reply

__all__ = ["Command", "ErrorInfo", "Event", "Message", "Reply"]
