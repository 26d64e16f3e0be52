-- Every built-in type in text and binary format, with ordinary values that the old
-- default masking rewrote (ids, floats, UUIDs and bit strings that pass the Luhn check).
-- setup
CREATE TABLE ids (id int8 PRIMARY KEY, note text);
INSERT INTO ids SELECT 4567890123456791 + i * 10, 'order ' || (4111111111111111 + i) FROM generate_series(0, 20) AS i;
-- run
SELECT true AS b, false AS f, NULL::bool AS n;
SELECT 32767::int2, -2147483648::int4, 4567890123456791::int8, 9223372036854775807::int8;
SELECT 0.881373587019543::float8, 12.34567890123456::float8, 1.5::float4, 'NaN'::float8, '-Infinity'::float4;
SELECT 12.34567890123456::numeric, 4111111111111111.4111::numeric, 'NaN'::numeric, 1e-30::numeric;
SELECT 4111111111111111::numeric(20, 2), 123.45::money;
SELECT '00000000-0000-0000-0000-000000019992'::uuid, gen_random_uuid() IS NOT NULL;
SELECT B'0000000000000000'::bit(16), B'1010110'::varbit, X'4111111111111111'::bit(64);
SELECT 'text'::text, 'varchar'::varchar(10), 'bp'::char(5), 'nm'::name, 'x'::"char";
SELECT '\x4111111111111111'::bytea, 'alice@example.com'::bytea;
SELECT '2024-01-15'::date, '12:34:56.789'::time, '12:34:56+02'::timetz;
SELECT '2024-01-15 12:34:56.789012'::timestamp, '2024-01-15 12:34:56.789012+00'::timestamptz;
SELECT '1 year 2 mons 3 days 04:05:06.789'::interval, 'infinity'::timestamp;
SELECT '192.168.100.200'::inet, '10.0.0.0/8'::cidr, '08:00:2b:01:02:03'::macaddr, '08:00:2b:01:02:03:04:05'::macaddr8;
SELECT '(1,2)'::point, '[(0,0),(1,1)]'::lseg, '(1,1),(0,0)'::box, '((0,0),(1,1),(2,0))'::path, '((0,0),(1,1),(2,0))'::polygon, '<(0,0),2>'::circle, '{1,2,3}'::line;
SELECT '{"a": 4111111111111111, "b": [1.5, "x"]}'::json, '{"a": 4111111111111111, "b": [1.5, "x"]}'::jsonb, '$.a[*] ? (@ > 1)'::jsonpath;
SELECT '<a href="x">4111111111111111</a>'::xml;
SELECT 'the quick 4111111111111111 fox'::tsvector, to_tsvector('simple', 'order 4567890123456791 shipped'), 'fox & 4111111111111111'::tsquery;
SELECT 42::oid, 'pg_class'::regclass, 'int4'::regtype, '0/16B3748'::pg_lsn, '10:20:10,14,15'::txid_snapshot;
SELECT 1::xid8, '(0,1)'::tid, 'cursor_name'::refcursor;
SELECT id, note FROM ids ORDER BY id;
SELECT sum(id), avg(id), max(note) FROM ids;
SELECT i, i * 4111111111111111::numeric, sqrt(i::float8) FROM generate_series(1, 50) AS i;
