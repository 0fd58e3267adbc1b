"""The web UI in a real browser (Debian's Chromium driven by Playwright) against a real
gateway on real NATS and PostgreSQL: log in, watch a build server's row change live."""
from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from labfleet.shared.events.envelope import ErrorInfo
from labfleet.shared.events.health import HostSample, HostSampled
from labfleet.shared.events.resource import (
    RegisterBuildServer,
    RegistrationReply,
    ResourceKind,
    ResourceListReply,
)

from tests.integration.test_gateway_api import server_view
from tests.integration.test_gateway_support import (  # noqa: F401
    RunningGateway,
    artifact_store,
    fixed,
    gateway,
    responder,
)

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


@pytest.fixture
async def browser():  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): run "
                    "`bash infra/setup.sh`, which installs it")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed: pip install -e '.[test]'")
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


def watch_csp(page) -> list[str]:  # type: ignore[no-untyped-def]
    """What the browser reports as refused by the Content-Security-Policy, as it happens."""
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text)
            if "Content Security Policy" in msg.text else None)
    page.on("pageerror", lambda exc: violations.append(str(exc))
            if "Content Security Policy" in str(exc) else None)
    return violations


async def log_in(page, gateway: RunningGateway) -> None:  # type: ignore[no-untyped-def]
    await page.goto(f"{gateway.base_url}/build-servers")
    assert "/login" in page.url  # pages need a session
    await page.fill("input[name=username]", "admin")
    await page.fill("input[name=password]", "wrong")
    await page.click("button[type=submit]")
    assert await page.locator(".error").inner_text() == "Wrong user name or password."
    await page.fill("input[name=password]", gateway.admin_password)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{gateway.base_url}/build-servers")


def sample(resource_id: uuid.UUID, cpu: float) -> HostSampled:
    return HostSampled(sample=HostSample(
        resource_id=resource_id, kind=ResourceKind.BUILD_SERVER, at=datetime.now(UTC),
        cpu_pct=cpu, load1=1.0, cpu_cores=4, mem_total_mb=8192, mem_used_mb=4096,
        disk_total_gb=100.0, disk_free_gb=60.0, compile_procs=3))


async def test_dashboard_row_updates_live_when_a_sample_arrives(
        gateway: RunningGateway, browser) -> None:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:6]
    watched, other = server_view(f"live-{tag}-a"), server_view(f"live-{tag}-b")
    gateway.gateway.hub.forget_resources()
    js = gateway.nc.jetstream()
    await js.publish(f"sample.build_server.{watched.resource_id}",
                     sample(watched.resource_id, 12.0).model_dump_json().encode())
    async with responder(gateway.nc, "resource.cmd.list", fixed(ResourceListReply(
            ok=True, resources=[watched, other]))):
        context = await browser.new_context()
        page = await context.new_page()
        violations = watch_csp(page)
        await log_in(page, gateway)
        cookie = next(c for c in await context.cookies() if c["name"] == "labfleet_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        await page.goto(f"{gateway.base_url}/build-servers?q=live-{tag}")
        row = page.locator(f"#server-{watched.resource_id}")
        await row.wait_for()
        cpu = row.locator("[data-metric=cpu] .num")
        assert await cpu.inner_text() == "12%"
        # the bar's width comes from static/app.js (the policy refuses style="" attributes)
        cpu_bar = row.locator("[data-metric=cpu] .bar span")
        assert await cpu_bar.evaluate("el => el.style.width") == "12%"
        await page.evaluate("window.__not_reloaded = true")
        # the SSE stream is open once the hub counts the browser as a client
        deadline = time.monotonic() + 10
        while not gateway.gateway.hub.clients and time.monotonic() < deadline:
            await page.wait_for_timeout(50)
        assert gateway.gateway.hub.clients, "the page did not open its live stream"

        published = time.monotonic()
        await js.publish(f"sample.build_server.{watched.resource_id}",
                         sample(watched.resource_id, 87.0).model_dump_json().encode())
        cell = f"#server-{watched.resource_id} [data-metric=cpu]"
        await page.wait_for_function(
            f"() => document.querySelector('{cell} .num').textContent.trim() === '87%'",
            timeout=10_000)
        latency = time.monotonic() - published
        assert await page.evaluate("window.__not_reloaded === true")
        assert "(3 cc)" in await row.locator("[data-metric=active]").inner_text()
        # the swapped-in row's bar is drawn too
        assert await page.locator(f"{cell} .bar span").evaluate("el => el.style.width") == "87%"
        other_cpu = page.locator(f"#server-{other.resource_id} [data-metric=cpu] .num")
        assert await other_cpu.inner_text() == "–"
        print(f"\n[gateway] sample → browser row updated in {latency * 1000:.0f} ms")
        assert latency < 10.0
        assert violations == [], violations
        await context.close()


async def test_registration_form_shows_errors_by_the_field_and_the_fingerprint(
        gateway: RunningGateway, browser) -> None:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:6]
    gateway.gateway.hub.forget_resources()
    context = await browser.new_context()
    page = await context.new_page()
    violations = watch_csp(page)
    async with responder(gateway.nc, "resource.cmd.list",
                         fixed(ResourceListReply(ok=True, resources=[]))):
        await log_in(page, gateway)

        async def fill() -> None:
            await page.fill("input[name=hostname]", f"reg-{tag}")
            await page.fill("input[name=address]", "127.0.0.1")
            await page.fill("input[name=username]", "lab")
            await page.check("input[value=password]")
            await page.fill("input[name=password]", "hunter2")
            await page.check("input[name=architectures][value=arm64]")

        refused = RegistrationReply(ok=False, error=ErrorInfo(
            code="missing_toolchain", message="arm64 needs aarch64-linux-gnu-gcc, not found",
            hint="install gcc-aarch64-linux-gnu or untick arm64", field="architectures"))
        await fill()
        async with responder(gateway.nc, RegisterBuildServer.subject, fixed(refused)):
            await page.click("form.register button[type=submit]")
            message = page.locator("#error-architectures")
            await message.wait_for(timeout=10_000)
        assert "aarch64-linux-gnu-gcc" in await message.inner_text()
        # what was typed stays (except the password)
        assert await page.input_value("input[name=hostname]") == f"reg-{tag}"
        assert await page.input_value("input[name=password]") == ""

        view = server_view(f"reg-{tag}")
        await fill()
        async with responder(gateway.nc, RegisterBuildServer.subject,
                             fixed(RegistrationReply(ok=True, resource=view))):
            await page.click("form.register button[type=submit]")
            await page.locator("#registered").wait_for(timeout=10_000)
        assert await page.locator("#fingerprint").inner_text() == "SHA256:abcdef"
        assert "4 cores" in await page.locator("#registered").inner_text()

        # a page older than the session's token (a log-in in another tab): refused, and
        # the form says so instead of failing silently
        await page.evaluate("""() => {
            document.querySelector('meta[name=csrf-token]').content = 'stale';
            document.querySelectorAll('input[name=csrf_token]').forEach(i => i.value = 'stale');
        }""")
        await fill()
        async with responder(gateway.nc, RegisterBuildServer.subject,
                             fixed(RegistrationReply(ok=True, resource=view))) as commands:
            await page.click("form.register button[type=submit]")
            note = page.locator(".request-error")
            await note.wait_for(timeout=10_000)
        assert "CSRF token" in await note.inner_text()
        assert "reload the page" in await note.inner_text()
        assert commands == []
    assert violations == [], violations
    await context.close()


