"""``umec webhook`` runs here, in a lean process: no typer/click/rich, and glibc limited to two
malloc arenas (uvicorn's thread pool otherwise grows one arena per thread). The CLI validates
the settings first and then replaces itself with this module (``handover``); the webhook's
memory budget (120 MB on a Raspberry Pi) is what this process uses."""

from __future__ import annotations

import json
import os
import sys

HANDOVER = "UMEC_WEBHOOK_HANDOVER"


def handover(host: str, port: int) -> None:
    """Replace the current process with the webhook process (does not return)."""
    env = dict(os.environ)
    env[HANDOVER] = json.dumps({"host": host, "port": port})
    env.setdefault("MALLOC_ARENA_MAX", "2")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "umec.webhook_process"], env)


def main() -> int:
    raw = json.loads(os.environ.pop(HANDOVER, "{}") or "{}")
    # httpx imports its command-line tool when it can, and with it rich, pygments and click
    # (~4 MiB); this process never runs it. A None entry makes that optional import fail.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    import uvicorn

    from umec.admission_wiring import build_webhook
    from umec.http_limits import uvicorn_options
    from umec.logs import configure_logging
    from umec.settings import Settings
    settings = Settings()
    configure_logging(settings.log_level)
    if settings.webhook_tls_cert is None or settings.webhook_tls_key is None:
        print("UMEC_WEBHOOK_TLS_CERT and UMEC_WEBHOOK_TLS_KEY are required", file=sys.stderr)
        return 2
    app, _ = build_webhook(settings)
    uvicorn.run(app, host=raw.get("host", "0.0.0.0"),
                port=int(raw.get("port") or settings.webhook_port), log_config=None,
                ssl_certfile=str(settings.webhook_tls_cert),
                ssl_keyfile=str(settings.webhook_tls_key), **uvicorn_options())
    return 0


if __name__ == "__main__":
    sys.exit(main())
