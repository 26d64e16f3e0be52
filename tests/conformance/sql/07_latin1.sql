-- encoding: LATIN1
-- A LATIN1 session: text, identifiers and errors with accented letters.
-- setup
CREATE TABLE café (id int8, naïve text);
INSERT INTO café VALUES (1, 'déjà vu'), (2, 'Ærø, Øresund, Ålborg'), (3, 'ñandú ü ß');
-- run
SELECT * FROM café ORDER BY id;
SELECT naïve, length(naïve), upper(naïve) FROM café ORDER BY id;
SELECT 'crème brûlée' AS dessert, 'ÿ' AS last;
SELECT 'déjà'::int;
SELECT * FROM "tablé_absente";
INSERT INTO café VALUES (4, 'àéîõü');
SELECT naïve FROM café WHERE naïve LIKE '%é%' ORDER BY id;