async def test_build_page_streams_the_log_live_and_offers_the_artifact(
        gateway: RunningGateway, browser) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    from labfleet.shared.events.build import (
        ArtifactInfo,
        ArtifactListReply,
        BuildReply,
        BuildStatus,
        LogChunk,
    )

    from tests.integration.test_gateway_api import build_view

    build_id = uuid.uuid4()
    js = gateway.nc.jetstream()
    payload = b"\x7fELF fake kernel image\n" * 100
    store = await artifact_store(js)
    await store.put(f"{build_id}/Image", payload)
    running = build_view(build_id, BuildStatus.RUNNING)
    done = build_view(build_id, BuildStatus.SUCCEEDED, [ArtifactInfo(
        name="Image", size=len(payload), sha256=hashlib.sha256(payload).hexdigest(),
        object_name=f"{build_id}/Image", bucket="artifacts")])
    current = {"view": running}

    async def put(seq: int, text: str, eof: bool = False) -> None:
        chunk = LogChunk(build_id=build_id, seq=seq, at=datetime.now(UTC), text=text, eof=eof)
        await js.publish(f"log.build.{build_id}", chunk.model_dump_json().encode())

    await put(1, "fetching <repo>\n")
    context = await browser.new_context(accept_downloads=True)
    page = await context.new_page()
    violations = watch_csp(page)
    recorded = ArtifactListReply(ok=True, build_id=build_id, artifacts=done.artifacts)
    async with responder(gateway.nc, "resource.cmd.list",
                         fixed(ResourceListReply(ok=True, resources=[]))), \
            responder(gateway.nc, "build.cmd.get",
                      lambda _: BuildReply(ok=True, build=current["view"])), \
            responder(gateway.nc, "artifact.cmd.list", fixed(recorded)):
        await log_in(page, gateway)
        await page.goto(f"{gateway.base_url}/builds/{build_id}")
        log = page.locator("#log")
        await page.wait_for_function(
            "() => document.querySelector('#log').textContent.includes('fetching <repo>')",
            timeout=10_000)
        await put(2, "compiling\n")
        await page.wait_for_function(
            "() => document.querySelector('#log').textContent.includes('compiling')",
            timeout=10_000)
        current["view"] = done
        await put(3, "done\n", eof=True)
        await page.get_by_role("link", name="Image").wait_for(timeout=10_000)
        assert await log.text_content() == "fetching <repo>\ncompiling\ndone\n"
        assert hashlib.sha256(payload).hexdigest() in await page.content()
        async with page.expect_download() as download_info:
            await page.get_by_role("link", name="Image").click()
        download = await download_info.value
        saved = Path(await download.path())
        assert saved.read_bytes() == payload
    assert violations == [], violations
    await context.close()


async def test_api_page_renders_swagger_ui_from_the_gateway_alone(
        gateway: RunningGateway, browser) -> None:  # type: ignore[no-untyped-def]
    context = await browser.new_context()
    page = await context.new_page()
    violations = watch_csp(page)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await page.goto(f"{gateway.base_url}/docs")
    title = page.locator(".swagger-ui .info .title")
    await title.wait_for(timeout=15_000)
    assert "labfleet gateway" in await title.inner_text()
    await page.locator(".opblock-tag", has_text="build servers").first.wait_for()
    assert requested and all(url.startswith((gateway.base_url, "data:"))
                             for url in requested), requested
    assert violations == [], violations
    await context.close()
