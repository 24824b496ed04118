"""The token service: RFC 8693 token exchange (and the RFC 7523 client-credentials variant) for
attested workloads, with JWKS, RFC 8414 metadata, RFC 7662 introspection, RFC 7009 revocation and a
revocation feed for resource servers. The workflow is :class:`mec_api.tokens.issuer.TokenIssuer`."""
