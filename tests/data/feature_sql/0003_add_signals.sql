-- A sample feature (the `signals` trial of issue 19), for .ci/run's second pass: the
-- foundation's suite must pass with a feature's migrations in sql/, whatever they make.
-- A type, tables with identities, a foreign key, an index, a view, a function, a trigger,
-- a sequence, and columns named `note` (a name the foundation's tests also use).
CREATE TYPE signal_state AS ENUM ('pending', 'approved', 'rejected');

CREATE TABLE signals (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    state signal_state NOT NULL DEFAULT 'pending',
    note text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE approvals (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    signal_id bigint NOT NULL REFERENCES signals (id),
    approver text NOT NULL,
    note text NOT NULL DEFAULT '',
    approved_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX approvals_signal_id ON approvals (signal_id);

CREATE SEQUENCE signal_batches;

CREATE VIEW pending_signals AS
    SELECT id, name, note FROM signals WHERE state = 'pending';

CREATE FUNCTION touch_signal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER signals_touched BEFORE UPDATE ON signals
    FOR EACH ROW EXECUTE FUNCTION touch_signal();

INSERT INTO signals (name, note) VALUES ('seeded', 'a row the migration itself writes');
