"""System packages the daily record needs, installed from apt by `larder stack up` (like Mosquitto).

* ``fonts-wqy-zenhei``: a CJK font. Site names, licence numbers and notes are often Chinese; without a CJK font
  WeasyPrint renders them as empty boxes (checked on this machine kind, see shared STACK.md).
* ``poppler-utils``: ``pdftoppm``, to look at a generated PDF as PNG pages (tests, and people without a PDF viewer).
* ``libharfbuzz-subset0``: HarfBuzz's font subsetter, which WeasyPrint uses to embed only the glyphs a PDF shows.
  Without it WeasyPrint falls back to fontTools (and warns that the fallback is going away), which parses and
  rewrites the whole font in Python: ~0.5 s of CPU for each face of the 17 MB CJK font, over half of a ten-asset
  record's render (measured in BENCHMARKS.md, "fourth pass"); HarfBuzz does it in milliseconds. The embedded
  fonts differ in bytes (not in the glyphs drawn), so a record regenerated after it was installed is a new
  version, as after any change of the software that renders.
"""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

from pipeline.settings import Settings
from pipeline.stack.process import StackError, apt_install

PACKAGES = ("fonts-wqy-zenhei", "poppler-utils", "libharfbuzz-subset0")
#: Where Debian's fonts-wqy-zenhei puts its one font file.
CJK_FONT_FILE = Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")
CJK_FONT_FAMILY = "WenQuanYi Zen Hei"
#: The name WeasyPrint loads HarfBuzz's subsetter by on Linux (``weasyprint.text.ffi``), found the same way (dlopen).
HARFBUZZ_SUBSET_LIB = "libharfbuzz-subset.so.0"


def has_harfbuzz_subset() -> bool:
    """Whether WeasyPrint will subset fonts with HarfBuzz (fast) rather than fontTools (see the module's notes)."""
    try:
        ctypes.CDLL(HARFBUZZ_SUBSET_LIB)
    except OSError:
        return False
    return True


def missing() -> list[str]:
    out = []
    if not CJK_FONT_FILE.exists():
        out.append("fonts-wqy-zenhei")
    if shutil.which("pdftoppm") is None:
        out.append("poppler-utils")
    if not has_harfbuzz_subset():
        out.append("libharfbuzz-subset0")
    return out


def install(settings: Settings) -> bool:
    """apt-get install what is missing; True if something was installed."""
    todo = missing()
    if not todo:
        return False
    log = settings.log_dir / "install-report-tools.log"
    apt_install(
        todo,
        log,
        without_apt=f"{', '.join(todo)} missing and apt-get is not available: install them with your package manager "
        "(a CJK font for the PDF reports, pdftoppm to view them, HarfBuzz's subsetter to embed fonts quickly)",
    )
    still = missing()
    if still:
        raise StackError(f"apt-get installed {' '.join(todo)} but {', '.join(still)} is still missing; see {log}")
    return True
