"""The scheduler: build queues and the placement of builds on build servers.

It keeps a projection of the build pool from ``resource.*``, ``health.changed`` and
``sample.build_server.*``; answers ``build.cmd.submit``; and, as the single writer per
pool (a PostgreSQL advisory lock around every decision), turns ``build.requested`` into
``build.allocated`` when a server has a free slot, or ``request.queued`` with an estimate
when none has.  ``domain/`` holds the pure placement strategy (``select_build_server``).
"""
