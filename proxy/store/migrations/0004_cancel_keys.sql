-- 0004: the PostgreSQL front end's cancel keys, shared by every proxy.
--
-- Read with proxy/store/cancel_keys.py. A client cancels a query on a new connection,
-- which a load balancer may send to another proxy than its session's: each proxy records
-- here the key it gave a client (pid, secret) and the upstream's real key, so that any
-- proxy can pass the cancel on. A row lives as long as its session. UNLOGGED: rows are
-- worth nothing after a crash of this database (a cancel through another proxy then fails
-- for the sessions open at the time, as it would without this table).

CREATE UNLOGGED TABLE pg_cancel_keys (
    pid             integer     PRIMARY KEY CHECK (pid > 0),  -- the key given to the client
    secret          bytea       NOT NULL CHECK (length(secret) BETWEEN 4 AND 256),
    upstream_host   text        NOT NULL,
    upstream_port   integer     NOT NULL CHECK (upstream_port BETWEEN 1 AND 65535),
    upstream_pid    integer     NOT NULL,
    upstream_secret bytea       NOT NULL CHECK (length(upstream_secret) BETWEEN 4 AND 256),
    upstream_tls    boolean     NOT NULL,
    instance        uuid        NOT NULL,  -- the proxy process that issued it
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX pg_cancel_keys_instance ON pg_cancel_keys (instance);
