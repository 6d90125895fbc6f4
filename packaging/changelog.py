#!/usr/bin/env python3
"""Generate the packages' metadata from the repository's single sources.

* ``version``: print the version from retinad/__init__.py (read with ``ast``, no import, so
  it works on a build host without retinad's dependencies).
* ``changelog OUT``: CHANGELOG.md to nfpm's chglog YAML, which nfpm renders as the deb's
  changelog.Debian.gz and the rpm's %changelog. One entry per ``## [version] - date``,
  one change per ``- bullet``.
* ``copyright OUT VENDOR_DIR``: the deb's machine-readable copyright file: retinad's LICENSE,
  then one paragraph per vendored distribution under VENDOR_DIR (name, version, licence
  from its dist-info METADATA), since those ship inside the package too.

Standard library only: it runs on the build host's /usr/bin/python3.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAINTAINER = "retinad maintainers <retinad@localhost>"
MAX_NOTE = 76
"""A bullet becomes the line "  * <bullet>" of changelog.Debian, which lintian caps at 80."""
_SECTION = re.compile(r"^## \[(?P<version>[^\]]+)\] - (?P<date>\d{4}-\d{2}-\d{2})\s*$")


def version() -> str:
    tree = ast.parse((ROOT / "retinad" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, str):
                return value
    raise SystemExit("retinad/__init__.py: no __version__ = '...' assignment")


def parse_changelog(text: str) -> list[tuple[str, str, list[str]]]:
    """[(version, date, [change, ...]), ...] newest first, as written."""
    entries: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            entries.append((m["version"], m["date"], []))
        elif line.startswith("- ") and entries:
            entries[-1][2].append(line[2:].strip())
        elif line.startswith("  ") and entries and entries[-1][2]:
            entries[-1][2][-1] += " " + line.strip()
    return entries


def changelog(out: Path) -> None:
    entries = parse_changelog((ROOT / "CHANGELOG.md").read_text())
    current = version()
    if not entries or entries[0][0] != current:
        raise SystemExit(
            f"CHANGELOG.md: the newest section must be '## [{current}] - YYYY-MM-DD' "
            f"(retinad/__init__.py's version), found {entries[0][0] if entries else 'none'}"
        )
    release = os.environ.get("RETINAD_RELEASE", "1")
    lines = []
    for i, (ver, date, changes) in enumerate(entries):
        if not changes:
            raise SystemExit(f"CHANGELOG.md: section [{ver}] has no '- ' bullet")
        for c in changes:
            if len(c) > MAX_NOTE:
                raise SystemExit(
                    f"CHANGELOG.md: section [{ver}]: bullet longer than {MAX_NOTE} characters "
                    f"(debian/changelog lines stop at 80): {c[:40]}..."
                )
        # The newest entry carries this build's release, so the deb changelog's top version
        # is the package's own (lintian checks that); older releases were all "-1".
        full = f"{ver}-{release if i == 0 else 1}"
        lines += [f"- semver: {full}", f"  date: {date}T00:00:00Z", f"  packager: {MAINTAINER}"]
        lines += ["  deb:", "    urgency: medium", "    distributions: [unstable]"]
        lines.append("  changes:")
        lines += [f"    - note: {json.dumps(c)}" for c in changes]
    out.write_text("\n".join(lines) + "\n")


def copyright_file(out: Path, vendor: Path) -> None:
    lic = (ROOT / "LICENSE").read_text().strip().splitlines()
    holder = next((ln for ln in lic if ln.startswith("Copyright")), "Copyright retinad authors")
    body = "\n".join(" " + (ln if ln.strip() else ".") for ln in lic[2:])
    parts = [
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: retinad\n",
        f"Files: *\n{holder}\nLicense: Expat\n{body}\n",
    ]
    for meta in sorted(vendor.glob("*.dist-info/METADATA")):
        msg = Parser().parsestr(meta.read_text(errors="replace"), headersonly=True)
        name, ver = msg["Name"], msg["Version"]
        if name is None or name.lower() == "retinad":
            continue
        licence = msg["License-Expression"] or _classifier_licence(msg) or msg["License"]
        licence = (licence or "see its dist-info").splitlines()[0].strip()[:80]
        parts.append(
            f"Files: usr/lib/retinad/{_top_level(meta.parent)}\n"
            f"Comment: vendored {name} {ver} from PyPI; its licence text is in\n"
            f" /usr/lib/retinad/{meta.parent.name}/\n"
            f"Copyright: the {name} authors\nLicense: {licence}\n{_common_licence_note(licence)}"
        )
    out.write_text("\n".join(parts))


def _common_licence_note(licence: str) -> str:
    """Debian keeps the GPL and Apache texts in /usr/share/common-licenses: point there."""
    names = [
        (key, path)
        for key, path in (("GPL-2", "GPL-2"), ("GPL-3", "GPL-3"), ("Apache", "Apache-2.0"))
        if key.lower() in licence.lower()
    ]
    if not names:
        return ""
    where = ", ".join(f"/usr/share/common-licenses/{p}" for _, p in names)
    return f" On Debian systems the full text is in {where}.\n"


def _classifier_licence(msg: object) -> str | None:
    for value in msg.get_all("Classifier") or []:  # type: ignore[attr-defined]
        if value.startswith("License :: OSI Approved :: "):
            return str(value.rsplit(" :: ", 1)[1])
    return None


def _top_level(dist_info: Path) -> str:
    top = dist_info / "top_level.txt"
    if top.exists():
        names = [n for n in top.read_text().split() if n]
        if names:
            return " ".join(f"{n}*" for n in names)
    return dist_info.name.split("-")[0] + "*"


def main(argv: list[str]) -> int:
    if argv[:1] == ["version"]:
        print(version())
    elif argv[:1] == ["changelog"] and len(argv) == 2:
        changelog(Path(argv[1]))
    elif argv[:1] == ["copyright"] and len(argv) == 3:
        copyright_file(Path(argv[1]), Path(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
