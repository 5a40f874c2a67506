"""Reading power, link and temperature facts from a Linux sysfs/procfs tree under `root`.

Every function takes the tree's root ("/" on a device, a fixture directory in tests) and
returns the value plus a short note of where it came from. Missing or unreadable files
mean "unknown", never an exception: a probe must not stop a device from reporting.

    root/sys/class/power_supply/<name>/{type,scope,present,capacity,status,online,
                                        energy_now,energy_full,charge_now,charge_full}
    root/sys/class/net/<if>/{type,operstate,carrier,uevent,wireless/,phy80211}
    root/proc/net/route, root/proc/net/ipv6_route     (the default route's interface)
    root/sys/class/thermal/thermal_zone*/{type,temp}  (millidegrees Celsius)
    root/sys/class/hwmon/hwmon*/temp*_input           (used only when no zone reads)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Kernel ARPHRD_* values in /sys/class/net/<if>/type.
_ARPHRD_ETHER, _ARPHRD_PPP, _ARPHRD_RAWIP, _ARPHRD_LOOPBACK = 1, 512, 519, 772
# Interface names that are cellular modems: qmi/mbim (wwan*), PPP dial-up (ppp*), Qualcomm
# and MediaTek phone modems (rmnet*, ccmni*), and USB modems that present as RNDIS/CDC
# Ethernet (usb*). A USB gadget link (Pi Zero OTG) also shows as usb0 and is then judged
# metered; that errs on the side of not spending someone's data plan.
CELLULAR_PREFIXES = ("wwan", "ppp", "rmnet", "ccmni", "usb")
_LINK_PREFERENCE = ("ethernet", "wifi", "cellular")  # the OS prefers wired links too
# Jetson Nano's "PMIC-Die" zone reports a constant 100 C placeholder, not a measurement.
IGNORED_THERMAL_TYPES = ("PMIC-Die",)
_PLAUSIBLE_C = (-40.0, 150.0)


@dataclass(frozen=True)
class Power:
    battery_percent: float | None  # lowest battery; None = no battery found
    charging: bool | None  # on external power; None = cannot tell
    source: str


@dataclass(frozen=True)
class Link:
    link: str  # "wifi", "ethernet", "cellular", "none" or "unknown"
    interface: str | None  # the interface judged, for asking NetworkManager about it
    source: str


def read_power(root: str | Path) -> Power | None:
    """Batteries and UPSes (type Battery or UPS) and external supplies (Mains, USB, ...).

    None when the tree has no power_supply class at all (not Linux). Peripheral batteries
    (scope Device: mice, headsets) are skipped. Several batteries: the lowest counts.
    """
    base = Path(root, "sys/class/power_supply")
    if not base.is_dir():
        return None
    levels, statuses, external, used = [], [], False, []
    for supply in sorted(base.iterdir()):
        kind = _read(supply / "type")
        if kind in ("Battery", "UPS"):
            if _read(supply / "scope") == "Device" or _read(supply / "present") == "0":
                continue
            level = _capacity(supply)
            if level is not None:
                levels.append(level)
                used.append(supply.name)
            statuses.append(_read(supply / "status"))
        elif kind is not None and _read(supply / "online") == "1":
            external = True  # Mains, USB, USB_PD, Wireless, ...
            used.append(supply.name)
    charging: bool | None
    if external or any(s in ("Charging", "Full") for s in statuses):
        charging = True
    elif statuses and all(s == "Discharging" for s in statuses):
        charging = False
    else:
        charging = None  # "Not charging"/"Unknown" without an online supply to tell
    battery = min(levels) if levels else None
    # A battery whose level cannot be read (a fuel gauge answering ENODATA, a UPS HAT driver
    # without capacity) still says whether it discharges: dropping that made a device on battery
    # look mains powered, and require_charging let it train.
    return Power(battery, charging if (battery is not None or external or statuses) else None,
                 f"sysfs:{base} ({', '.join(used) or 'no battery or online supply'})")


def read_link(root: str | Path) -> Link:
    """The kind of link that carries traffic: the default route's interface, or else the
    best interface that is up. "none" when nothing is up, "unknown" without a net class."""
    net = Path(root, "sys/class/net")
    if not net.is_dir():
        return Link("unknown", None, "no sysfs net class")
    route = _default_route_interface(Path(root))
    if route is not None and (net / route).is_dir():
        kind = classify_interface(root, route)
        if kind != "unknown":
            return Link(kind, route, f"default route via {route}")
        # A tunnel (VPN, WireGuard) hides the link underneath: judge the physical ones.
    up = [name for name in sorted(p.name for p in net.iterdir()) if _is_up(net / name)]
    kinds = {name: classify_interface(root, name) for name in up}
    for preferred in _LINK_PREFERENCE:
        for name, kind in kinds.items():
            if kind == preferred:
                return Link(kind, name, f"{name} is up" + (f" (default route via {route})" if route else ""))
    if route is not None or kinds:
        return Link("unknown", route, "no interface of a known kind is up")
    return Link("none", None, f"no interface up in {net}")


def classify_interface(root: str | Path, name: str) -> str:
    """wifi / ethernet / cellular / unknown, from uevent DEVTYPE, wireless/, name and type."""
    path = Path(root, "sys/class/net", name)
    devtype = _uevent(path).get("DEVTYPE")
    if devtype == "wlan" or (path / "wireless").is_dir() or (path / "phy80211").exists():
        return "wifi"
    if devtype == "wwan" or name.startswith(CELLULAR_PREFIXES):
        return "cellular"
    arphrd = _read_int(path / "type")
    if arphrd in (_ARPHRD_PPP, _ARPHRD_RAWIP):
        return "cellular"
    if arphrd == _ARPHRD_ETHER:
        return "ethernet"
    return "unknown"


def read_temperature(root: str | Path,
                     ignored_types: tuple[str, ...] = IGNORED_THERMAL_TYPES) -> tuple[float | None, str]:
    """The hottest plausible reading in degrees C over thermal zones (hwmon if none)."""
    readings: list[tuple[float, str]] = []
    for zone in sorted(Path(root, "sys/class/thermal").glob("thermal_zone*")):
        if _read(zone / "type") in ignored_types:
            continue
        _add_millidegrees(readings, zone / "temp")
    if not readings:
        for sensor in sorted(Path(root, "sys/class/hwmon").glob("hwmon*/temp*_input")):
            _add_millidegrees(readings, sensor)
    if not readings:
        return None, "no thermal zone or hwmon sensor"
    value, where = max(readings)
    return value, f"sysfs:{where} (max of {len(readings)})"


def _add_millidegrees(readings: list[tuple[float, str]], path: Path) -> None:
    raw = _read_int(path)
    if raw is None:
        return  # disabled zones fail reads with EINVAL/ENODATA
    celsius = raw / 1000.0
    if _PLAUSIBLE_C[0] <= celsius <= _PLAUSIBLE_C[1]:
        readings.append((celsius, str(path)))


def _capacity(supply: Path) -> float | None:
    level = _read_int(supply / "capacity")
    if level is not None:
        return float(min(100, max(0, level)))
    for now, full in (("energy_now", "energy_full"), ("charge_now", "charge_full")):
        n, f = _read_int(supply / now), _read_int(supply / full)
        if n is not None and f:
            try:
                return min(100.0, max(0.0, 100.0 * n / f))
            except OverflowError:  # a value past float range is no reading (this module never raises)
                return None
    return None


def _default_route_interface(root: Path) -> str | None:
    """The interface of the lowest-metric IPv4 default route, else an IPv6 one."""
    best: tuple[int, str] | None = None
    for line in _lines(root / "proc/net/route")[1:]:
        f = line.split()
        # Iface Destination Gateway Flags RefCnt Use Metric Mask ...; flag 0x1 = RTF_UP
        if len(f) >= 8 and f[1] == "00000000" and f[7] == "00000000" and _numbers(f, (3, 16), (6, 10)) and \
                int(f[3], 16) & 1:
            candidate = (int(f[6]), f[0])
            best = candidate if best is None or candidate < best else best
    if best is not None:
        return best[1]
    for line in _lines(root / "proc/net/ipv6_route"):
        f = line.split()
        # dest plen src splen nexthop metric refcnt use flags iface; 0x200 = RTF_REJECT
        if len(f) >= 10 and _numbers(f, (0, 16), (5, 16), (8, 16)) and int(f[0], 16) == 0 and f[1] == "00" and \
                f[9] != "lo" and not int(f[8], 16) & 0x200:
            candidate = (int(f[5], 16), f[9])
            best = candidate if best is None or candidate < best else best
    return best[1] if best else None


def _numbers(fields: list[str], *wanted: tuple[int, int]) -> bool:
    """True when each (index, base) field of a route line is a number: a line with one that is
    not (a damaged or fake file) is no route, rather than a ValueError (this module never raises)."""
    try:
        for index, base in wanted:
            int(fields[index], base)
    except ValueError:
        return False
    return True


def _is_up(path: Path) -> bool:
    if path.name == "lo" or _read_int(path / "type") == _ARPHRD_LOOPBACK:
        return False
    state = _read(path / "operstate")
    if state == "up":
        return True
    # PPP and tunnels report "unknown" while they work; carrier says whether they do.
    return state == "unknown" and _read(path / "carrier") == "1"


def _uevent(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in _lines(path / "uevent") if "=" in line)


def _lines(path: Path) -> list[str]:
    text = _read(path)
    return text.splitlines() if text else []


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
