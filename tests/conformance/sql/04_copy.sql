-- COPY in text, CSV and binary, in and out.
-- clients: psql, psycopg-text, psycopg-binary, tokio-postgres
-- setup
CREATE TABLE rows (id int8, note text, amount numeric, at timestamptz, tags text[]);
INSERT INTO rows SELECT 4567890123456791 + i, 'row ' || i || E' tab\there, "quoted", back\\slash', i * 1.25, '2024-01-01 00:00+00'::timestamptz + i * interval '1 hour', ARRAY['t' || i, NULL] FROM generate_series(1, 200) AS i;
-- run
COPY rows TO STDOUT;
COPY rows TO STDOUT WITH (FORMAT csv, HEADER true);
COPY rows TO STDOUT WITH (FORMAT binary);
COPY (SELECT id, note FROM rows WHERE id % 7 = 0) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *);
COPY rows (id, note) FROM STDIN;
1	copied in
2	alice@example.com 4111 1111 1111 1111
\.
COPY rows (id, note) FROM STDIN WITH (FORMAT csv);
3,"csv, in"
\.
SELECT id, note FROM rows WHERE id < 10 ORDER BY id;
COPY rows (id) FROM STDIN;
not a number
\.
SELECT count(*) FROM rows;
