-- 0001: the token registry and the short-value vault.
--
-- Applied by `tokenproxy db migrate` (and at start-up) inside one transaction, under the
-- migration advisory lock. Never edit this file once released: add a new numbered file.

-- Every token the proxy issued, before it left: a value coming back in a request is a token
-- only if it is here, and its key version says which key resolves it. One row per key
-- version (FF1 under two versions may, rarely, give the same token for different values:
-- the engine then refuses to guess).
CREATE TABLE token_registry (
    kind       text        NOT NULL,
    token      text        NOT NULL,
    version    integer     NOT NULL CHECK (version >= 1),
    method     text        NOT NULL CHECK (method IN ('ff1', 'vault', 'mixed')),
    issued_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, token, version)
);

-- Purging a retired key version deletes by version.
CREATE INDEX token_registry_version ON token_registry (version);

-- Short values (below FF1's 10^6 domain): a random token of the value's format, one per
-- (kind, key version, value), unique per kind. The value is found by a keyed HMAC (mac,
-- under the version's MAC subkey) and stored only sealed (AES-256-GCM, bound to the kind).
--
-- canonical: the token handed out for the value. A non-canonical row is an alias: a token
-- drawn by a proxy while the database was away, that had already left the proxy when it
-- turned out another proxy had given the same value another token. Aliases still resolve;
-- they are never handed out again.
CREATE TABLE token_vault (
    kind        text        NOT NULL,
    mac         bytea       NOT NULL CHECK (octet_length(mac) = 32),
    version     integer     NOT NULL CHECK (version >= 1),
    token       text        NOT NULL,
    sealed      bytea       NOT NULL,
    canonical   boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT token_vault_token_key UNIQUE (kind, token)
);

-- Two proxies asked for the same new value at once agree on one token: the second insert
-- conflicts here and reads the first one's token.
CREATE UNIQUE INDEX token_vault_value_key ON token_vault (kind, version, mac) WHERE canonical;

CREATE INDEX token_vault_version ON token_vault (version);
