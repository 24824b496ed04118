"""The operator dashboard at ``/ui/`` of ``umec server`` (issue 14): server-rendered HTML over
attest's service layer, a session cookie from the operator token, CSRF on every POST and a
strict Content-Security-Policy. ``umec.app`` mounts :func:`build_ui`."""

from umec.ui.app import build_ui
from umec.ui.data import UiSources

__all__ = ["UiSources", "build_ui"]
