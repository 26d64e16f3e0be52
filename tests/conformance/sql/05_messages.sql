-- Notices, warnings and errors with every field.
-- setup
CREATE TABLE accounts (id int8 PRIMARY KEY, email text NOT NULL UNIQUE, balance numeric CHECK (balance >= 0));
INSERT INTO accounts VALUES (4567890123456791, 'alice@example.com', 10);
-- run
DO $$ BEGIN RAISE NOTICE 'a notice with 4111 1111 1111 1111 and alice@example.com'; END $$;
DO $$ BEGIN RAISE WARNING 'a warning' USING DETAIL = 'some detail', HINT = 'a hint'; END $$;
DO $$ BEGIN
  RAISE EXCEPTION 'every field: %', 4567890123456791
    USING ERRCODE = '22012', DETAIL = 'the detail', HINT = 'the hint',
          SCHEMA = 'public', TABLE = 'accounts', COLUMN = 'balance',
          DATATYPE = 'numeric', CONSTRAINT = 'accounts_balance_check';
END $$;
INSERT INTO accounts VALUES (4567890123456791, 'bob@example.com', 1);
INSERT INTO accounts VALUES (2, 'alice@example.com', 1);
INSERT INTO accounts VALUES (3, NULL, 1);
INSERT INTO accounts VALUES (4, 'carol@example.com', -1);
SELECT 1 / 0;
SELECT no_such_column FROM accounts;
SELECT * FROM no_such_table;
SELEC 1;
SELECT 'x'::int;
BEGIN;
SELECT 1;
SELECT broken(;
SELECT 2;
ROLLBACK;
SELECT id, email FROM accounts ORDER BY id;
