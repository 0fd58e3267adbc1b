"""``/api/v1/artifacts``: find a build's outputs and download them."""
from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from labfleet.shared.events.resource import Arch
from labfleet.shared.s3 import S3ObjectCorrupt, S3ObjectMissing, S3Unavailable

from .. import handlers
from ..adapters.state import ArtifactNotFound, artifact_info, stream_artifact
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
    """Stream one stored artifact (the API and the pages share this), from the JetStream
    object store or, where one is configured, the S3-compatible store: the store new
    artifacts go to is asked first, the other one holds those stored before a change."""
    object_name = f"{build_id}/{name}"
    s3_first = gw.s3 is not None and gw.settings.artifact_store == "s3"
    for store in ("s3", "jetstream") if s3_first else ("jetstream", "s3"):
        if store == "jetstream":
            response = await _from_jetstream(gw, object_name, name)
        else:
            response = await _from_s3(gw, object_name, name) if gw.s3 is not None else None
        if response is not None:
            return response
    raise ApiError(404, "not_found", f"no artifact {name!r} is stored for build {build_id}",
                   hint=f"list them with GET /api/v1/artifacts?build_id={build_id}",
                   field="name")


async def _from_jetstream(gw: Gateway, object_name: str, name: str
                          ) -> StreamingResponse | None:
    try:
        obj = await artifact_info(gw.bus.js, object_name)
    except ArtifactNotFound:
        return None
    return _response(stream_artifact(gw.bus.js, obj), obj.size, obj.sha256_hex, name)


async def _from_s3(gw: Gateway, object_name: str, name: str) -> StreamingResponse | None:
    assert gw.s3 is not None
    s3 = gw.s3
    try:
        obj = await s3.head(object_name)
    except S3ObjectMissing:
        return None
    except S3Unavailable as exc:
        log.error("artifact store failed", extra={"object": object_name, "error": str(exc)})
        raise ApiError(503, "artifact_store_unavailable",
                       f"the S3 artifact store failed to look up {name!r}; its answer is "
                       "in the gateway's log",
                       hint="try again later; an operator checks the store and the "
                            "gateway's LABFLEET_S3_* settings") from None

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in s3.stream(obj):
                yield chunk
        except S3ObjectCorrupt as exc:
            log.error("artifact digest mismatch", extra={"object": object_name,
                                                         "why": exc.why})
            raise
        except S3Unavailable as exc:  # mid-stream: the download is cut short
            log.error("artifact store failed", extra={"object": object_name,
                                                      "error": str(exc)})
            raise

    return _response(body(), obj.size, obj.sha256_hex, name)


def _response(body: AsyncIterator[bytes], size: int, sha256_hex: str,
              name: str) -> StreamingResponse:
    safe_name = name.replace('"', "")
    return StreamingResponse(body, media_type="application/octet-stream", headers={
        "Content-Length": str(size),
        "X-Checksum-SHA256": sha256_hex,
        "Content-Disposition": f'attachment; filename="{safe_name}"',
    })
