"""Adapter: the OCI registry client (Distribution API over httpx), its credentials (docker
config, pods' imagePullSecrets) and the small OCI image builder the demo and tests push with."""
