-- 0001_baseline: the starting point of version tracking; no application tables yet.
SELECT 1;
