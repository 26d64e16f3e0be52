-- encoding: EUC_JP
-- An EUC-JP session.
-- setup
CREATE TABLE 商品 (id int8, 名称 text);
INSERT INTO 商品 VALUES (1, '日本語'), (2, '東京都'), (3, 'カタカナ ひらがな');
-- run
SELECT * FROM 商品 ORDER BY id;
SELECT 名称 || '様' FROM 商品 ORDER BY id;
SELECT '漢字'::int;
DO $$ BEGIN RAISE NOTICE '通知: %', '日本'; END $$;
SELECT 'おわり' AS 終了;
