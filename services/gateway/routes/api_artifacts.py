"""``/api/v1/artifacts``: find a build's outputs and download them."""
from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from labfleet.shared.artifacts import ArtifactNotFound, ArtifactReader, ArtifactStoreUnavailable
from labfleet.shared.events.build import ArtifactInfo, ArtifactListReply, ListArtifacts
from labfleet.shared.events.resource import Arch

from .. import handlers
from ..adapters.commands import ask_ok
from ..context import Gateway
from ..deps import CurrentUser, GatewayDep
from ..domain.errors import ApiError
from ..models import ArtifactPublic

log = logging.getLogger(__name__)

router = APIRouter(prefix="/artifacts", tags=["artifacts"])


@router.get("", response_model=list[ArtifactPublic])
async def find(gw: GatewayDep, _: CurrentUser,
               build_id: uuid.UUID | None = None, commit: str | None = None,
               ref: str | None = None, arch: Arch | None = None,
               latest: Annotated[bool, Query(description="the latest successful build")] = False
               ) -> list[ArtifactPublic]:
    return await handlers.list_artifacts(gw, build_id=build_id, commit=commit, ref=ref,
                                         arch=arch, latest=latest)


@router.get("/{build_id}/{name}", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
async def download(build_id: uuid.UUID, gw: GatewayDep, _: CurrentUser,
                   name: Annotated[str, Path(pattern=r"^[^/\\]+$")]) -> StreamingResponse:
    """The stored bytes, with their SHA-256 in ``X-Checksum-SHA256``."""
    return await artifact_response(gw, build_id, name)


async def artifact_response(gw: Gateway, build_id: uuid.UUID, name: str) -> StreamingResponse:
    """Stream one stored artifact (the API and the pages share this) from the store and
    bucket its build recorded (the JetStream object store or the S3-compatible store)."""
    reply = await ask_ok(gw.bus, ListArtifacts(build_id=build_id), ArtifactListReply)
    recorded = next((a for a in reply.artifacts if a.name == name), None)
    if recorded is None:
        raise ApiError(404, "not_found", f"no artifact {name!r} is recorded for build {build_id}",
                       hint=f"list them with GET /api/v1/artifacts?build_id={build_id}",
                       field="name")
    return await recorded_artifact_response(gw, recorded)


async def recorded_artifact_response(gw: Gateway, recorded: ArtifactInfo) -> StreamingResponse:
    reader = ArtifactReader(lambda: gw.bus.js, gw.s3, who="gateway")
    try:
        obj = await reader.stat(recorded)
    except ArtifactNotFound as exc:
        raise ApiError(404, "not_found", f"{exc}; it may have expired",
                       hint="pinned builds keep their artifacts; rebuild to get it again",
                       field="name") from None
    except ArtifactStoreUnavailable as exc:
        log.error("artifact store failed", extra={"object": recorded.object_name,
                                                  "error": str(exc)})
        raise ApiError(503, "artifact_store_unavailable",
                       f"the artifact store failed to look up {recorded.name!r}; its answer "
                       "is in the gateway's log",
                       hint="try again later; an operator checks the store and the "
                            "gateway's LABFLEET_S3_* settings") from None
    return _response(reader.stream(obj, expect_sha256=recorded.sha256 or None), obj.size,
                     recorded.sha256 or obj.sha256_hex, recorded.name)


def _response(body: AsyncIterator[bytes], size: int, sha256_hex: str,
              name: str) -> StreamingResponse:
    safe_name = name.replace('"', "")
    return StreamingResponse(body, media_type="application/octet-stream", headers={
        "Content-Length": str(size),
        "X-Checksum-SHA256": sha256_hex,
        "Content-Disposition": f'attachment; filename="{safe_name}"',
    })
