"""Compatibility only: the signers moved to `testkit.signing` (the unit tests are in
tests/unit/test_webhooks.py). Kept for tests/test_webhooks_http.py; delete once it imports testkit."""

from testkit.signing import (
    SLACK_DOC_BODY,
    STANDARD_SECRET,
    hex_mac,
    sign_acme,
    sign_github,
    sign_shopify,
    sign_slack,
    sign_standard,
    sign_stripe,
)

__all__ = ["SLACK_DOC_BODY", "STANDARD_SECRET", "hex_mac", "sign_acme", "sign_github", "sign_shopify", "sign_slack",
           "sign_standard", "sign_stripe"]
