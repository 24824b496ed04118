"""Importable test helpers, one module per thing they provide (a fake Kubernetes API, OCI image
builders, a simulated TPM and node, a local registry, ...). Fixtures live in conftest.py files;
the swtpm and registry fixtures live here (swtpm.py, registry.py) and tests/conftest.py loads
them as plugins, so every folder gets them by name without importing them."""
