"""System packages the daily record needs, installed from apt by `larder stack up` (like Mosquitto).

* ``fonts-wqy-zenhei``: a CJK font. Site names, licence numbers and notes are often Chinese; without a CJK font
  WeasyPrint renders them as empty boxes (checked on this machine kind, see shared STACK.md).
* ``poppler-utils``: ``pdftoppm``, to look at a generated PDF as PNG pages (tests, and people without a PDF viewer).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.settings import Settings
from pipeline.stack.process import StackError, apt_install

PACKAGES = ("fonts-wqy-zenhei", "poppler-utils")
#: Where Debian's fonts-wqy-zenhei puts its one font file.
CJK_FONT_FILE = Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")
CJK_FONT_FAMILY = "WenQuanYi Zen Hei"


def missing() -> list[str]:
    out = []
    if not CJK_FONT_FILE.exists():
        out.append("fonts-wqy-zenhei")
    if shutil.which("pdftoppm") is None:
        out.append("poppler-utils")
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
        "(a CJK font for the PDF reports, pdftoppm to view them)",
    )
    still = missing()
    if still:
        raise StackError(f"apt-get installed {' '.join(todo)} but {', '.join(still)} is still missing; see {log}")
    return True
