-- encoding: LATIN9
-- A LATIN9 session: the euro sign and the letters LATIN9 has where LATIN1 has others.
-- setup
CREATE TABLE prix (id int8, article text, montant text);
INSERT INTO prix VALUES (1, 'café', '3,50 €'), (2, 'œuvre', '1 200 €'), (3, 'Šárka Žižka', '€€€');
-- run
SELECT * FROM prix ORDER BY id;
SELECT 'é€' AS v, length('é€') AS n, octet_length('é€') AS bytes;
SELECT montant || ' ttc' FROM prix ORDER BY id;
SELECT 'é€'::int;
DO $$ BEGIN RAISE NOTICE 'prix en € : %', 'élevé'; END $$;
DO $$ BEGIN RAISE EXCEPTION 'refusé : %', 'trop cher €' USING HINT = 'réessayez'; END $$;
SELECT 'after the errors' AS still;
