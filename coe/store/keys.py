"""Every key the project writes, in one place. Stores add their own prefix."""

EXPERTS = "experts"  # hash: name -> ExpertSpec JSON
EXPERTS_VERSION = "experts:version"  # int, bumped on every change
EXPERTS_CHANNEL = "experts:changed"  # pub/sub: the new version
API_KEYS = "apikeys"  # hash: sha256(secret) -> ApiKey JSON
API_KEYS_CHANNEL = "apikeys:changed"  # pub/sub: the key id
CONFIG_RELOAD_CHANNEL = "config:reload"  # pub/sub: every replica re-reads its experts.yaml


def instruction_cache(query_hash: str) -> str:
    return f"cache:instruction:{query_hash}"


def keywords_cache(query_hash: str) -> str:
    return f"cache:keywords:{query_hash}"


def artefact(router: str, name: str) -> str:
    return f"artefact:{router}:{name}"


def rate_limit(key_id: str, window: int) -> str:
    return f"ratelimit:{key_id}:{window}"
