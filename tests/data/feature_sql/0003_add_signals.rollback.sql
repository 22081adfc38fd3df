-- squawk-ignore-file ban-drop-table, ban-drop-type, ban-drop-function, ban-drop-view, ban-drop-sequence
DROP TRIGGER signals_touched ON signals;
DROP FUNCTION touch_signal();
DROP VIEW pending_signals;
DROP SEQUENCE signal_batches;
DROP TABLE approvals;
DROP TABLE signals;
DROP TYPE signal_state;
