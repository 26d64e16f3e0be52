-- Arrays, composites, ranges, multiranges and domains.
-- setup
CREATE DOMAIN card_no AS text CHECK (length(VALUE) >= 4);
CREATE DOMAIN positive AS int8 CHECK (VALUE > 0);
CREATE TYPE pair AS (id int8, label text);
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE things (id positive, label card_no, p pair, m mood, tags text[], r int8range);
INSERT INTO things VALUES (4567890123456791, '4111 1111 1111 1111', ROW(4111111111111111, 'x y'), 'ok', ARRAY['a', 'b c', NULL, '4111111111111111'], '[4111111111111111,4111111111111112)');
INSERT INTO things VALUES (2, 'plain', ROW(1, NULL), 'happy', '{}', 'empty');
-- run
SELECT ARRAY[1, 2, NULL]::int4[], ARRAY[[1.5, 2.5], [3.5, 4.5]]::float8[], '[0:1]={7,8}'::int8[];
SELECT ARRAY['a', 'b c', 'd"e', 'f\g', NULL]::text[], ARRAY['00000000-0000-0000-0000-000000019992']::uuid[];
SELECT ARRAY['{"a":1}'::jsonb, '[2]'], ARRAY['x'::varchar, 'y'], ARRAY[B'0101', B'1111'];
SELECT ROW(1, 'two', 3.0, NULL), ROW(4111111111111111, ROW('nested', ARRAY[1, 2]));
SELECT '[1,10)'::int4range, '(4111111111111111,)'::int8range, '[1.5,2.5]'::numrange, '[2024-01-01,2024-02-01)'::daterange;
SELECT '[2024-01-01 00:00,2024-01-02 00:00)'::tsrange, 'empty'::int4range, '{[1,3), [5,7)}'::int4multirange;
SELECT * FROM things ORDER BY id;
SELECT id, (p).id, (p).label, m, tags[4], upper(r) FROM things ORDER BY id;
SELECT 'short'::card_no, 5::positive;
SELECT 'no'::card_no;
SELECT -1::positive;
SELECT 'sad'::mood < 'happy'::mood, enum_range(NULL::mood);
