"""The test OIDC issuer of se's end-to-end tests: now :mod:`se.testing.issuer` (the pytest
plugin's issuer, one implementation); re-exported here for the existing importers."""

from __future__ import annotations

from se.testing.issuer import ANY_AUDIENCE, DEFAULT_SCOPE, JWTIssuer, SigningKey, b64url

__all__ = ["ANY_AUDIENCE", "DEFAULT_SCOPE", "JWTIssuer", "SigningKey", "b64url"]
