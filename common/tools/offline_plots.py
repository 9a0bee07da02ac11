"""The page `dvc plots show` fills, with the plotting scripts inlined, so its plots render with no network.

    python -m common.tools.offline_plots [--to .dvc/plots/offline.html]      (make install runs it)

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN. This one carries them inline, from the bundle
that vl-convert ships (a pip package: no download at run time), and `.dvc/config` points `dvc plots show` at
it (`plots.html_template`). The page is generated, not committed: `.dvc/.gitignore` lists it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.core.io import atomic_write

DEFAULT = Path(".dvc") / "plots" / "offline.html"
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC plots (offline)</title>
<!-- Vega {vega}, Vega-Lite {vegalite}, Vega-Embed {embed}: inlined by common.tools.offline_plots -->
<script>(function () {{
{bundle}
}})();</script>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; }}
body > div {{ display: inline-block; vertical-align: top; margin: 0 1.5em 1.5em 0; }}
table {{ border-spacing: 15px; }}
</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def offline_page() -> str:
    """The HTML template (DVC's placeholders {plot_divs} and {refresh_tag} kept) with the scripts inlined."""
    import vl_convert

    vegalite = [v for v in vl_convert.get_vegalite_versions() if v.startswith("5.")][-1]  # DVC writes VL 5 specs
    bundle = vl_convert.javascript_bundle(vl_version=vegalite)
    if "</script" in bundle.lower():  # it would end the inline script early
        raise RuntimeError("the vl-convert bundle contains '</script': it cannot be inlined as it is")
    return PAGE.format(bundle=bundle, vega=vl_convert.get_vega_version(), vegalite=vegalite,
                       embed=vl_convert.get_vega_embed_version(), refresh_tag="{refresh_tag}",
                       plot_divs="{plot_divs}")


def write_offline_page(path: Path = DEFAULT) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(offline_page(), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--to", type=Path, default=DEFAULT, help="where the page goes (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        path = write_offline_page(args.to)
    except ImportError:
        print("vl-convert-python is not installed: make install (or pip install vl-convert-python)", file=sys.stderr)
        return 2
    print(f"offline plots page written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
