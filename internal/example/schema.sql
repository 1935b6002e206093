-- The example application: an insurance lead-generation platform.
-- pgshield dev creates this schema in database app; the tests use it too.
-- Every table carries the audit columns. Rules beyond NOT NULL, keys and
-- defaults come from the policy (policy.yaml), inline in pgshield and as
-- generated SQL (pgshield policy sql).

CREATE TABLE IF NOT EXISTS leads (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    phone         text,
    first_name    text,
    last_name     text,
    ssn           text,
    credit_card   text,
    bank_account  text,
    date_of_birth text,
    quality_score int,
    status        text NOT NULL DEFAULT 'RECEIVED',
    source        text,
    metadata      jsonb,
    created_at    timestamptz DEFAULT now(),
    updated_at    timestamptz,
    created_by    text,
    updated_by    text,
    deleted_at    timestamptz,
    version       int NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS agents (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               text NOT NULL,
    email              text NOT NULL,
    license_number     text,
    is_active          bool NOT NULL DEFAULT true,
    current_lead_count int NOT NULL DEFAULT 0,
    max_lead_capacity  int NOT NULL DEFAULT 50,
    performance_score  numeric(5,2),
    created_at         timestamptz DEFAULT now(),
    updated_at         timestamptz,
    created_by         text,
    updated_by         text,
    deleted_at         timestamptz,
    version            int NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS carriers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    api_key    text,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz,
    created_by text,
    updated_by text,
    deleted_at timestamptz,
    version    int NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS partnerships (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    carrier_id      bigint REFERENCES carriers (id),
    agent_id        bigint REFERENCES agents (id),
    contract_start  date NOT NULL,
    contract_end    date NOT NULL,
    commission_rate numeric(5,4) NOT NULL,
    created_at      timestamptz DEFAULT now(),
    updated_at      timestamptz,
    created_by      text,
    updated_by      text,
    deleted_at      timestamptz,
    version         int NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS lead_assignments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lead_id     bigint REFERENCES leads (id),
    agent_id    bigint REFERENCES agents (id),
    assigned_at timestamptz DEFAULT now(),
    created_at  timestamptz DEFAULT now(),
    updated_at  timestamptz,
    created_by  text,
    updated_by  text,
    deleted_at  timestamptz,
    version     int NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name text,
    row_id     bigint,
    action     text,
    changed_by text,
    changed_at timestamptz DEFAULT now(),
    old_row    jsonb,
    new_row    jsonb,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz,
    created_by text,
    updated_by text,
    deleted_at timestamptz,
    version    int NOT NULL DEFAULT 1
);

-- A lead that is not CONVERTED or REJECTED cannot be deleted.
CREATE OR REPLACE FUNCTION leads_guard_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status NOT IN ('CONVERTED', 'REJECTED') THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation',
            MESSAGE = 'lead ' || OLD.id || ' is ' || OLD.status || ': only CONVERTED or REJECTED leads can be deleted',
            TABLE = 'leads', CONSTRAINT = 'leads_delete_final_only';
    END IF;
    RETURN OLD;
END
$$;
DROP TRIGGER IF EXISTS leads_guard_delete ON leads;
CREATE TRIGGER leads_guard_delete BEFORE DELETE ON leads FOR EACH ROW EXECUTE FUNCTION leads_guard_delete();
