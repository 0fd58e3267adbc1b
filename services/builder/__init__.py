"""The builder: build jobs on build servers, their live logs and their artifacts.

It keeps the build jobs (``build.requested``, ``request.queued``), runs each allocated
build (``build.allocated``) over the pooled SSH connection to its server — mirror, checkout,
configure, ``make``, collect — streams the output to ``log.build.<id>``, stores artifacts
in the JetStream object store ``artifacts`` with verified SHA-256 sums, and answers
``build.cmd.get/list/cancel`` and ``artifact.cmd.list``.

A build runs detached on the server (own process group, pid file in the build directory),
so a builder that dies mid-build leaves something it can find and kill: the redelivered
``build.allocated`` starts the next attempt after killing the last one.
"""
