-- encoding: WIN1252
-- A WIN1252 session: curly quotes, dashes and the euro sign at 0x80.
-- setup
CREATE TABLE quotes (id int8, q text);
INSERT INTO quotes VALUES (1, '“smart” quotes – and — dashes'), (2, '€ 100 … ‰ • ™'), (3, 'Œuvre, œil, Ÿ');
-- run
SELECT * FROM quotes ORDER BY id;
SELECT q, length(q) FROM quotes WHERE q LIKE '%€%';
SELECT '“quoted”'::int;
SELECT 'fin – end' AS done;
