"""Which WebUI this is, and its `Host` (built once): AUTOMATIC1111, Forge, or a host VideoElevator refuses
with a message naming it."""

from __future__ import annotations

import importlib.util

from lib_elevator.errors import SettingsError
from lib_elevator.webui.host import A1111, FORGE, FORGE_CLASSIC, Host, HostInfo


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def detect() -> HostInfo:
    """Forge's 2024+ backend (`backend.patcher.unet`; also its descendants ersatzForge and Neo), the
    old Forge backend (`modules_forge.unet_patcher` / `ldm_patched`: Forge before August 2024, Forge
    Classic, reForge), or AUTOMATIC1111."""
    if _importable("modules_forge") and _importable("backend.patcher.unet"):
        family = FORGE
    elif _importable("modules_forge.unet_patcher") or _importable("ldm_patched"):
        family = FORGE_CLASSIC
    else:
        family = A1111
    return HostInfo(family, _version(), _repository())


def _version() -> str:
    try:
        from modules import launch_utils

        return str(launch_utils.git_tag() or "")
    except Exception:  # an unusual install (no git, no tag): the family alone names the host
        return ""


def _repository() -> str:
    """owner/name of the host's git remote (e.g. lllyasviel/stable-diffusion-webui-forge,
    Haoming02/sd-webui-forge-classic, DenOfEquity/ersatzForge, Panchovix/stable-diffusion-webui-reForge)."""
    try:
        import subprocess

        from modules import paths_internal

        url = subprocess.run(["git", "-C", paths_internal.script_path, "config", "--get", "remote.origin.url"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # no git, no remote, an unusual install
        return ""
    parts = url.removesuffix(".git").replace(":", "/").rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else ""


class UnsupportedHost(Host):
    """A host whose names VideoElevator does not know: every job is refused with a message."""

    def __init__(self, info: HostInfo, reason: str):
        self.info, self.reason = info, reason

    def unsupported(self) -> str | None:
        return self.reason


_current: Host | None = None


def current() -> Host:
    global _current
    if _current is None:
        _current = build(detect())
    return _current


def build(info: HostInfo) -> Host:
    if info.family == FORGE:
        try:
            from lib_elevator.webui.forge.host import ForgeHost

            return ForgeHost(info)
        except (ImportError, AttributeError) as error:  # a descendant that renamed what we use
            return UnsupportedHost(info, f"this Forge ({info}) lacks a name VideoElevator uses ({error}); "
                                        "it was tested with Forge main @ dfdcbab6")
    if info.family == FORGE_CLASSIC:
        return UnsupportedHost(info, f"{info} (ldm_patched / modules_forge.unet_patcher: Forge before "
                                     "August 2024, Forge Classic, reForge) is not supported; use AUTOMATIC1111 "
                                     "v1.10 or Forge main")
    from lib_elevator.webui.a1111.host import A1111Host

    return A1111Host(info)


def check_supported(host: Host) -> None:
    reason = host.unsupported()
    if reason:
        raise SettingsError("host", reason)
