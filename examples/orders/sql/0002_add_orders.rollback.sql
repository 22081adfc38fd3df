-- squawk-ignore-file ban-drop-table
DROP TABLE orders;
