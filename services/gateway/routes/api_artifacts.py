"""``/api/v1/artifacts``: find a build's outputs and download them."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from labfleet.shared.events.resource import Arch

from .. import handlers
from ..adapters.state import ArtifactNotFound, artifact_info, stream_artifact
from ..context import Gateway
from ..deps import CurrentUser, GatewayDep
from ..domain.errors import ApiError
from ..models import ArtifactPublic

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
    """Stream one stored artifact (the API and the pages share this)."""
    object_name = f"{build_id}/{name}"
    try:
        obj = await artifact_info(gw.bus.js, object_name)
    except ArtifactNotFound:
        raise ApiError(404, "not_found", f"no artifact {name!r} is stored for build {build_id}",
                       hint=f"list them with GET /api/v1/artifacts?build_id={build_id}",
                       field="name") from None

    async def body() -> AsyncIterator[bytes]:
        async for chunk in stream_artifact(gw.bus.js, obj):
            yield chunk

    safe_name = name.replace('"', "")
    return StreamingResponse(body(), media_type="application/octet-stream", headers={
        "Content-Length": str(obj.size),
        "X-Checksum-SHA256": obj.sha256_hex,
        "Content-Disposition": f'attachment; filename="{safe_name}"',
    })
