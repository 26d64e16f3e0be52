-- encoding: SJIS
-- A Shift_JIS session: characters whose second byte is a backslash or another ASCII
-- byte (表 is 0x95 0x5c, ソ is 0x83 0x5c), in literals, identifiers and errors.
-- setup
CREATE TABLE 表 (id int8, 名前 text);
INSERT INTO 表 VALUES (1, 'ソフトウェア'), (2, '予定表'), (3, 'ｱｲｳｴｵ 半角'), (4, '能力 十 構造');
-- run
SELECT * FROM 表 ORDER BY id;
SELECT 名前, length(名前) FROM 表 ORDER BY id;
SELECT '表示' AS 表示, 'ソ\' AS trail, E'表\\' AS escaped;
SELECT '表'::int;
SELECT * FROM 存在しない表;
INSERT INTO 表 VALUES (5, '申請 可能');
SELECT count(*) FROM 表 WHERE 名前 LIKE '%表%';
