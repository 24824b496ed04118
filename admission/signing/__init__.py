"""Adapter: cosign signatures in a registry. :mod:`.sign` writes them (``umec sign``),
:mod:`.verify` checks them (``umec verify`` and the webhook); both read through the registry
client and the pure checks in :mod:`admission.core`."""
