"""Build the offline HTML template of ``dvc plots show``: vega, vega-lite, vega-embed inlined.

DVC's default page loads the three libraries from cdn.jsdelivr.net and renders blank offline.
This script fetches them from the npm registry at pinned versions (``npm pack``, integrity
checked against the sha512 pinned below), checks that their major versions are the ones DVC's
own templates and page are written for, and writes a template without DVC's ``{scripts}``
placeholder (so no CDN tag is added) to ``.dvc/plots/offline.html`` (git-ignored), which
``.dvc/config`` names as ``plots.html_template`` (a path relative to ``.dvc/``).

    python scripts/build_plots_template.py          # once per clone (setup, CI)
    dvc plots show                                  # dvc_plots/index.html renders offline

Any failure (npm missing, fetch failure, integrity mismatch, version drift) exits non-zero.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / ".dvc" / "plots" / "offline.html"
DEFAULT_CACHE = ROOT / ".cache" / "npm-vega"

#: name -> (version, npm ``dist.integrity``, UMD bundle inside the package). vega-embed 6 is the
#: last line for vega 5 / vega-lite 5, the majors of DVC's templates ($schema vega-lite/v5).
PINS: dict[str, tuple[str, str, str]] = {
    "vega": (
        "5.33.1",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1Lcr"
        "bHUskQbGUP8gXOzyQw==",
        "package/build/vega.min.js",
    ),
    "vega-lite": (
        "5.23.0",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4"
        "DYTs/RPoTeYAuEg6mA==",
        "package/build/vega-lite.min.js",
    ),
    "vega-embed": (
        "6.29.0",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXF"
        "ma+FDHNXUppKuM0U6Q==",
        "package/build/vega-embed.min.js",
    ),
}

#: DVC's page placeholders (dvc_render.html.HTML); ``{scripts}`` is left out on purpose.
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- kappaflow offline template (scripts/build_plots_template.py): {versions} -->
{inline_scripts}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")


class BuildError(RuntimeError):
    """The template cannot be built as pinned."""


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch(cache: Path) -> dict[str, Path]:
    """``npm pack`` every pinned package into ``cache`` (reused when its integrity matches)."""
    cache.mkdir(parents=True, exist_ok=True)
    tarballs = {name: cache / f"{name}-{version}.tgz" for name, (version, _, _) in PINS.items()}
    missing = [
        f"{name}@{PINS[name][0]}"
        for name, tgz in tarballs.items()
        if not tgz.is_file() or _integrity(tgz) != PINS[name][1]
    ]
    if missing:
        npm = shutil.which("npm")
        if npm is None:
            raise BuildError("npm not found (Debian: apt-get install -y npm)")
        res = subprocess.run(
            [npm, "pack", "--json", "--pack-destination", str(cache), *missing],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise BuildError(f"npm pack {' '.join(missing)} failed:\n{res.stderr[-2000:]}")
        json.loads(res.stdout)  # npm prints JSON on success; anything else is an error
    for name, tgz in tarballs.items():
        if not tgz.is_file():
            raise BuildError(f"npm pack did not write {tgz}")
        got = _integrity(tgz)
        if got != PINS[name][1]:
            raise BuildError(f"{tgz.name}: integrity {got} != pinned {PINS[name][1]}")
    return tarballs


def bundle(tgz: Path, member: str) -> str:
    """Read one UMD bundle out of an npm tarball (nothing is extracted to disk)."""
    with tarfile.open(tgz, "r:gz") as tar:
        f = tar.extractfile(member)
        if f is None:
            raise BuildError(f"{tgz.name} has no {member}")
        js = f.read().decode("utf-8")
    if re.search(r"</script", js, re.IGNORECASE):
        raise BuildError(f"{tgz.name}:{member} contains '</script' and cannot be inlined")
    for placeholder in PLACEHOLDERS:
        if placeholder in js:
            raise BuildError(f"{tgz.name}:{member} contains DVC's placeholder {placeholder}")
    return js


def check_dvc_versions() -> None:
    """Check the pinned majors against DVC's page (CDN tags) and templates (``$schema``)."""
    from dvc_render.vega import VegaRenderer
    from dvc_render.vega_templates import TEMPLATES

    cdn = dict(re.findall(r"npm/([a-z-]+)@(\d+)\.", VegaRenderer.SCRIPTS))
    schemas = {
        m
        for t in TEMPLATES
        for m in re.findall(r"vega-lite/v(\d+)\.json", json.dumps(t.DEFAULT_CONTENT))
    }
    if set(cdn) != set(PINS):
        raise BuildError(f"DVC's page loads {sorted(cdn)}, pinned {sorted(PINS)}")
    for name, (version, _, _) in PINS.items():
        if version.split(".")[0] != cdn[name]:
            raise BuildError(f"{name}@{version}: DVC's page is written for {name}@{cdn[name]}.x")
    if schemas != {PINS["vega-lite"][0].split(".")[0]}:
        raise BuildError(f"DVC templates use vega-lite v{schemas}, pinned {PINS['vega-lite'][0]}")


def render(tarballs: dict[str, Path]) -> str:
    """Return the template: DVC's page with the three bundles inlined, no ``{scripts}``."""
    scripts = []
    for name, (version, _, member) in PINS.items():
        js = bundle(tarballs[name], member)
        head = f"    <script>/* {name}@{version} (npm, BSD-3-Clause) */"
        scripts.append(f"{head}\n{js}\n    </script>")
    versions = ", ".join(f"{n}@{v}" for n, (v, _, _) in PINS.items())
    return PAGE.replace("{versions}", versions).replace("{inline_scripts}", "\n".join(scripts))


def main(argv: list[str] | None = None) -> int:
    """Fetch, check and write the template; print its path."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"default {DEFAULT_CACHE}")
    args = ap.parse_args(argv)
    try:
        check_dvc_versions()
        html = render(fetch(args.cache))
    except BuildError as exc:
        print(f"build_plots_template: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(html)
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.out)
    pins = ", ".join(f"{n}@{v[0]}" for n, v in PINS.items())
    print(f"{args.out} ({len(html) / 1e6:.1f} MB): {pins}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
