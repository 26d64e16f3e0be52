-- Large values: a 10 MiB text field, a 4 MiB bytea and a 100 000-row result.
-- run
SELECT length(v), md5(v), v FROM (SELECT repeat('4111 1111 1111 1111 alice@example.com ', 276000) || 'end' AS v) AS s;
SELECT decode(repeat('ab', 4 * 1024 * 1024), 'hex') AS blob;
SELECT i, md5(i::text) FROM generate_series(1, 100000) AS i;
