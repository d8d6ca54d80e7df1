"""Who may call: the admin token check, chat API keys (hashed at rest) and their rate limits."""

from coe.security.api_keys import ApiKey, ApiKeyStore
from coe.security.tokens import token_matches

__all__ = ["ApiKey", "ApiKeyStore", "token_matches"]
