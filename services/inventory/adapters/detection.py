"""Ask a build server what it is, over SSH with its host key pinned.

Every remote command is an argument list (``SshPool.run`` quotes it with ``shlex.join``);
nothing the admin typed is ever spliced into a shell line.  The commands are cheap and
run a few at a time over the one connection the probe opens, which it closes afterwards:
registration is rare, so there is no point keeping it.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence

from labfleet.shared.ssh import Credentials, RemoteCommandFailed, SshPool

from ..domain.capabilities import BUILD_TOOLS, HostFacts
from ..domain.errors import InventoryRefusal
from ..domain.toolchains import compilers_to_probe
from .remote import SshProbe

class BuildServerProbe(SshProbe):
    async def facts(self, address: str, port: int, creds: Credentials, host_key: str,
                    work_dir: str | None) -> HostFacts:
        session = self.session(address, port, creds, host_key)
        output, version = session.output, session.version

        async def disk() -> str:
            try:
                return await output(["df", "-Pk", "--", work_dir or "."])
            except RemoteCommandFailed as exc:
                if work_dir is None:
                    raise
                raise InventoryRefusal(
                    "work_dir_missing",
                    f"the work directory {work_dir!r} cannot be used on the host: "
                    f"{exc.stderr.strip()[-200:] or 'df failed'}",
                    hint="create it on the host (writable by the SSH user) or leave the field "
                         "empty to use the user's home directory",
                    field="work_dir") from None

        async def home() -> str:
            # a command starts in the user's home directory
            return work_dir if work_dir is not None else await output(["pwd"])

        try:
            machine = await output(["uname", "-m"])  # first: connects and authenticates
            probes = [*compilers_to_probe(machine), *BUILD_TOOLS]
            results = await asyncio.gather(
                output(["nproc"]),
                output(["cat", "/proc/cpuinfo"]),
                output(["cat", "/proc/meminfo"]),
                disk(),
                home(),
                asyncio.gather(*(version(p) for p in probes)),
                return_exceptions=True,  # let every command finish before the pool closes
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            nproc, cpuinfo, meminfo, df, cwd, versions = results
        finally:
            await session.close()
        return HostFacts(nproc=nproc, machine=machine, cpuinfo=cpuinfo, meminfo=meminfo, df=df,
                         work_dir=cwd.strip(), versions={p: v for p, v in versions if v})


#: compiled by every declared architecture's compiler at registration: answering
#: ``--version`` is not enough (a missing libc header or assembler breaks real builds)
PROBE_SOURCE = "int labfleet_probe(int x) { return x * 2; }\n"


async def compile_failures(pool_args: tuple[str, int, Credentials, str], compilers: Sequence[str],
                           *, connect_timeout: float, command_timeout: float) -> dict[str, str]:
    """Compile a one-line C file with each compiler in a temporary directory on the host.

    Returns compiler → why it failed (absent when it compiled); the directory is removed.
    """
    address, port, creds, host_key = pool_args
    pool = SshPool(connect_timeout=connect_timeout, command_timeout=command_timeout)
    failures: dict[str, str] = {}
    try:
        tmp = str((await pool.run(address, port, creds, host_key,
                                  ["mktemp", "-d", "-t", "labfleet-probe.XXXXXX"])).stdout
                  or "").strip()
        try:
            source = f"{tmp}/probe.c"
            # the file arrives on stdin: nothing is spliced into a shell line
            await pool.run(address, port, creds, host_key, ["tee", source], input=PROBE_SOURCE)
            for compiler in compilers:
                result = await pool.run(
                    address, port, creds, host_key,
                    [compiler, "-c", "-o", f"{tmp}/probe-{compiler}.o", source], check=False)
                if result.exit_status != 0:
                    said = (str(result.stderr or "") + str(result.stdout or "")).strip()
                    failures[compiler] = (f"exit status {result.exit_status}"
                                          + (f": {said[-300:]}" if said else ""))
        finally:
            await pool.run(address, port, creds, host_key, ["rm", "-rf", "--", tmp], check=False)
    finally:
        await pool.close()
    return failures
