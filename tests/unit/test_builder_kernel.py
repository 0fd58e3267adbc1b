"""The builder's kernel parts that need no server: spec, steps, errors, progress."""
from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from labfleet.builder.adapters.artifact_store import object_headers
from labfleet.builder.domain import kernel
from labfleet.builder.domain.errors import step_failed
from labfleet.builder.domain.progress import CompileHistory, Throttle, estimate, history_key
from labfleet.builder.domain.remote_plan import Workspace
from labfleet.shared.events.build import BuildBackend, BuildKind, BuildSpec
from labfleet.shared.events.resource import Arch

WS = Workspace("/home/lab/labfleet", uuid.UUID(int=7))


def spec(**kw: object) -> BuildSpec:
    return BuildSpec(**{"repo_url": "git://10.0.0.1/linux.git", "arch": Arch.ARM64,
                        "config": "tinyconfig", **kw})


def test_kind_follows_the_config_unless_given() -> None:
    assert spec().build_kind == BuildKind.KERNEL
    assert spec(config="").build_kind == BuildKind.MAKE
    assert spec(config="", kind="kernel").build_kind == BuildKind.KERNEL
    assert spec().backend == BuildBackend.MAKE  # TuxMake only when asked for


@pytest.mark.parametrize("line", ["CONFIG_A=y; reboot", "CONFIG_A=$(id)", "FOO=y",
                                  "CONFIG_A=y\nCONFIG_B=y", "# CONFIG_A is set", "-CONFIG_A=y"])
def test_config_options_must_be_kconfig_lines(line: str) -> None:
    with pytest.raises(ValidationError, match="is no kconfig line"):
        spec(config_options=[line])


def test_configure_passes_every_spec_value_as_an_argument() -> None:
    s = spec(config_fragments=["kernel/configs/debug.config"],
             config_options=["CONFIG_PRINTK=y", "# CONFIG_MODULES is not set",
                             'CONFIG_CMDLINE="console=ttyAMA0"'])
    argv = kernel.configure_step(WS, s, "aarch64-linux-gnu-")
    script, args = argv[2], argv[3:]
    assert "CONFIG_PRINTK" not in script and "debug.config" not in script
    assert args == ["configure", WS.src, "tinyconfig", f"{WS.build_dir}/labfleet.config", "1",
                    "kernel/configs/debug.config", "3", "CONFIG_PRINTK=y",
                    "# CONFIG_MODULES is not set", 'CONFIG_CMDLINE="console=ttyAMA0"',
                    "ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]


def test_a_kernel_without_config_target_uses_defconfig_and_kernel_variables() -> None:
    s = spec(config="", kind="kernel", arch=Arch.RISCV64)
    assert kernel.compile_step(WS, s, "riscv64-linux-gnu-", 2) == [
        "make", "-C", WS.src, "-j2", "ARCH=riscv", "CROSS_COMPILE=riscv64-linux-gnu-"]
    assert kernel.configure_step(WS, s, "riscv64-linux-gnu-")[5] == "defconfig"


@pytest.mark.parametrize(("arch", "image"), [(Arch.X86_64, "arch/x86/boot/bzImage"),
                                             (Arch.ARM64, "arch/arm64/boot/Image"),
                                             (Arch.RISCV64, "arch/riscv/boot/Image")])
def test_collect_looks_for_the_image_of_the_architecture(arch: Arch, image: str) -> None:
    argv = kernel.collect_step(WS, spec(arch=arch), "", 2)
    assert argv[5:8] == [f"{WS.build_dir}/out", image, image.rsplit("/", 1)[0] + "/dts"]


def test_tuxmake_is_used_where_asked_and_found() -> None:
    assert not kernel.use_tuxmake(spec(), "tuxmake 1.45.0")  # backend make
    assert kernel.use_tuxmake(spec(backend="auto"), "tuxmake 1.45.0")
    assert not kernel.use_tuxmake(spec(backend="auto"), "")
    assert kernel.use_tuxmake(spec(backend="tuxmake"), "")  # and fails for want of it
    assert not kernel.use_tuxmake(spec(config="", backend="tuxmake"), "tuxmake 1.45.0")
    argv = kernel.tuxmake_step(WS, spec(backend="tuxmake", config_options=[
        "CONFIG_PRINTK=y", "# CONFIG_MODULES is not set"]), 2)
    assert "--target-arch=arm64" in argv and "--kconfig=tinyconfig" in argv
    assert "--kconfig-add=CONFIG_PRINTK=y" in argv and "--kconfig-add=CONFIG_MODULES=n" in argv
    assert "--kernel-image=Image" in argv and argv[-4:] == ["config", "kernel", "modules", "dtbs"]


def test_a_dropped_option_is_named_in_the_error() -> None:
    tail = ["==> make tinyconfig", "labfleet: option not applied: CONFIG_VIRTIO_PCI=y "
            "(from labfleet.config; its dependencies are not met)"]
    error = step_failed("configure", 3, tail)
    assert error.code == "config_option_dropped"
    assert "CONFIG_VIRTIO_PCI=y" in error.message
    assert step_failed("configure", 2, ["make: *** [Makefile:1] Error 2"]).code == "configure_failed"
    assert step_failed("tuxmake", 2, ["E: kernel: FAIL"]).code == "tuxmake_failed"


def test_progress_from_the_last_line_count_then_time_and_never_100() -> None:
    lines = CompileHistory(lines=1000, seconds=100.0)
    assert estimate(lines, 250, 90.0) == 25.0
    assert estimate(lines, 5000, 1.0) == 99.0
    assert estimate(CompileHistory(lines=0, seconds=100.0), 10, 40.0) == 40.0
    assert estimate(None, 10, 40.0) is None


def test_progress_is_throttled_and_only_sent_when_it_moved() -> None:
    t = Throttle(interval_s=2.0)
    assert t.due(0.0, 1.0)
    assert not t.due(1.0, 5.0)  # too soon
    assert t.due(2.5, 5.0)
    assert not t.due(9.0, 5.0)  # unchanged
    assert not t.due(9.0, None)


def test_history_key_separates_what_compiles_differently() -> None:
    assert history_key(spec()) == history_key(spec(ref="v6.1", server="bs1"))
    assert history_key(spec()) != history_key(spec(arch=Arch.X86_64))
    assert history_key(spec()) != history_key(spec(config_options=["CONFIG_SMP=y"]))


def test_metadata_becomes_object_headers() -> None:
    assert object_headers({"toolchain": "gcc 12", "build_id": "x"}) == {
        "Labfleet-Toolchain": ["gcc 12"], "Labfleet-Build-Id": ["x"]}
