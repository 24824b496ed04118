"""Mechanisms every domain needs, defined once below ``attest``, ``admission`` and ``mec_api``."""
