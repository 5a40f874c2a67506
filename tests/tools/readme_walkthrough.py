"""The README's walkthrough as data: the shell lines of its ops and device sections, as written,
and the one substitution a test machine needs (free ports for the README's fixed ones).

A section is the text from its heading to the next heading of any level, so a `##` section
does not take in its `###` subsections (the device runtime's model specs, for instance).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
EXAMPLES = REPO / "examples"

# The walkthrough: the device runtime's install, the fleet, the device's service and probe.
SECTIONS = ("## Installing the device runtime", "## Running a real fleet", "### The device as a service",
            "### Device eligibility")
BROKER_PORT, METRICS_PORT = 1883, 9108  # mosquitto-dev.conf and the credentials; the example coordinator

_FENCE = "```"
_TRAILING_COMMENT = re.compile(r"\s+#\s.*$")  # the README's comments follow a command after spaces
_BACKGROUND = re.compile(r"^(?P<command>.*[^&])&$")  # ends in one `&` (not `&&`)
# Substituted files: the broker's config and every TOML a line writes (credentials, configs).
_PORT_FILES = (".conf", ".toml")


@dataclass(frozen=True)
class ShellLine:
    section: str
    text: str  # as written in the README, continuation lines joined, comment included

    @property
    def command(self) -> str:
        """The line without its trailing comment (and with its `&`)."""
        return _TRAILING_COMMENT.sub("", self.text).strip()

    @property
    def background(self) -> bool:
        return _BACKGROUND.match(self.command) is not None

    @property
    def foreground_command(self) -> str:
        """The command itself: without its comment and without a trailing `&`."""
        match = _BACKGROUND.match(self.command)
        return match.group("command").strip() if match else self.command


def walkthrough_lines(readme: str | None = None) -> list[ShellLine]:
    """Every command line of the walkthrough's sections, in README order."""
    text = README.read_text(encoding="utf-8") if readme is None else readme
    sections = _sections(text)
    missing = [s for s in SECTIONS if s not in sections]
    assert not missing, f"README sections not found: {missing}"
    return [ShellLine(heading, line) for heading in _in_readme_order(SECTIONS, text)
            for line in _shell_lines(sections[heading])]


def _in_readme_order(headings: tuple[str, ...], text: str) -> list[str]:
    return sorted(headings, key=lambda heading: text.index(f"\n{heading}\n"))


def _sections(text: str) -> dict[str, list[str]]:
    """Each heading line (outside code blocks) and the lines up to the next heading."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    in_code = False
    for line in text.splitlines():
        if line.startswith(_FENCE):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            current = sections.setdefault(line.strip(), [])
            continue
        if current is not None:
            current.append(line)
    return sections


def _shell_lines(lines: list[str]) -> list[str]:
    """The commands of the section's ```sh blocks: no blank or comment-only lines, a trailing
    backslash joins the next line."""
    out: list[str] = []
    in_sh = False
    pending = ""
    for line in lines:
        if line.startswith(_FENCE):
            in_sh = line.strip() == "```sh" and not in_sh
            continue
        if not in_sh or not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line.strip())
        pending = ""
    return out


def with_ports(text: str, ports: dict[int, int]) -> str:
    """`text` with each README port replaced: only where a port stands (after ':' or a space,
    not followed by a digit), so a number inside a password or a hash is never touched."""
    for readme_port, port in ports.items():
        text = re.sub(rf"(?<=[:\s]){readme_port}(?!\d)", str(port), text)
    return text


def rewrite_port_files(root: Path, ports: dict[int, int]) -> None:
    """Apply with_ports to the config files under `root` that the walkthrough has written.
    Links are not followed: `examples/` stays as the repository has it."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        for name in files:
            path = Path(folder, name)
            if path.suffix not in _PORT_FILES or path.is_symlink():
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:  # replaced while we looked (a running device's state): not a config
                continue
            if (new := with_ports(text, ports)) != text:
                path.write_text(new, encoding="utf-8")  # in place: mode and owner stay
