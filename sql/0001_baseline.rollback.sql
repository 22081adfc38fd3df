-- 0001_baseline rollback: nothing to undo.
SELECT 1;
