"""``python -m umec_examples.classifier_app``: serve the app as its environment configures it."""

from __future__ import annotations

import os
import sys

import uvicorn

from umec_examples.classifier_app.config import AppConfig
from umec_examples.classifier_app.errors import AppError
from umec_examples.classifier_app.web import create_app


def main() -> int:
    try:
        config = AppConfig.from_env(os.environ)
    except AppError as exc:
        print(f"classifier-app: {exc.check}: {exc.detail}\n  what to do: {exc.hint}",
              file=sys.stderr)
        return 2
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info",
                proxy_headers=False, server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
