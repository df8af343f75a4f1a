-- 0002: tickets, the hash-chained audit log, and the reveal budget.
--
-- Read with proxy/store/tickets.py, proxy/store/audit.py and proxy/store/budget.py.
-- No customer value is ever stored here: customer ids, ticket ids, agents and field names only.

-- ============================================================================ tickets

CREATE TABLE tickets (
    id           text        PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    agent        text        CHECK (length(agent) BETWEEN 1 AND 200),  -- NULL: assigned to nobody
    customer_ids text[]      NOT NULL CHECK (cardinality(customer_ids) > 0),  -- sorted, distinct
    status       text        NOT NULL CHECK (status IN ('open', 'pending', 'closed')),
    expires_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,   -- the helpdesk's time of the last change
    recorded_at  timestamptz NOT NULL DEFAULT now()  -- when this row was last written here
);

CREATE INDEX tickets_status_agent ON tickets (status, agent);

-- Every change to a ticket, by the store or by hand, tells every listening proxy to drop its
-- cached copy. NOTIFY is delivered at commit, so a listener never sees a change that rolled back.
CREATE FUNCTION tokenproxy_tickets_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tokenproxy_tickets', OLD.id);
    ELSE
        PERFORM pg_notify('tokenproxy_tickets', NEW.id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tickets_notify AFTER INSERT OR UPDATE OR DELETE ON tickets
    FOR EACH ROW EXECUTE FUNCTION tokenproxy_tickets_notify();

-- ========================================================================= audit log
--
-- Each row's hash chains it to the previous one:
--
--   hash = sha256('tokenproxy-audit-v1' 0x00 || int8send(seq) || timestamptz_send(at)
--                 || prev_hash || content_digest)
--
-- content_digest is SHA-256 over a length-prefixed encoding of every other column
-- (proxy/store/audit.py: content_digest), computed by the proxy and recomputed by
-- `tokenproxy audit verify` from the stored row. The first row's prev_hash is 32 zero bytes.

CREATE TABLE audit_log (
    seq          bigint      PRIMARY KEY CHECK (seq > 0),
    at           timestamptz NOT NULL,
    agent        text,
    ticket       text,
    action       text        NOT NULL CHECK (action ~ '^[a-z][a-z0-9_]{0,39}$'),
    customer_ids text[]      NOT NULL DEFAULT '{}',
    fields       text[]      NOT NULL DEFAULT '{}',
    route        text,       -- HTTP route or SQL statement fingerprint
    request_id   text,
    instance     text,       -- which proxy wrote it
    detail       jsonb       NOT NULL DEFAULT '{}',
    prev_hash    bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash         bytea       NOT NULL CHECK (octet_length(hash) = 32)
);

CREATE INDEX audit_log_at ON audit_log (at);

-- The chain head: one row, the last seq and its hash. Appenders lock it (FOR UPDATE), which
-- is what keeps concurrent proxies on one chain. `verify` also compares it with the last row,
-- so deleting the newest rows is seen unless the head is rewritten too (see verify's anchors).
CREATE TABLE audit_head (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq  bigint  NOT NULL CHECK (seq >= 0),
    hash bytea   NOT NULL CHECK (octet_length(hash) = 32)
);

INSERT INTO audit_head (id, seq, hash) VALUES (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- Append-only. A superuser or the table owner can still ALTER TABLE ... DISABLE TRIGGER or
-- drop these: that is what `tokenproxy audit verify` (and its anchors) is for.
CREATE FUNCTION tokenproxy_audit_refuse() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tokenproxy: % is append-only, % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit entries are never changed or removed; append a new entry instead.';
END
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION tokenproxy_audit_refuse();

CREATE TRIGGER audit_head_keep BEFORE DELETE OR TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION tokenproxy_audit_refuse();

CREATE FUNCTION tokenproxy_audit_head_forward() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq <= OLD.seq THEN
        RAISE EXCEPTION 'tokenproxy: the audit head only moves forward (% -> % refused)',
            OLD.seq, NEW.seq USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER audit_head_forward BEFORE UPDATE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION tokenproxy_audit_head_forward();

-- Append a batch in one call: lock the head, chain each entry, insert, move the head.
-- Parallel arrays, one element per entry; customer ids and field names are flattened, with
-- a count per entry. Every entry of a batch gets the same `at` (the clock after the lock, so
-- `at` never goes backwards along seq on one server). Runs in the caller's transaction:
-- the head stays locked until that transaction ends, so append last and commit soon.
CREATE FUNCTION tokenproxy_audit_append(
    p_instance        text,
    p_agent           text[],
    p_ticket          text[],
    p_action          text[],
    p_customer_ids    text[],
    p_customer_counts int[],
    p_fields          text[],
    p_field_counts    int[],
    p_route           text[],
    p_request_id      text[],
    p_detail          jsonb[],
    p_digest          bytea[]
) RETURNS TABLE (o_seq bigint, o_at timestamptz, o_prev_hash bytea, o_hash bytea)
LANGUAGE plpgsql AS $$
DECLARE
    n      int := coalesce(cardinality(p_digest), 0);
    v_seq  bigint;
    v_hash bytea;
    v_prev bytea;
    v_at   timestamptz;
    co     int := 0;
    fo     int := 0;
    i      int;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    IF coalesce(cardinality(p_agent), 0) <> n OR coalesce(cardinality(p_ticket), 0) <> n
       OR coalesce(cardinality(p_action), 0) <> n OR coalesce(cardinality(p_customer_counts), 0) <> n
       OR coalesce(cardinality(p_field_counts), 0) <> n OR coalesce(cardinality(p_route), 0) <> n
       OR coalesce(cardinality(p_request_id), 0) <> n OR coalesce(cardinality(p_detail), 0) <> n
    THEN
        RAISE EXCEPTION 'tokenproxy_audit_append: the argument arrays differ in length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT h.seq, h.hash INTO v_seq, v_hash FROM audit_head h WHERE h.id FOR UPDATE;
    v_at := clock_timestamp();

    FOR i IN 1..n LOOP
        v_prev := v_hash;
        v_seq := v_seq + 1;
        v_hash := sha256('\x746f6b656e70726f78792d61756469742d763100'::bytea
                         || int8send(v_seq) || timestamptz_send(v_at) || v_prev || p_digest[i]);
        INSERT INTO audit_log (seq, at, agent, ticket, action, customer_ids, fields, route,
                               request_id, instance, detail, prev_hash, hash)
        VALUES (v_seq, v_at, p_agent[i], p_ticket[i], p_action[i],
                coalesce(p_customer_ids[co + 1 : co + p_customer_counts[i]], '{}'),
                coalesce(p_fields[fo + 1 : fo + p_field_counts[i]], '{}'),
                p_route[i], p_request_id[i], p_instance, p_detail[i], v_prev, v_hash);
        co := co + p_customer_counts[i];
        fo := fo + p_field_counts[i];
        o_seq := v_seq;
        o_at := v_at;
        o_prev_hash := v_prev;
        o_hash := v_hash;
        RETURN NEXT;
    END LOOP;

    UPDATE audit_head SET seq = v_seq, hash = v_hash WHERE id;
END
$$;

-- ====================================================================== reveal budget
--
-- One row per (agent, customer): when the agent last saw that customer in clear. The number
-- of distinct customers in the last hour / day is a count over last_revealed_at; seeing the
-- same customer again moves the time, it does not add a customer. Rows older than a day are
-- pruned by the store as it goes.

CREATE TABLE reveal_budget (
    agent            text        NOT NULL,
    customer_id      text        NOT NULL,
    last_revealed_at timestamptz NOT NULL,
    PRIMARY KEY (agent, customer_id)
);

CREATE INDEX reveal_budget_recent ON reveal_budget (agent, last_revealed_at);

-- When an agent was last alerted on, per window: one `alert` audit entry per agent per
-- window length, however many reveals are refused meanwhile.
CREATE TABLE reveal_budget_alerts (
    agent      text        NOT NULL,
    period     text        NOT NULL CHECK (period IN ('hour', 'day')),
    alerted_at timestamptz NOT NULL,
    PRIMARY KEY (agent, period)
);
