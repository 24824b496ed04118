"""Service: the admission webhook (HTTP routes, the admission flow, caches, metrics), the
Rego decision, admission records in SQL and the webhook's certificates."""
